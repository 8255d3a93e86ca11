"""Which serial ports this machine has: pyserial's enumeration as frozen values.

    for port in list_ports():
        print(port.device, port.usb or "-", port.description)
    # /dev/ttyUSB0 0403:6001 FT232R USB UART

``list_ports()`` asks pyserial (``serial.tools.list_ports.comports``), which finds USB
adapters and on-board UARTs but not ptys; ``extra`` adds paths given explicitly (a socat pty,
a symlink from a udev rule). USB ports carry their vendor and product ids, shown as
``VID:PID`` in lowercase hex the way ``lsusb`` prints them (``0403:6001`` is an FTDI FT232R),
which is what to match a udev rule or a device profile against.

Errors: an explicit path that does not exist, or enumeration failing, raises ``PortError``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import serial
import serial.tools.list_ports
import serial.tools.list_ports_common

from firmware_tools.errors import PortError

__all__ = ["PortInfo", "list_ports"]


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclasses.dataclass(frozen=True)
class PortInfo:
    """One serial port. ``device`` is the path to open; ``description`` and ``hwid`` are
    pyserial's ("n/a" when unknown); the USB fields are None for non-USB ports.

    ``usb`` is ``"vvvv:pppp"`` (lowercase hex) for a USB port, else None. Example:
    ``PortInfo("/dev/ttyUSB0", vid=0x0403, pid=0x6001).usb == "0403:6001"``.
    """

    device: str
    description: str = "n/a"
    hwid: str = "n/a"
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    manufacturer: str | None = None
    location: str | None = None

    def __post_init__(self) -> None:
        if not self.device:
            raise ValueError("a port needs a device path")
        for name in ("vid", "pid"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 0 <= value <= 0xFFFF):
                raise ValueError(f"{name} must be a 16-bit USB id, got {value!r}")

    @property
    def usb(self) -> str | None:
        if self.vid is None or self.pid is None:
            return None
        return f"{self.vid:04x}:{self.pid:04x}"

    @classmethod
    def from_pyserial(cls, info: serial.tools.list_ports_common.ListPortInfo) -> PortInfo:
        """Convert pyserial's ``ListPortInfo`` (what ``comports()`` returns)."""
        return cls(
            device=str(info.device),
            description=str(info.description or "n/a"),
            hwid=str(info.hwid or "n/a"),
            vid=info.vid,
            pid=info.pid,
            serial_number=_optional_text(info.serial_number),
            manufacturer=_optional_text(info.manufacturer),
            location=_optional_text(info.location),
        )


def _natural(device: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key: ttyUSB2 before ttyUSB10 (numbers compared as numbers)."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.split(r"(\d+)", device)
        if part
    )


def list_ports(extra: Iterable[str] = (), *, include_links: bool = False) -> list[PortInfo]:
    """The serial ports pyserial finds, plus the ``extra`` paths, sorted by device (numbers
    in natural order), each device once.

    ``include_links`` also lists symlinks to ports (a udev rule's ``/dev/serial/by-id/...``).
    An ``extra`` path that is a symlink has ``hwid`` ``LINK=<target>``, as pyserial reports.
    Raises ``PortError`` for an ``extra`` path that does not exist or when enumeration fails.
    Example: ``[p.device for p in list_ports(["/tmp/pty-a"])]``.
    """
    try:
        found = serial.tools.list_ports.comports(include_links=include_links)
    except (OSError, serial.SerialException) as exc:
        raise PortError("(all ports)", f"cannot list the serial ports: {exc}") from exc
    ports = {info.device: PortInfo.from_pyserial(info) for info in found}
    for path in extra:
        if path in ports:
            continue
        if not Path(path).exists():
            raise PortError(path, "no such device")
        ports[path] = PortInfo.from_pyserial(serial.tools.list_ports_common.ListPortInfo(path))
    return sorted(ports.values(), key=lambda port: _natural(port.device))
