"""An expect-style console for bootloader and shell prompts, and a small script language for
field procedures ("stop U-Boot's autoboot, run loady, send the image, check its CRC, boot").

The console works on any open ``serial.SerialBase`` (a real port, a pty, a ``serial_for_url``
URL)::

    port = serial.Serial("/dev/ttyUSB0", 115200)
    with Console(port, log="session.log") as console:
        console.interrupt_autoboot()                   # waits for "Hit any key", sends " "
        print(console.run("version"))                  # the output between echo and prompt
        console.sendline("loady 0x80000000 115200")
        console.expect("## Ready for binary (ymodem)")

Conventions, and why:

- ``newline`` defaults to ``"\\r"``, what a terminal sends for Enter. U-Boot ends a line on
  either CR or LF, and an empty line repeats the last repeatable command (``cli_simple_loop``
  in common/cli_simple.c: ``len == 0`` sets ``CMD_FLAG_REPEAT``), so ``"\\r\\n"`` would run
  ``md`` or ``crc32`` twice; a Linux getty maps CR to LF (ICRNL), so CR suits it too.
- ``echo=True``: the device echoes what it is sent (U-Boot and a Linux shell do). The echo of
  each ``sendline`` and the line ending after it are removed from the output, so a pattern
  never matches the command itself and ``run()`` returns only the command's output.
- A ``str`` pattern is literal text; a compiled ``re.Pattern`` is a regular expression. With a
  list, the pattern matching earliest in the output wins (ties: the first in the list).
- The session log has one line per event: seconds since the console was opened, a marker
  (``<`` received, ``>`` sent, ``!`` an event such as a break, a match or a timeout) and the
  text as a JSON string, so control characters are visible::

      # firmware_tools console log, port /dev/ttyUSB0, opened 2025-06-01T12:00:00+00:00
           0.000 ! "opened"
           0.512 < "Hit any key to stop autoboot:  3 "
           0.514 > " "
           0.530 < "\\b\\b\\b 0 \\r\\n=> "
           0.530 ! "matched '=> '"

Errors: the port failing (pyserial's ``SerialException`` or ``OSError``, a pulled USB adapter)
raises ``PortError``; a pattern that does not come in time raises ``ExpectTimeoutError`` with
the tail of the output; a script that is malformed or whose step fails raises ``ScriptError``
naming the line.

Scripts: see ``parse_script`` and ``ScriptRunner``, and docs/serial-console.md.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import datetime
import json
import math
import re
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Union

import serial

from firmware_tools.errors import ConsoleError, ExpectTimeoutError, PortError, ScriptError

try:  # termios exists on POSIX only; pyserial's send_break raises termios.error there.
    import termios

    _PORT_ERRORS: tuple[type[BaseException], ...] = (
        serial.SerialException,
        OSError,
        termios.error,
    )
except ImportError:  # pragma: no cover - Windows
    _PORT_ERRORS = (serial.SerialException, OSError)

__all__ = [
    "AUTOBOOT_COUNTDOWN",
    "BUILTIN_HOOKS",
    "Console",
    "Hook",
    "HookCall",
    "Match",
    "Pattern",
    "Regex",
    "Script",
    "ScriptRunner",
    "Step",
    "Text",
    "parse_script",
]

Pattern = Union[str, "re.Pattern[str]"]

# U-Boot's countdown (common/autoboot.c, abortboot_single_key) and the default prompt of a
# keyed autoboot (CONFIG_AUTOBOOT_PROMPT, "Autoboot in %d seconds").
AUTOBOOT_COUNTDOWN = re.compile(r"Hit any key to stop autoboot|Autoboot in \d+ seconds")

_POLL = 0.05  # seconds one read may block while waiting for a pattern
_MAX_BUFFER = 1_000_000  # characters kept for matching; older output is dropped


def _describe(pattern: re.Pattern[str], literal: bool) -> str:
    if literal:
        return repr(re.sub(r"\\(.)", r"\1", pattern.pattern))
    return f"/{pattern.pattern}/"


def _port_name(port: Any) -> str:
    return str(getattr(port, "name", None) or getattr(port, "port", None) or port)


@dataclasses.dataclass(frozen=True)
class Match:
    """What ``expect`` found: ``index`` of the pattern in the list, the ``re.Match``, and the
    output ``before`` it (echo removed). ``text`` is the matched text."""

    index: int
    match: re.Match[str]
    before: str

    @property
    def text(self) -> str:
        return self.match.group(0)

    def group(self, key: int | str = 0) -> str:
        value = self.match.group(key)
        return "" if value is None else str(value)


class Console:
    """An expect-style driver for one serial console.

    ``newline`` is appended by ``sendline`` (default CR, see the module notes); ``echo``
    strips the device's echo of each line sent; ``log`` is a path (opened for appending and
    closed with the console) or an open text file (left open) for the timestamped session
    log; ``timeout`` is the default for ``expect``; ``prompt`` the default for ``run`` and
    ``interrupt_autoboot`` (U-Boot's default ``CONFIG_SYS_PROMPT`` is ``"=> "``);
    ``on_receive`` is called with each chunk of text received (to show it live).

    The console does not open or close the port; while waiting it reads with the port's
    timeout set to a short poll and restores the old value after. Raises ``PortError`` when
    the port fails. Example: ``Console(port, log="session.log").run("version")``.
    """

    def __init__(
        self,
        port: serial.SerialBase,
        *,
        newline: str = "\r",
        echo: bool = True,
        log: str | Path | IO[str] | None = None,
        encoding: str = "utf-8",
        errors: str = "replace",
        timeout: float = 10.0,
        prompt: str = "=> ",
        on_receive: Callable[[str], object] | None = None,
    ) -> None:
        if not newline:
            raise ValueError("newline must not be empty")
        codecs.lookup(encoding)  # LookupError for an unknown encoding, now rather than later
        self.port = port
        self.newline = newline
        self.echo = echo
        self.encoding = encoding
        self.errors = errors
        self.timeout = float(timeout)
        self.prompt = prompt
        self.on_receive = on_receive
        self._decoder = codecs.getincrementaldecoder(encoding)(errors)
        self._buffer = ""
        self._echo: str | None = None  # the last line sent, until its echo is seen
        self._echo_from = 0
        self._eol_at: int | None = None  # where a line ending after a seen echo is removed
        self._started = time.monotonic()
        self._closed = False
        self._owns_log = False
        self._log: IO[str] | None = None
        if isinstance(log, (str, Path)):
            try:
                self._log = Path(log).open("a", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise ConsoleError(
                    f"cannot open the session log {log}: {exc.strerror or exc}"
                ) from exc
            self._owns_log = True
        elif log is not None:
            self._log = log
        if self._log is not None:
            opened = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            self._write_log(
                f"# firmware_tools console log, port {_port_name(port)}, opened {opened}\n"
            )
            self.note("opened")

    # --- sending ----------------------------------------------------------------------------

    def sendline(self, text: str) -> None:
        """Send ``text`` and the newline; with ``echo``, its echo is kept out of the output.

        Raises ``ValueError`` if ``text`` holds a line break, ``PortError`` if the port fails.
        Example: ``console.sendline("printenv bootcmd")``.
        """
        self._check_open()
        if "\r" in text or "\n" in text:
            raise ValueError("sendline takes one line; send() passes line breaks through")
        self._log_event(">", text + self.newline)
        self._write((text + self.newline).encode(self.encoding, self.errors))
        if self.echo and text:
            self._echo = text
            self._echo_from = len(self._buffer)
            self._eol_at = None

    def send(self, data: bytes | str) -> None:
        """Send ``data`` as it is (no newline, no echo handling): a key, Ctrl-C (``"\\x03"``).

        Raises ``PortError`` if the port fails. Example: ``console.send(" ")``.
        """
        self._check_open()
        raw = data.encode(self.encoding, self.errors) if isinstance(data, str) else bytes(data)
        self._log_event(">", raw.decode(self.encoding, "backslashreplace"))
        self._write(raw)

    def send_break(self, duration: float = 0.25) -> None:
        """Hold the line in the break condition for about ``duration`` seconds (SysRq on a
        Linux console, "break to stop" on some bootloaders).

        pyserial on POSIX rounds the duration to its ``tcsendbreak`` units (under 0.25 s gives
        the system default of 0.25-0.5 s). On a pty a break is accepted and does nothing: a
        pty has no line to hold low. Raises ``PortError`` when the port refuses (not open, a
        driver without break support). Example: ``console.send_break(0.5)``.
        """
        self._check_open()
        self.note(f"break {duration:g} s")
        try:
            self.port.send_break(duration)
        except _PORT_ERRORS as exc:
            raise self._port_error(exc, "cannot send a break") from exc

    # --- receiving --------------------------------------------------------------------------

    def expect(self, pattern: Pattern | Sequence[Pattern], timeout: float | None = None) -> Match:
        """Wait for a pattern (or the earliest of several) in the output; consume up to its end.

        Raises ``ExpectTimeoutError`` (with the output's tail) after ``timeout`` seconds
        (default: the console's), ``PortError`` if the port fails. Example:
        ``console.expect([re.compile(r"==> ([0-9a-f]{8})"), "Error"], timeout=5)``.
        """
        self._check_open()
        compiled = self._compile(pattern)
        limit = self.timeout if timeout is None else float(timeout)
        deadline = time.monotonic() + limit
        saved = self._set_poll()
        try:
            while True:
                found = self._search(compiled)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._receive(remaining)
        finally:
            self._restore_poll(saved)
        described = " | ".join(_describe(p, literal) for p, literal in compiled)
        tail = self._buffer[-2000:]
        self._log_event("!", f"timeout after {limit:g} s waiting for {described}")
        raise ExpectTimeoutError(described, limit, tail)

    def run(self, command: str, prompt: Pattern | None = None, timeout: float | None = None) -> str:
        """Send ``command``, wait for the prompt, return the output in between: echo removed,
        CRLF made LF, and the line breaks around it stripped.

        Raises ``ExpectTimeoutError`` or ``PortError``. Example: ``console.run("version")``.
        """
        self.sendline(command)
        found = self.expect(self.prompt if prompt is None else prompt, timeout)
        return found.before.replace("\r\n", "\n").strip("\r\n")

    def interrupt_autoboot(
        self,
        *,
        prompt: Pattern | None = None,
        key: str | bytes = " ",
        countdown: Pattern = AUTOBOOT_COUNTDOWN,
        within: float = 30.0,
        timeout: float = 5.0,
    ) -> Match:
        """Stop U-Boot's autoboot: wait up to ``within`` seconds for its countdown (or for the
        prompt, if it is already there), send ``key``, and wait ``timeout`` for the prompt.

        U-Boot counts down ``bootdelay`` seconds ("Hit any key to stop autoboot: %2d") and
        takes any key; a keyed autoboot (``CONFIG_AUTOBOOT_KEYED``) needs its string as
        ``key``. With ``bootdelay=0`` only a key already waiting stops it: power the board
        after calling this, or send the key early with ``send``. Raises
        ``ExpectTimeoutError`` or ``PortError``. Example: ``console.interrupt_autoboot()``.
        """
        wanted = self.prompt if prompt is None else prompt
        found = self.expect([countdown, wanted], within)
        if found.index == 1:
            return found
        self.send(key)
        return self.expect(wanted, timeout)

    def clear(self) -> str:
        """Discard (and return) the output received and not yet matched: before handing the
        port to a protocol that reads it directly (a YMODEM sender)."""
        self._check_open()
        text, self._buffer = self._buffer, ""
        self._echo_from = 0
        self._eol_at = None
        return text

    @property
    def buffered(self) -> str:
        """The output received and not yet consumed by a match (echo removed)."""
        return self._buffer

    def note(self, text: str) -> None:
        """Write an event line (``!``) to the session log."""
        self._log_event("!", text)

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the session log if the console opened it; the port stays open (the caller's)."""
        if self._closed:
            return
        self.note("closed")
        self._closed = True
        if self._owns_log and self._log is not None:
            self._log.close()
        self._log = None

    def __enter__(self) -> Console:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the console is closed")

    def _port_error(self, exc: BaseException, what: str) -> PortError:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        self._log_event("!", f"{what}: {reason}")
        return PortError(_port_name(self.port), f"{what}: {reason}")

    def _write(self, raw: bytes) -> None:
        try:
            self.port.write(raw)
            self.port.flush()
        except _PORT_ERRORS as exc:
            raise self._port_error(exc, "write failed") from exc

    def _set_poll(self) -> float | None:
        if not self.port.is_open:
            raise self._port_error(serial.PortNotOpenError(), "read failed")
        try:
            saved: float | None = self.port.timeout
            if saved != _POLL:
                self.port.timeout = _POLL
        except _PORT_ERRORS as exc:
            raise self._port_error(exc, "cannot set the read timeout") from exc
        return saved

    def _restore_poll(self, saved: float | None) -> None:
        if saved == _POLL:
            return
        # If the port failed meanwhile, the read already raised PortError.
        with contextlib.suppress(*_PORT_ERRORS):
            self.port.timeout = saved

    def _receive(self, remaining: float) -> None:
        if not self.port.is_open:  # pyserial would fail with a TypeError here
            raise self._port_error(serial.PortNotOpenError(), "read failed")
        try:
            waiting = self.port.in_waiting
            raw = self.port.read(max(1, min(waiting, 65536)))
        except _PORT_ERRORS as exc:
            raise self._port_error(exc, "read failed") from exc
        if not raw:
            return
        text = self._decoder.decode(raw)
        if not text:
            return
        self._log_event("<", text)
        if self.on_receive is not None:
            self.on_receive(text)
        self._buffer += text
        self._strip_echo()
        if len(self._buffer) > _MAX_BUFFER:
            cut = len(self._buffer) - _MAX_BUFFER
            self._buffer = self._buffer[cut:]
            self._echo_from = max(0, self._echo_from - cut)
            if self._eol_at is not None:
                self._eol_at = self._eol_at - cut if self._eol_at >= cut else None

    def _strip_echo(self) -> None:
        if self._echo is not None:
            at = self._buffer.find(self._echo, self._echo_from)
            if at >= 0:
                self._buffer = self._buffer[:at] + self._buffer[at + len(self._echo) :]
                self._echo = None
                self._eol_at = at
        if self._eol_at is not None:
            ahead = self._buffer[self._eol_at : self._eol_at + 2]
            if ahead in ("", "\r"):
                return  # not arrived yet (or CR waiting for its LF)
            if ahead == "\r\n":
                size = 2
            elif ahead[0] in "\r\n":
                size = 1
            else:
                size = 0
            self._buffer = self._buffer[: self._eol_at] + self._buffer[self._eol_at + size :]
            self._eol_at = None

    def _visible(self) -> int:
        """How much of the buffer may be matched: not a partly arrived echo at its end."""
        if self._echo is None:
            return len(self._buffer)
        for size in range(min(len(self._echo), len(self._buffer) - self._echo_from), 0, -1):
            if self._buffer.endswith(self._echo[:size]):
                return len(self._buffer) - size
        return len(self._buffer)

    def _compile(self, pattern: Pattern | Sequence[Pattern]) -> list[tuple[re.Pattern[str], bool]]:
        items: Sequence[Pattern]
        items = [pattern] if isinstance(pattern, (str, re.Pattern)) else pattern
        if not items:
            raise ValueError("expect needs at least one pattern")
        compiled: list[tuple[re.Pattern[str], bool]] = []
        for item in items:
            if isinstance(item, str):
                if not item:
                    raise ValueError("an empty pattern matches anything; give some text")
                compiled.append((re.compile(re.escape(item)), True))
            elif isinstance(item, re.Pattern):
                compiled.append((item, False))
            else:
                raise TypeError(f"a pattern is a str or a compiled regex, not {type(item)}")
        return compiled

    def _search(self, compiled: list[tuple[re.Pattern[str], bool]]) -> Match | None:
        end = self._visible()
        best: tuple[int, int, re.Match[str]] | None = None
        for index, (regex, _) in enumerate(compiled):
            found = regex.search(self._buffer, 0, end)
            if found is not None and (best is None or found.start() < best[0]):
                best = (found.start(), index, found)
        if best is None:
            return None
        start, index, found = best
        before = self._buffer[:start]
        consumed = found.end()
        self._buffer = self._buffer[consumed:]
        self._echo_from = max(0, self._echo_from - consumed)
        if self._eol_at is not None:
            self._eol_at = self._eol_at - consumed if self._eol_at >= consumed else None
        self._log_event("!", f"matched {_describe(*compiled[index])}")
        return Match(index=index, match=found, before=before)

    def _log_event(self, marker: str, text: str) -> None:
        if self._log is None:
            return
        elapsed = time.monotonic() - self._started
        self._write_log(f"{elapsed:10.3f} {marker} {json.dumps(text, ensure_ascii=False)}\n")

    def _write_log(self, line: str) -> None:
        assert self._log is not None
        try:
            self._log.write(line)
            self._log.flush()  # a session that ends in a crash keeps its log
        except (OSError, ValueError) as exc:
            raise ConsoleError(f"cannot write the session log: {exc}") from exc


# --- scripts --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Text:
    """A script argument: a quoted string (escapes decoded) or a bare word."""

    value: str
    quoted: bool = True


@dataclasses.dataclass(frozen=True)
class Regex:
    """A script argument written ``/source/flags`` (flags: i, m, s)."""

    source: str
    flags: str = ""


Arg = Text | Regex


@dataclasses.dataclass(frozen=True)
class Step:
    """One command of a script, with its line number and the line as written."""

    line: int
    command: str
    args: tuple[Arg, ...]
    text: str


@dataclasses.dataclass(frozen=True)
class Script:
    """A parsed script: ``name`` (a file name, for messages) and its ``steps``."""

    name: str
    steps: tuple[Step, ...]


@dataclasses.dataclass(frozen=True)
class HookCall:
    """What a hook gets: the console, its arguments (variables substituted), the script's
    directory (relative paths are relative to it) and the line it was called from."""

    console: Console
    args: tuple[str, ...]
    directory: Path
    line: int
    name: str

    def path(self, arg: str) -> Path:
        """``arg`` as a path, relative to the script's directory."""
        return self.directory / arg


Hook = Callable[[HookCall], "Mapping[str, str] | None"]
"""A script command provided by the caller: returns variables to set, or None."""

_VARIABLE = re.compile(r"@\{([A-Za-z0-9_]+)\}")
_NAME = re.compile(r"[a-z][a-z0-9-]*\Z")
_ESCAPES = {"\\": "\\", '"': '"', "r": "\r", "n": "\n", "t": "\t", "0": "\0", "e": "\x1b"}
_REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}

# Built-in commands: (minimum, maximum) number of arguments, and what they are.
_COMMANDS: dict[str, tuple[int, int, str]] = {
    "expect": (1, 2, "PATTERN [SECONDS]"),
    "send": (1, 1, "TEXT"),
    "sendline": (1, 1, "TEXT"),
    "timeout": (1, 1, "SECONDS"),
    "sleep": (1, 1, "SECONDS"),
    "break": (0, 1, "[SECONDS]"),
    "set": (2, 2, "NAME TEXT"),
    "check": (3, 3, "TEXT == TEXT  or  TEXT != TEXT"),
    "fail-on": (1, 1, "PATTERN"),
    "note": (1, 1, "TEXT"),
}


def _crc32_hook(call: HookCall) -> Mapping[str, str]:
    """``crc32 FILE``: the file's CRC-32 as U-Boot's ``crc32`` prints it (8 lowercase hex
    digits) in @{crc32}, its size in @{size} (decimal) and @{size_hex} (hex, as U-Boot's
    ``filesize`` variable holds it)."""
    if len(call.args) != 1:
        raise ScriptError(call.name, call.line, "crc32 takes one argument: FILE")
    path = call.path(call.args[0])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScriptError(
            call.name, call.line, f"cannot read {path}: {exc.strerror or exc}"
        ) from exc
    return {
        "crc32": f"{zlib.crc32(data) & 0xFFFFFFFF:08x}",
        "size": str(len(data)),
        "size_hex": f"{len(data):x}",
    }


BUILTIN_HOOKS: Mapping[str, Hook] = {"crc32": _crc32_hook}
"""Hooks every ``ScriptRunner`` starts with."""


def _number(step: Step, arg: Arg, name: str, *, script: str, zero: bool = False) -> float:
    if not isinstance(arg, Text):
        raise ScriptError(script, step.line, f"{step.command}: {name} must be a number")
    try:
        value = float(arg.value)
    except ValueError:
        raise ScriptError(
            script, step.line, f"{step.command}: {name} must be a number, got {arg.value!r}"
        ) from None
    if not math.isfinite(value) or not (value > 0 or (zero and value == 0)):
        raise ScriptError(
            script, step.line, f"{step.command}: {name} must be more than 0, got {arg.value}"
        )
    return value


def _tokenize(text: str, line: int, script: str) -> list[Arg]:
    args: list[Arg] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c in " \t":
            i += 1
        elif c == "#":
            break
        elif c == '"':
            value: list[str] = []
            i += 1
            while True:
                if i >= len(text):
                    raise ScriptError(script, line, "a string is not closed (missing '\"')")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\":
                    if i + 1 >= len(text):
                        raise ScriptError(script, line, "a string ends with a lone '\\'")
                    e = text[i + 1]
                    if e == "x":
                        digits = text[i + 2 : i + 4]
                        if not re.fullmatch(r"[0-9A-Fa-f]{2}", digits):
                            raise ScriptError(script, line, "\\x needs two hex digits")
                        value.append(chr(int(digits, 16)))
                        i += 4
                        continue
                    if e not in _ESCAPES:
                        raise ScriptError(
                            script,
                            line,
                            f"unknown escape '\\{e}' (known: \\\\ \\\" \\r \\n \\t \\0 \\e \\xHH)",
                        )
                    value.append(_ESCAPES[e])
                    i += 2
                    continue
                value.append(c)
                i += 1
            args.append(Text("".join(value)))
        elif c == "/":
            source: list[str] = []
            i += 1
            while True:
                if i >= len(text):
                    raise ScriptError(script, line, "a /regex/ is not closed (missing '/')")
                c = text[i]
                if c == "/":
                    i += 1
                    break
                if c == "\\" and i + 1 < len(text):
                    if text[i + 1] == "/":
                        source.append("/")
                    else:
                        source.append(text[i : i + 2])
                    i += 2
                    continue
                source.append(c)
                i += 1
            flags = ""
            while i < len(text) and text[i] not in " \t":
                if text[i] not in _REGEX_FLAGS:
                    raise ScriptError(
                        script, line, f"unknown regex flag {text[i]!r} (known: i, m, s)"
                    )
                flags += text[i]
                i += 1
            pattern = "".join(source)
            try:
                re.compile(_VARIABLE.sub("x", pattern))
            except re.error as exc:
                raise ScriptError(script, line, f"bad regex /{pattern}/: {exc}") from None
            args.append(Regex(pattern, flags))
        else:
            start = i
            while i < len(text) and text[i] not in " \t":
                i += 1
            args.append(Text(text[start:i], quoted=False))
    return args


def parse_script(text: str, *, name: str = "<script>", hooks: Iterable[str] = ()) -> Script:
    """Parse a console script; ``hooks`` names the extra commands the runner will provide.

    One command per line; ``#`` starts a comment outside strings and regexes. Raises
    ``ScriptError`` naming the line for anything malformed, before a byte is sent. Example:
    ``parse_script('expect "=> "\\nsendline "version"\\n')``.
    """
    known_hooks = set(hooks) | set(BUILTIN_HOOKS)
    steps: list[Step] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        tokens = _tokenize(raw, number, name)
        if not tokens:
            continue
        head, args = tokens[0], tuple(tokens[1:])
        if not isinstance(head, Text) or head.quoted:
            raise ScriptError(name, number, "a line starts with a command name")
        command = head.value
        step = Step(number, command, args, raw.strip())
        if command in _COMMANDS:
            low, high, usage = _COMMANDS[command]
            if not low <= len(args) <= high:
                raise ScriptError(name, number, f"usage: {command} {usage}")
            _validate(step, name)
        elif command in known_hooks:
            if any(isinstance(a, Regex) for a in args):
                raise ScriptError(name, number, f"{command}: arguments are text, not /regex/")
        else:
            commands = ", ".join(sorted(set(_COMMANDS) | known_hooks))
            raise ScriptError(name, number, f"unknown command {command!r} (known here: {commands})")
        steps.append(step)
    return Script(name, tuple(steps))


def _validate(step: Step, script: str) -> None:
    command, args = step.command, step.args
    if command in ("send", "sendline", "note", "set") and any(isinstance(a, Regex) for a in args):
        raise ScriptError(script, step.line, f"{command} takes text, not a /regex/")
    if command in ("timeout",):
        _number(step, args[0], "SECONDS", script=script)
    elif command == "sleep":
        _number(step, args[0], "SECONDS", script=script, zero=True)
    elif command == "break" and args:
        _number(step, args[0], "SECONDS", script=script)
    elif command == "expect" and len(args) == 2:
        _number(step, args[1], "SECONDS", script=script)
    elif command == "set":
        assert isinstance(args[0], Text)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args[0].value):
            raise ScriptError(script, step.line, f"set: bad variable name {args[0].value!r}")
    elif command == "check":
        operator = args[1]
        if not isinstance(operator, Text) or operator.value not in ("==", "!="):
            raise ScriptError(script, step.line, "check: the operator is == or !=")
        if any(isinstance(a, Regex) for a in (args[0], args[2])):
            raise ScriptError(script, step.line, "check compares text, not /regex/")
    if command in ("expect", "fail-on") and isinstance(args[0], Text) and not args[0].value:
        raise ScriptError(script, step.line, f"{command}: the pattern is empty")


class ScriptRunner:
    """Runs console scripts on a ``Console``, with a registry of hook commands.

    ``hooks`` adds commands (name -> ``Hook``) to the built-in ones (``crc32 FILE``);
    ``directory`` is where relative paths in hook arguments point (the script's folder). The
    lead's CLI registers ``ymodem-send`` here. Example::

        runner = ScriptRunner(console, directory=script.parent)
        runner.register("ymodem-send", lambda call: send_file(call.console.port, ...))
        variables = runner.run(runner.parse(text, name="flash.txt"))
    """

    def __init__(
        self,
        console: Console,
        *,
        hooks: Mapping[str, Hook] | None = None,
        directory: str | Path = ".",
    ) -> None:
        self.console = console
        self.directory = Path(directory)
        self._hooks: dict[str, Hook] = dict(BUILTIN_HOOKS)
        for name, hook in (hooks or {}).items():
            self.register(name, hook)

    @property
    def hooks(self) -> Mapping[str, Hook]:
        return dict(self._hooks)

    def register(self, name: str, hook: Hook) -> None:
        """Add (or replace) the hook command ``name`` (lowercase, digits and dashes)."""
        if not _NAME.match(name):
            raise ValueError(f"a hook name is lowercase letters, digits and '-': {name!r}")
        if name in _COMMANDS:
            raise ValueError(f"{name!r} is a built-in command")
        if not callable(hook):
            raise TypeError("a hook is a callable taking a HookCall")
        self._hooks[name] = hook

    def parse(self, text: str, *, name: str = "<script>") -> Script:
        """``parse_script`` with this runner's hooks."""
        return parse_script(text, name=name, hooks=self._hooks)

    def run(
        self, script: Script | str, *, variables: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """Run every step in order; return the variables at the end.

        Raises ``ScriptError`` (naming the line) when a step fails: an expect timing out (the
        ``ExpectTimeoutError`` is its ``__cause__``), a ``fail-on`` pattern seen, a ``check``
        not holding, a variable not set, an unknown hook. ``PortError`` and errors a hook
        raises for itself (a ``TransferError``) pass through unchanged.
        """
        if isinstance(script, str):
            script = self.parse(script)
        state = _Run(
            script=script,
            timeout=self.console.timeout,
            variables=dict(variables or {}),
        )
        for step in script.steps:
            self.console.note(f"{script.name} line {step.line}: {step.text}")
            try:
                self._step(state, step)
            except ScriptError as exc:
                self.console.note(f"failed: {exc}")
                raise
            except ConsoleError as exc:
                error = ScriptError(script.name, step.line, str(exc))
                self.console.note(f"failed: {error}")
                raise error from exc
            except Exception as exc:
                self.console.note(f"failed: {script.name} line {step.line}: {exc}")
                raise
        return state.variables

    def _step(self, state: _Run, step: Step) -> None:
        console, args, name = self.console, step.args, state.script.name
        command = step.command
        if command == "expect":
            limit = state.timeout
            if len(args) == 2:
                limit = _number(step, args[1], "SECONDS", script=name)
            patterns = [self._pattern(state, step, args[0])]
            patterns += [p for p, _ in state.fail_on]
            found = console.expect(patterns, limit)
            if found.index > 0:
                fail_line = state.fail_on[found.index - 1][1]
                raise ScriptError(
                    name,
                    step.line,
                    f"the device printed {found.text!r} (fail-on at line {fail_line})",
                )
            state.variables["0"] = found.text
            for number, value in enumerate(found.match.groups(), start=1):
                state.variables[str(number)] = "" if value is None else value
            for key, value in found.match.groupdict().items():
                state.variables[key] = "" if value is None else value
        elif command == "send":
            console.send(self._text(state, step, args[0]))
        elif command == "sendline":
            console.sendline(self._text(state, step, args[0]))
        elif command == "timeout":
            state.timeout = _number(step, args[0], "SECONDS", script=name)
        elif command == "sleep":
            time.sleep(_number(step, args[0], "SECONDS", script=name, zero=True))
        elif command == "break":
            console.send_break(_number(step, args[0], "SECONDS", script=name) if args else 0.25)
        elif command == "set":
            assert isinstance(args[0], Text)
            state.variables[args[0].value] = self._text(state, step, args[1])
        elif command == "check":
            left = self._text(state, step, args[0])
            right = self._text(state, step, args[2])
            operator = args[1].value if isinstance(args[1], Text) else ""
            if (left == right) != (operator == "=="):
                raise ScriptError(
                    name, step.line, f"check failed: {left!r} {operator} {right!r} is false"
                )
            console.note(f"check {left!r} {operator} {right!r}: ok")
        elif command == "fail-on":
            state.fail_on.append((self._pattern(state, step, args[0]), step.line))
        elif command == "note":
            console.note(self._text(state, step, args[0]))
        else:
            hook = self._hooks.get(command)
            if hook is None:
                raise ScriptError(name, step.line, f"no hook registered for {command!r}")
            call = HookCall(
                console=console,
                args=tuple(self._text(state, step, a) for a in args),
                directory=self.directory,
                line=step.line,
                name=name,
            )
            result = hook(call)
            if result:
                state.variables.update({str(k): str(v) for k, v in result.items()})

    def _substitute(self, state: _Run, step: Step, text: str, escape: bool) -> str:
        def value(found: re.Match[str]) -> str:
            key = found.group(1)
            if key not in state.variables:
                raise ScriptError(
                    state.script.name,
                    step.line,
                    f"@{{{key}}} is not set (set it with set, an expect's groups or a hook)",
                )
            text = state.variables[key]
            return re.escape(text) if escape else text

        return _VARIABLE.sub(value, text)

    def _text(self, state: _Run, step: Step, arg: Arg) -> str:
        assert isinstance(arg, Text)
        return self._substitute(state, step, arg.value, escape=False)

    def _pattern(self, state: _Run, step: Step, arg: Arg) -> Pattern:
        if isinstance(arg, Text):
            return self._substitute(state, step, arg.value, escape=False)
        flags = 0
        for flag in arg.flags:
            flags |= _REGEX_FLAGS[flag]
        return re.compile(self._substitute(state, step, arg.source, escape=True), flags)


@dataclasses.dataclass
class _Run:
    script: Script
    timeout: float
    variables: dict[str, str]
    fail_on: list[tuple[Pattern, int]] = dataclasses.field(default_factory=list)
