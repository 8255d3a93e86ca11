"""``edge-sdk serial``: a device on a cable (docs/cli.md, docs/serial-link.md).

For any device (a bootloader, a shell): ``ports`` lists the serial ports with their USB ids,
``send`` and ``receive`` move files by YMODEM or XMODEM, ``console`` is a terminal or runs an
expect script. For the edge-sdk agent over firmware_tools' framed link: ``serve`` runs on the
device; ``info``, ``diag``, ``telemetry``, ``cmd`` and ``push`` on the laptop do over a cable
what ``edge-sdk fleet`` does over MQTT, with the same signed commands and releases.

The logic is in plain functions a Python caller can use (``open_link``, ``push_release``,
``fetch_telemetry``, ``send_command``, ``terminal``); ``run`` parses and prints. Building the
parser imports neither pyserial nor the agent.

Exit codes: 0 done; 1 refused or failed (one line says why); 2 a usage error, or no answer (no
agent on the port, a transfer whose peer never started).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from edge_sdk.cli._common import positive_int

# edge_sdk.commands.COMMANDS, as `fleet cmd` lists them (building the parser imports no
# cryptography).
from edge_sdk.cli.fleet_cmd import COMMAND_NAMES

if TYPE_CHECKING:
    from edge_sdk.fleet import Release
    from firmware_tools.console import HookCall
    from firmware_tools.link import LinkEndpoint

PROTOCOLS = ("ymodem", "xmodem", "xmodem1k")
#: Ctrl-], as telnet and pyserial's miniterm: leaves the interactive console.
ESCAPE = 0x1D
_DEFAULT_BAUD = 115200


# --------------------------------------------------------------------------- arguments


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _port_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port", required=True, metavar="P", help="a device path (/dev/ttyUSB0) or pyserial URL"
    )
    parser.add_argument(
        "--baud", type=positive_int, default=_DEFAULT_BAUD, metavar="N", help="baud rate (115200)"
    )


def _link_arguments(parser: argparse.ArgumentParser, *, json_output: bool = True) -> None:
    _port_arguments(parser)
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="seconds to wait for the device's agent to answer (10)",
    )
    if json_output:
        parser.add_argument("--json", action="store_true", help="print one JSON document")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    ports = actions.add_parser("ports", help="list serial ports with their USB VID:PID")
    ports.add_argument("extra", nargs="*", metavar="PATH", help="also list these (ptys, links)")
    ports.add_argument("--links", action="store_true", help="also list symlinks to ports")
    ports.add_argument("--json", action="store_true", help="print one JSON document")

    send = actions.add_parser("send", help="send files by YMODEM or XMODEM")
    send.add_argument("files", nargs="+", metavar="FILE")
    _port_arguments(send)
    send.add_argument("--protocol", choices=PROTOCOLS, default="ymodem", help="(ymodem)")
    send.add_argument("--json", action="store_true", help="print one JSON document")

    receive = actions.add_parser("receive", help="receive files by YMODEM or XMODEM")
    receive.add_argument(
        "dest",
        nargs="?",
        default=".",
        metavar="DEST",
        help="YMODEM: the folder (.); XMODEM: the file to write",
    )
    _port_arguments(receive)
    receive.add_argument("--protocol", choices=PROTOCOLS, default="ymodem", help="(ymodem)")
    receive.add_argument("--overwrite", action="store_true", help="replace existing files")
    receive.add_argument(
        "--size",
        type=positive_int,
        default=None,
        metavar="BYTES",
        help="XMODEM: the file's exact length (XMODEM carries none; else trailing 0x1A go)",
    )
    receive.add_argument("--json", action="store_true", help="print one JSON document")

    console = actions.add_parser(
        "console", help="a terminal on the port (Ctrl-] quits), or run an expect script"
    )
    _port_arguments(console)
    console.add_argument("--script", metavar="FILE", help="run this console script and exit")
    console.add_argument("--log", metavar="FILE", help="append the session to this log")
    console.add_argument(
        "--expect-timeout",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="a script's default expect timeout (10)",
    )

    serve = actions.add_parser("serve", help="on the device: serve the agent over the port")
    _port_arguments(serve)
    serve.add_argument("--config", required=True, metavar="FILE", help="agent.toml")
    serve.add_argument(
        "--restart-exit",
        action="store_true",
        help="after a restart command, exit 75 instead of executing itself again",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (info)",
    )

    info = actions.add_parser("info", help="the device's status, models and versions")
    _link_arguments(info)
    diag = actions.add_parser("diag", help="the device's diagnostics summary")
    _link_arguments(diag)

    telemetry = actions.add_parser("telemetry", help="take the reports in the device's spool")
    _link_arguments(telemetry, json_output=False)
    telemetry.add_argument("--out", metavar="FILE", help="append JSON lines here (stdout)")
    telemetry.add_argument(
        "--ack", action="store_true", help="remove the reports from the device once written"
    )
    telemetry.add_argument(
        "--limit", type=positive_int, default=500, metavar="N", help="reports per request (500)"
    )

    push = actions.add_parser("push", help="install a signed release on the device")
    push.add_argument("release", metavar="RELEASE", help="the signed manifest (model beside it)")
    push.add_argument("--model", metavar="FILE", help="the model (default: beside the manifest)")
    _link_arguments(push)

    cmd = actions.add_parser(
        "cmd", help="send one signed command to the device: " + ", ".join(COMMAND_NAMES)
    )
    cmd.add_argument("cmd_name", metavar="COMMAND", choices=COMMAND_NAMES, help="the command")
    cmd.add_argument(
        "cmd_args",
        metavar="NAME=VALUE",
        nargs="*",
        help="arguments (seconds=30, model=detector); values are JSON when they parse as JSON",
    )
    cmd.add_argument("--key", required=True, metavar="FILE", help="private key (fleet keygen)")
    cmd.add_argument(
        "--lifetime",
        type=_positive_float,
        default=60.0,
        metavar="S",
        help="the command expires after this many seconds (60; at most 3600)",
    )
    _link_arguments(cmd)


# --------------------------------------------------------------------------- shared pieces


def _rate(count: int, seconds: float) -> str:
    per_second = count / seconds if seconds > 0 else float("inf")
    for unit in ("B/s", "KiB/s", "MiB/s"):
        if per_second < 1024 or unit == "MiB/s":
            return f"{per_second:.1f} {unit}"
        per_second /= 1024
    return ""  # pragma: no cover - the loop always returns


class Progress:
    """Progress bars (tqdm, on stderr) while it is a terminal; nothing otherwise. Call it as a
    firmware_tools ``progress(name, done, total)`` callback."""

    def __init__(self, enabled: bool | None = None, *, unit: str = "B") -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.unit = unit
        self._bars: dict[str, Any] = {}
        #: When the first progress came: the transfer started (the peer was ready).
        self.first: float | None = None

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if self.first is None:
            self.first = time.monotonic()
        if not self.enabled:
            return
        bar = self._bars.get(name)
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(
                total=total,
                desc=name,
                unit=self.unit,
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                leave=True,
            )
            self._bars[name] = bar
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


@contextlib.contextmanager
def open_link(
    port: str, *, baudrate: int = _DEFAULT_BAUD, timeout: float = 10.0
) -> Iterator[LinkEndpoint]:
    """A host's link to the agent on ``port`` (a path or a pyserial URL), up once the device
    answered. Raises PortError, LinkTimeoutError (no agent answered within ``timeout``),
    VersionMismatchError. Example: ``with open_link("/dev/ttyUSB0") as link: ...``."""
    from firmware_tools.link import LinkEndpoint, LinkSettings
    from firmware_tools.ymodem import open_port

    opened = open_port(port, baudrate=baudrate)
    try:
        settings = LinkSettings(connect_timeout=timeout)
        with LinkEndpoint(opened, role="host", settings=settings) as link:
            yield link
    finally:
        with contextlib.suppress(Exception):
            opened.close()


def request_json(
    link: LinkEndpoint, kind: str, document: Any = None, *, timeout: float = 30.0
) -> dict[str, Any]:
    """Send a ``kind`` request (a JSON document, or bytes as they are) and return the agent's
    JSON reply. Raises RemoteError (refused, or a reply that is not a JSON object) and what
    ``LinkEndpoint.request`` raises."""
    from firmware_tools.errors import RemoteError

    if document is None:
        payload = b""
    elif isinstance(document, bytes | bytearray):
        payload = bytes(document)
    else:
        payload = json.dumps(document, separators=(",", ":")).encode()
    reply = link.request(kind, payload, timeout=timeout)
    try:
        value = json.loads(reply)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise RemoteError("malformed", f"the reply to {kind!r} is not a JSON object")
    return value


# --------------------------------------------------------------------------- push


@dataclasses.dataclass(frozen=True)
class PushResult:
    """How a push ended: the device's job ``state`` ("succeeded", "rolled_back", "failed")
    and ``reason``; ``chunks`` in the release, ``sent`` this time, ``on_device`` already there
    before (an interrupted push resumed), ``bytes_sent`` in ``seconds``; the device's last
    ``job`` and ``status`` documents."""

    name: str
    version: int
    state: str
    reason: str | None
    chunks: int
    sent: int
    on_device: int
    bytes_sent: int
    seconds: float
    job: dict[str, Any] | None = None
    status: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.state == "succeeded"

    @property
    def bytes_per_second(self) -> float:
        return self.bytes_sent / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        document["ok"] = self.ok
        document["bytes_per_second"] = round(self.bytes_per_second, 1)
        document["seconds"] = round(self.seconds, 3)
        return document


def _expand(ranges: Any, count: int) -> list[int]:
    """The chunk indexes in the device's ``[start, end)`` ranges, each within the release."""
    from firmware_tools.errors import RemoteError

    indexes: set[int] = set()
    try:
        for start, end in ranges:
            if not 0 <= int(start) < int(end) <= count:
                raise ValueError
            indexes.update(range(int(start), int(end)))
    except (TypeError, ValueError):
        raise RemoteError("malformed", "the device's list of missing chunks") from None
    return sorted(indexes)


def _send_chunks(
    link: LinkEndpoint,
    manifest: Any,
    model: BinaryIO,
    indexes: list[int],
    *,
    in_flight: int,
    timeout: float,
    sent: Callable[[int], None],
) -> None:
    """``push.chunk`` requests for ``indexes``, ``in_flight`` at a time (the link carries one
    while the device writes another); ``sent(length)`` after each acknowledged one."""
    from edge_sdk.agent.serial import encode_push_chunk

    waiting: deque[tuple[int, Future[bytes]]] = deque()
    try:
        for index in indexes:
            offset, length = manifest.chunk_span(index)
            model.seek(offset)
            data = model.read(length)
            payload = encode_push_chunk(manifest.name, manifest.version, index, data)
            waiting.append((len(data), link.submit("push.chunk", payload, timeout=timeout)))
            while len(waiting) >= in_flight or (waiting and index == indexes[-1]):
                length, future = waiting.popleft()
                future.result()
                sent(length)
    finally:
        for _, future in waiting:
            future.cancel()


def push_release(
    link: LinkEndpoint,
    release: Release,
    *,
    in_flight: int = 4,
    timeout: float = 60.0,
    finish_timeout: float = 600.0,
    reconnect_timeout: float = 60.0,
    rounds: int = 5,
    progress: Callable[[int, int], None] | None = None,
) -> PushResult:
    """Install ``release`` (``edge_sdk.fleet.load_release``) on the device behind ``link``.

    Asks the device which chunks it lacks (``push.begin``: a push interrupted by a pulled
    cable, a killed host or a restarted device resumes there), sends those, ``in_flight`` at a
    time, each as the manifest cuts it, then ``push.finish``: the device verifies the whole
    file, health-checks it and activates it. A device that lost the push (it restarted) or
    still lacks chunks is asked again, at most ``rounds`` times; a link that went down is
    waited for up to ``reconnect_timeout`` seconds. ``progress(done_bytes, total_bytes)``.

    Returns the outcome (``PushResult.ok``). Raises RemoteError when the device refuses (a
    bad signature, a chunk not matching its signed hash, a downgrade, ...), TransferError when
    chunks are still missing after ``rounds``, LinkTimeoutError when the device is gone.
    Example: ``push_release(link, load_release("scorer-2.manifest.json")).state``.
    """
    from edge_sdk.errors import TransferError
    from firmware_tools.errors import LinkTimeoutError, RemoteError, SessionResetError

    manifest = release.manifest
    started = time.monotonic()
    counts = {"sent": 0, "bytes": 0, "done": 0}
    on_device: int | None = None

    def sent(length: int) -> None:
        counts["sent"] += 1
        counts["bytes"] += length
        counts["done"] += length
        if progress is not None:
            progress(counts["done"], manifest.size)

    with release.model_path.open("rb") as model:
        for _ in range(rounds):
            try:
                begin = request_json(link, "push.begin", release.text.encode(), timeout=timeout)
                missing = _expand(begin.get("missing", []), manifest.chunk_count)
                if on_device is None:
                    on_device = manifest.chunk_count - len(missing)
                counts["done"] = manifest.size - sum(
                    manifest.chunk_span(index)[1] for index in missing
                )
                if progress is not None:
                    progress(counts["done"], manifest.size)
                reply: dict[str, Any]
                if begin.get("state") == "succeeded":  # this version is active there already
                    reply = {"state": "succeeded", "reason": None, "job": begin.get("job")}
                else:
                    _send_chunks(
                        link,
                        manifest,
                        model,
                        missing,
                        in_flight=in_flight,
                        timeout=timeout,
                        sent=sent,
                    )
                    finish = {"name": manifest.name, "version": manifest.version}
                    reply = request_json(link, "push.finish", finish, timeout=finish_timeout)
            except RemoteError as exc:
                if exc.code in ("no_push", "incomplete"):
                    continue  # the device restarted, or found chunks corrupt on disk: again
                raise
            except (SessionResetError, LinkTimeoutError):
                # The device restarted, or the line was down longer than the link waits: the
                # chunks it stored are on its disk; ask again once it answers.
                link.connect(reconnect_timeout)
                continue
            return PushResult(
                name=manifest.name,
                version=manifest.version,
                state=str(reply.get("state")),
                reason=reply.get("reason"),
                chunks=manifest.chunk_count,
                sent=counts["sent"],
                on_device=on_device or 0,
                bytes_sent=counts["bytes"],
                seconds=time.monotonic() - started,
                job=reply.get("job"),
                status=reply.get("status"),
            )
    raise TransferError(
        manifest.name,
        manifest.version,
        f"the device still lacks chunks after {rounds} rounds; see `edge-sdk serial diag`",
    )


# --------------------------------------------------------------------------- telemetry, cmd


@dataclasses.dataclass(frozen=True)
class TelemetryResult:
    """Reports taken: ``written`` of them, ``acknowledged`` (removed from the device), and
    ``pending`` left in its spool."""

    written: int
    acknowledged: int
    pending: int


def fetch_telemetry(
    link: LinkEndpoint,
    write: Callable[[dict[str, Any]], None],
    *,
    ack: bool = False,
    limit: int = 500,
    commit: Callable[[], None] | None = None,
    timeout: float = 60.0,
) -> TelemetryResult:
    """Take the reports in the device's spool, oldest first, after a fresh one: ``write``
    each; with ``ack``, ``commit()`` (flush and fsync what was written) and then remove them
    from the device, page after page, until the spool is empty (store and forward: a report
    leaves the device only once it is safe here). Without ``ack``, one page of ``limit``."""
    written = acknowledged = 0
    fresh = True
    while True:
        reply = request_json(link, "telemetry", {"limit": limit, "fresh": fresh}, timeout=timeout)
        fresh = False
        reports = reply.get("reports") or []
        for report in reports:
            write(report)
        written += len(reports)
        pending = int(reply.get("pending") or 0)
        if not ack or not reports:
            return TelemetryResult(written, acknowledged, pending)
        if commit is not None:
            commit()
        last = max(int(r["seq"]) for r in reports)
        done = request_json(link, "telemetry.ack", {"up_to": last}, timeout=timeout)
        acknowledged += int(done.get("acknowledged") or 0)
        pending = int(done.get("pending") or 0)
        if not reply.get("more") or pending == 0:
            return TelemetryResult(written, acknowledged, pending)


def send_command(
    link: LinkEndpoint,
    command: str,
    arguments: dict[str, Any],
    private_key: Any,
    *,
    lifetime: float = 60.0,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Sign ``command`` for the device behind ``link`` (its fleet and id come from ``info``)
    and return its reply document (``ok``, ``result`` or ``error``), as over MQTT."""
    from datetime import timedelta

    from edge_sdk.commands import Command, sign_command

    status = request_json(link, "info", timeout=timeout).get("status") or {}
    device, fleet = status.get("device"), status.get("fleet")
    if not isinstance(device, str) or not isinstance(fleet, str):
        from firmware_tools.errors import RemoteError

        raise RemoteError("malformed", "the device's info names no device and fleet")
    signed = sign_command(
        Command.create(fleet, device, command, arguments, lifetime=timedelta(seconds=lifetime)),
        private_key,
    )
    return request_json(link, "cmd", signed, timeout=timeout)


# --------------------------------------------------------------------------- the terminal


def terminal(
    port: Any,
    stdin_fd: int,
    out: BinaryIO,
    *,
    escape: int = ESCAPE,
    log: BinaryIO | None = None,
    quiet: float = 0.5,
    linger: float = 5.0,
) -> None:
    """Join ``stdin_fd`` and ``out`` to the open ``port`` until the ``escape`` byte is typed
    (Ctrl-]) or stdin ends; then, for a piped stdin, show what the device still prints until
    it is ``quiet`` for that long (at most ``linger`` seconds). Bytes pass unchanged (put a
    terminal in raw mode first); ``log`` gets every byte received. Raises PortError."""
    import select

    from firmware_tools.errors import PortError

    name = str(getattr(port, "port", None) or port)
    failure: list[BaseException] = []
    stop = threading.Event()
    last = [time.monotonic()]

    def read_port() -> None:
        while not stop.is_set():
            try:
                data = port.read(port.in_waiting or 1)
            except (OSError, TypeError) as exc:  # pyserial's SerialException is an OSError
                failure.append(PortError(name, str(exc) or type(exc).__name__))
                stop.set()
                return
            if data:
                last[0] = time.monotonic()
                out.write(data)
                out.flush()
                if log is not None:
                    log.write(data)
                    log.flush()

    saved_timeout = port.timeout
    port.timeout = 0.05
    reader = threading.Thread(target=read_port, name="serial-terminal", daemon=True)
    reader.start()
    try:
        while not stop.is_set():
            ready, _, _ = select.select([stdin_fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(stdin_fd, 1024)
            if not data or escape in data:
                data = data.split(bytes([escape]))[0] if data else b""
                if data:
                    port.write(data)
                if not data and not failure:
                    # stdin ended (a pipe): let the device answer what it was sent.
                    end = time.monotonic() + linger
                    while time.monotonic() < min(end, last[0] + quiet) and not stop.is_set():
                        time.sleep(0.02)
                break
            try:
                port.write(data)
            except (OSError, TypeError) as exc:
                raise PortError(name, str(exc) or type(exc).__name__) from exc
    finally:
        stop.set()
        reader.join(2.0)
        port.timeout = saved_timeout
    if failure:
        raise failure[0]


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    """The terminal on ``fd`` in raw mode (every key goes to the device), restored after."""
    if not os.isatty(fd):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


# --------------------------------------------------------------------------- commands


def _emit(args: argparse.Namespace, document: dict[str, Any], text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(document, sort_keys=True, default=str))
    else:
        print(text)


def _ports(args: argparse.Namespace) -> int:
    from firmware_tools.ports import list_ports

    found = list_ports(args.extra, include_links=args.links)
    if args.json:
        rows = [{**dataclasses.asdict(p), "usb": p.usb} for p in found]
        print(json.dumps({"ports": rows}, sort_keys=True))
        return 0
    if not found:
        print("no serial ports found (pass a pty's path to list it)")
    for port in found:
        print(f"{port.device}  {port.usb or '-':9}  {port.description}")
    return 0


def _send(args: argparse.Namespace) -> int:
    from firmware_tools import xmodem, ymodem

    paths = [Path(f) for f in args.files]
    for path in paths:
        if not path.is_file():
            print(f"edge-sdk serial send: error: not a file: {path}", file=sys.stderr)
            return 2
    if args.protocol != "ymodem" and len(paths) != 1:
        print("edge-sdk serial send: error: XMODEM sends one file", file=sys.stderr)
        return 2
    progress = Progress()
    rows: list[dict[str, Any]] = []
    with ymodem.open_port(args.port, baudrate=args.baud) as port:
        started = time.monotonic()
        try:
            if args.protocol == "ymodem":
                sent = ymodem.send_files(port, paths, progress=progress)
                rows = [{"name": s.name, "bytes": s.acknowledged} for s in sent]
            else:
                with paths[0].open("rb") as stream:
                    result = xmodem.send(
                        port,
                        stream,
                        block_size=1024 if args.protocol == "xmodem1k" else 128,
                        name=paths[0].name,
                        progress=progress,
                    )
                rows = [{"name": paths[0].name, "bytes": result.acknowledged}]
        finally:
            progress.close()
        # Throughput from the first block acknowledged: not the wait for the peer to start.
        seconds = time.monotonic() - (progress.first or started)
    total = sum(int(r["bytes"]) for r in rows)
    text = "\n".join(
        [f"sent {r['name']}: {r['bytes']} bytes" for r in rows]
        + [f"{total} bytes in {seconds:.2f} s ({_rate(total, seconds)}) by {args.protocol}"]
    )
    document = {"files": rows, "bytes": total, "seconds": round(seconds, 3)}
    _emit(args, {**document, "protocol": args.protocol, "ok": True}, text)
    return 0


def _receive(args: argparse.Namespace) -> int:
    from firmware_tools import xmodem, ymodem

    progress = Progress()
    rows: list[dict[str, Any]] = []
    dest = Path(args.dest)
    if args.protocol == "ymodem" and not dest.is_dir():
        print(f"edge-sdk serial receive: error: not a folder: {dest}", file=sys.stderr)
        return 2
    if args.protocol != "ymodem" and dest.is_dir():
        print("edge-sdk serial receive: error: XMODEM needs a file name", file=sys.stderr)
        return 2
    with ymodem.open_port(args.port, baudrate=args.baud) as port:
        started = time.monotonic()
        try:
            if args.protocol == "ymodem":
                got = ymodem.receive_files(port, dest, overwrite=args.overwrite, progress=progress)
                rows = [{"name": f.name, "path": str(f.path), "bytes": f.size} for f in got]
            else:
                result = xmodem.receive_file(
                    port, dest, overwrite=args.overwrite, size=args.size, progress=progress
                )
                rows = [{"name": dest.name, "path": str(dest), "bytes": result.size}]
        finally:
            progress.close()
        # Throughput from the first block acknowledged: not the wait for the peer to start.
        seconds = time.monotonic() - (progress.first or started)
    total = sum(int(r["bytes"]) for r in rows)
    text = "\n".join(
        [f"received {r['path']}: {r['bytes']} bytes" for r in rows]
        + [f"{total} bytes in {seconds:.2f} s ({_rate(total, seconds)}) by {args.protocol}"]
    )
    document = {"files": rows, "bytes": total, "seconds": round(seconds, 3)}
    _emit(args, {**document, "protocol": args.protocol, "ok": True}, text)
    return 0


def ymodem_send_hook(progress: Progress | None = None) -> Callable[[HookCall], dict[str, str]]:
    """The ``ymodem-send FILE`` command of console scripts: sends FILE (relative to the
    script) by YMODEM on the console's port; sets @{sent_size} (decimal bytes)."""

    def hook(call: HookCall) -> dict[str, str]:
        from firmware_tools import ymodem
        from firmware_tools.errors import ScriptError

        if len(call.args) != 1:
            raise ScriptError(call.name, call.line, "ymodem-send takes one argument: FILE")
        path = call.path(call.args[0])
        if not path.is_file():
            raise ScriptError(call.name, call.line, f"ymodem-send: not a file: {path}")
        # U-Boot's first 'C' may sit in the console's buffer; it repeats it (serial-console.md).
        call.console.clear()
        try:
            sent = ymodem.send_files(call.console.port, [path], progress=progress)
        finally:
            if progress is not None:
                progress.close()
        return {"sent_size": str(sent[0].acknowledged)}

    return hook


def _console(args: argparse.Namespace) -> int:
    from firmware_tools.ymodem import open_port

    with open_port(args.port, baudrate=args.baud) as port:
        if args.script:
            from firmware_tools.console import Console, ScriptRunner

            script = Path(args.script)
            try:
                text = script.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                print(
                    f"edge-sdk serial console: error: cannot read {script}: {exc}", file=sys.stderr
                )
                return 2

            def show(received: str) -> None:
                sys.stdout.write(received)
                sys.stdout.flush()

            with Console(
                port, log=args.log, timeout=args.expect_timeout, on_receive=show
            ) as console:
                runner = ScriptRunner(console, directory=script.parent)
                runner.register("ymodem-send", ymodem_send_hook(Progress()))
                parsed = runner.parse(text, name=script.name)
                runner.run(parsed)
            print(f"\n{script.name}: ok ({len(parsed.steps)} steps)")
            return 0
        stdin = sys.stdin.fileno()
        print(f"--- {args.port} at {args.baud} baud; Ctrl-] quits ---", file=sys.stderr, flush=True)
        log: IO[bytes] | None = None
        try:
            log = Path(args.log).open("ab") if args.log else None  # noqa: SIM115
            with _raw_terminal(stdin):
                terminal(port, stdin, sys.stdout.buffer, log=log)
        finally:
            if log is not None:
                log.close()
        print("\n--- closed ---", file=sys.stderr)
        return 0


def _serve(args: argparse.Namespace) -> int:
    import logging

    from edge_sdk.agent.config import load_agent_config

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = load_agent_config(args.config)
    from edge_sdk.agent.serial import RESTART_EXIT_STATUS, SerialAgent

    status = SerialAgent(config).run(args.port, baudrate=args.baud)
    if status == RESTART_EXIT_STATUS and not args.restart_exit:
        # As `edge-sdk agent` does: the same interpreter and arguments, the same pid.
        argv = [sys.executable, *sys.orig_argv[1:]]
        logging.getLogger("edge_sdk.agent").info("restarting: %s", " ".join(argv))
        sys.stdout.flush()
        sys.stderr.flush()
        with contextlib.suppress(OSError):
            os.execv(sys.executable, argv)
    return status


def _shown(value: Any) -> str:
    return "none" if value is None else str(value)


def _describe_info(info: dict[str, Any]) -> str:
    status = info.get("status") or {}
    groups = ", ".join(status.get("groups") or []) or "none"
    lines = [
        f"device {status.get('device')} (fleet {status.get('fleet')}, groups {groups}), "
        f"profile {_shown(status.get('profile'))}, edge-sdk {status.get('sdk_version')}, "
        f"onnxruntime {_shown(info.get('onnxruntime_version'))}, "
        f"firmware_tools {info.get('firmware_tools_version')}"
    ]
    models = status.get("models") or {}
    for name in sorted(models):
        entry = models[name] or {}
        lines.append(
            f"  {name}: active {_shown(entry.get('active'))} "
            f"(previous {_shown(entry.get('previous'))})"
        )
    if not models:
        lines.append("  no models")
    for name, job in sorted((info.get("jobs") or {}).items()):
        reason = f": {job.get('reason')}" if job.get("reason") else ""
        lines.append(f"  last update of {name}: version {job.get('version')} {job.get('state')}")
        lines[-1] += reason
    if status.get("last_refusal"):
        refusal = status["last_refusal"]
        lines.append(f"  last refusal ({refusal.get('topic')}): {refusal.get('reason')}")
    for problem in status.get("integrity") or []:
        lines.append(f"  integrity: {problem}")
    link = info.get("link") or {}
    if link:
        lines.append(
            f"  link: protocol {link.get('version')}, {link.get('max_payload')}-byte frames, "
            f"window {link.get('window')}"
        )
    return "\n".join(lines)


def _describe_document(title: str, document: dict[str, Any]) -> str:
    lines = [title]
    for key in sorted(document):
        value = document[key]
        shown = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
        lines.append(f"  {key}: {shown}")
    return "\n".join(lines)


def _info(args: argparse.Namespace) -> int:
    with open_link(args.port, baudrate=args.baud, timeout=args.timeout) as link:
        info = request_json(link, "info")
    _emit(args, info, _describe_info(info))
    return 0


def _diag(args: argparse.Namespace) -> int:
    with open_link(args.port, baudrate=args.baud, timeout=args.timeout) as link:
        diag = request_json(link, "diag")
    _emit(args, diag, _describe_document(f"diagnostics of the device on {args.port}", diag))
    return 0


def _telemetry(args: argparse.Namespace) -> int:
    output: IO[str]
    output = Path(args.out).open("a", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:

        def write(report: dict[str, Any]) -> None:
            output.write(json.dumps(report, sort_keys=True, separators=(",", ":")) + "\n")

        def commit() -> None:
            output.flush()
            if output is not sys.stdout:
                os.fsync(output.fileno())

        with open_link(args.port, baudrate=args.baud, timeout=args.timeout) as link:
            result = fetch_telemetry(link, write, ack=args.ack, limit=args.limit, commit=commit)
        commit()
    finally:
        if output is not sys.stdout:
            output.close()
    where = args.out or "stdout"
    text = f"{result.written} report(s) written to {where}"
    if args.ack:
        text += f"; {result.acknowledged} removed from the device"
    print(f"{text}; {result.pending} left on the device", file=sys.stderr)
    return 0


def _push(args: argparse.Namespace) -> int:
    from edge_sdk.fleet import load_release

    release = load_release(args.release, args.model)
    manifest = release.manifest
    bar = Progress(False if args.json else None)

    def progress(done: int, total: int) -> None:
        bar(f"{manifest.name} {manifest.version}", done, total)

    try:
        with open_link(args.port, baudrate=args.baud, timeout=args.timeout) as link:
            result = push_release(link, release, progress=progress)
    finally:
        bar.close()
    resumed = f"; {result.on_device} were on the device already" if result.on_device else ""
    outcome = result.state + (f": {result.reason}" if result.reason else "")
    text = (
        f"pushed {result.name} {result.version}: {result.sent} of {result.chunks} chunks"
        f"{resumed}, {result.bytes_sent} bytes in {result.seconds:.2f} s "
        f"({_rate(result.bytes_sent, result.seconds)}); the device says {outcome}"
    )
    _emit(args, result.to_dict(), text)
    return 0 if result.ok else 1


def _cmd(args: argparse.Namespace) -> int:
    from edge_sdk.cli.fleet_cmd import _plain, parse_arguments
    from edge_sdk.commands import MAX_LIFETIME, MIN_LIFETIME, check_arguments
    from edge_sdk.errors import CommandError, FleetError
    from edge_sdk.release import load_private_key

    def usage(message: str) -> int:
        print(f"edge-sdk serial cmd: error: {message}", file=sys.stderr)
        return 2

    try:
        arguments = check_arguments(args.cmd_name, parse_arguments(args.cmd_name, args.cmd_args))
    except CommandError as exc:
        return usage(exc.reason)
    except FleetError as exc:
        return usage(str(exc))
    if not MIN_LIFETIME.total_seconds() <= args.lifetime <= MAX_LIFETIME.total_seconds():
        return usage(
            f"--lifetime is {MIN_LIFETIME.total_seconds():g} to "
            f"{MAX_LIFETIME.total_seconds():g} seconds"
        )
    key = load_private_key(args.key)
    with open_link(args.port, baudrate=args.baud, timeout=args.timeout) as link:
        reply = send_command(link, args.cmd_name, arguments, key, lifetime=args.lifetime)
    device = str(reply.get("device"))
    if args.json:
        print(json.dumps(reply, sort_keys=True))
    elif reply.get("ok"):
        result = reply.get("result")
        print(_plain(device, args.cmd_name, result if isinstance(result, dict) else {}))
    else:
        error = reply.get("error") or {}
        print(
            f"edge-sdk: device {device}: command refused ({error.get('code')}): "
            f"{error.get('reason')}",
            file=sys.stderr,
        )
    return 0 if reply.get("ok") else 1


_ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "ports": _ports,
    "send": _send,
    "receive": _receive,
    "console": _console,
    "serve": _serve,
    "info": _info,
    "diag": _diag,
    "telemetry": _telemetry,
    "push": _push,
    "cmd": _cmd,
}


def run(args: argparse.Namespace) -> int:
    from firmware_tools.errors import LinkTimeoutError, RemoteError, TransferTimeoutError

    try:
        return _ACTIONS[args.action](args)
    except (LinkTimeoutError, TransferTimeoutError) as exc:
        # Nothing answered: not a refusal, and worth trying again (exit 2, as `fleet cmd`).
        if getattr(args, "json", False):
            error = {"code": "no_reply", "reason": str(exc)}
            print(json.dumps({"ok": False, "error": error}, sort_keys=True))
        print(f"edge-sdk: error: {exc}", file=sys.stderr)
        return 2
    except RemoteError as exc:
        if getattr(args, "json", False):
            error = {"code": exc.code, "reason": exc.reason}
            print(json.dumps({"ok": False, "error": error}, sort_keys=True))
        print(f"edge-sdk: error: {exc}", file=sys.stderr)
        return 1
