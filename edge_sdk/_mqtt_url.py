"""Broker URLs (``mqtt://`` and ``mqtts://``), parsed without importing paho."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

__all__ = ["parse_broker_url"]

DEFAULT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}


def parse_broker_url(url: str) -> tuple[str, int, bool, str | None, str | None]:
    """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...`` -> (host, port, tls, user,
    password). Raises ValueError naming what is wrong."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"expected mqtt://host[:port] or mqtts://host[:port], got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"unknown scheme {parts.scheme!r} in {url!r}: use mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise ValueError(f"bad port in {url!r}: {exc}") from None
    tls = parts.scheme in ("mqtts", "ssl")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, tls, user, password
