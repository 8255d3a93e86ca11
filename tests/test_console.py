"""The expect-style console and its scripts (firmware_tools/console.py) against a simulated
U-Boot on a real pty, directly and through the line simulator at 115200 baud.

The fake follows U-Boot's own code and documentation:
- autoboot countdown: common/autoboot.c ``abortboot_single_key`` ("Hit any key to stop
  autoboot: %2d ", then "\\b\\b\\b%2d " each second, then a newline);
  https://docs.u-boot.org/en/latest/usage/environment.html (``bootdelay``: -1 no autoboot);
- command line: CR or LF ends a line, an empty line repeats the last repeatable command
  (common/cli_simple.c), Ctrl-C prints "<INTERRUPT>", output "\\n" goes out as "\\r\\n";
- ``crc32``: "crc32 for %08lx ... %08lx ==> %08x" (common/hash.c ``show_hash``);
- ``loady``: "## Ready for binary (ymodem) download to 0x%08lX at %d bps...", 'C' until
  a sender starts, then xyzModem's summary, "## Total Size      = 0x%08x = %d Bytes",
  "## Start Addr      = 0x%08lX", and ``filesize`` set in hex (cmd/load.c). The YMODEM
  exchange itself is not simulated: the test's ``ymodem-send`` hook hands the file over
  (the whole procedure over real YMODEM is left to firmware_tools.ymodem's tests).
"""

from __future__ import annotations

import contextlib
import io
import json
import queue
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serial
from _serial import PtyPair

from firmware_tools.console import (
    BUILTIN_HOOKS,
    Console,
    HookCall,
    Regex,
    ScriptRunner,
    Text,
    parse_script,
)
from firmware_tools.errors import ExpectTimeoutError, PortError, ScriptError
from firmware_tools.linesim import LineSimulator

BASE = 0x80000000
VERSION = (
    "U-Boot 2024.01 (Jan 08 2024 - 12:00:00 +0000)\n\n"
    "arm-linux-gnueabihf-gcc (GCC) 12.2.0\nGNU ld (GNU Binutils) 2.40\n"
)
REPEATABLE = {"crc32", "md", "version"}


class FakeUBoot:
    """A U-Boot-like device on the device end of a pty (see the module docstring)."""

    def __init__(
        self,
        path: str,
        workdir: Path,
        *,
        bootdelay: int = 2,
        tick: float = 0.1,
        prompt: str = "=> ",
    ) -> None:
        self.path = path
        self.workdir = workdir
        self.tick = tick
        self.prompt = prompt
        self.env = {"loadaddr": "0x80000000", "bootdelay": str(bootdelay)}
        self.memory = bytearray(0x20000)
        self.commands: list[str] = []  # every command line run, after expansion
        self.raw = bytearray()  # every byte received at the command line
        self.booted = False
        self.inbox: queue.Queue[bytes] = queue.Queue()  # what a "loady" receives
        self.port = serial.Serial(path, timeout=0.01)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="fake u-boot", daemon=True)

    def start(self) -> FakeUBoot:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.port.close()

    # -- output and input, as U-Boot's serial console does them
    def puts(self, text: str) -> None:
        self.port.write(text.replace("\n", "\r\n").encode())

    def getc(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            c = self.port.read(1)
            if c:
                return bytes(c)
        return b""

    def _main(self) -> None:
        with contextlib.suppress(serial.SerialException, OSError):
            self._boot()

    def _boot(self) -> None:
        self.puts("\nU-Boot 2024.01 (Jan 08 2024 - 12:00:00 +0000)\n\nDRAM:  256 MiB\n")
        delay = int(self.env["bootdelay"])
        if delay >= 0:
            self.puts(f"Hit any key to stop autoboot: {delay:2d} ")
            abort = False
            while delay > 0 and not abort:
                delay -= 1
                if self.getc(self.tick):
                    abort, delay = True, 0
                self.puts(f"\b\b\b{delay:2d} ")
            self.puts("\n")
            if not abort:
                self._run("boot")
                return
        last = ""
        while not self._stop.is_set() and not self.booted:
            self.puts(self.prompt)
            line = self._readline()
            if line is None:
                continue
            if line == "":
                if last.split(" ", maxsplit=1)[0] not in REPEATABLE:
                    continue
                line = last
            last = line
            self._run(line)

    def _readline(self) -> str | None:
        chars: list[str] = []
        while not self._stop.is_set():
            c = self.getc(1.0)
            if not c:
                continue
            self.raw += c
            if c in (b"\r", b"\n"):
                self.puts("\n")
                return "".join(chars)
            if c == b"\x03":
                self.puts("<INTERRUPT>\n")
                return None
            if c in (b"\x08", b"\x7f"):
                if chars:
                    chars.pop()
                    self.puts("\b \b")
                continue
            chars.append(c.decode("latin-1"))
            self.port.write(c)  # echo
        return None

    def _expand(self, line: str) -> str:
        return re.sub(
            r"\$\{(\w+)\}|\$(\w+)", lambda m: self.env.get(m.group(1) or m.group(2), ""), line
        )

    def _run(self, line: str) -> None:
        line = self._expand(line)
        self.commands.append(line)
        words = line.split()
        if not words:
            return
        name, args = words[0], words[1:]
        if name == "version":
            self.puts(VERSION)
        elif name == "echo":
            self.puts(" ".join(args) + "\n")
        elif name == "setenv":
            self.env[args[0]] = " ".join(args[1:])
        elif name == "printenv":
            for key in args:
                if key in self.env:
                    self.puts(f"{key}={self.env[key]}\n")
                else:
                    self.puts(f'## Error: "{key}" not defined\n')
        elif name == "crc32":
            addr, size = int(args[0], 16), int(args[1], 16)
            data = bytes(self.memory[addr - BASE : addr - BASE + size])
            crc = zlib.crc32(data) & 0xFFFFFFFF
            self.puts(f"crc32 for {addr:08x} ... {addr + size - 1:08x} ==> {crc:08x}\n")
        elif name == "loady":
            self._loady(args)
        elif name in ("boot", "bootm"):
            self.puts(f"## Booting kernel from Legacy Image at {BASE:08x} ...\n")
            self.puts("\nStarting kernel ...\n\n")
            self.booted = True
        else:
            self.puts(f"Unknown command '{name}' - try 'help'\n")

    def _loady(self, args: list[str]) -> None:
        addr = int(args[0] if args else self.env["loadaddr"], 16)
        baud = int(args[1]) if len(args) > 1 else 115200
        self.puts(f"## Ready for binary (ymodem) download to 0x{addr:08X} at {baud} bps...\n")
        # U-Boot's receiver asks with 'C' until a sender starts (cmd/load.c, xyzModem.c).
        # The YMODEM exchange itself is firmware_tools.ymodem's to test against real
        # peers; here the "transfer" is handed over by the test's hook.
        data = None
        for _ in range(int(30 / self.tick)):
            self.puts("C")
            try:
                data = self.inbox.get(timeout=self.tick)
                break
            except queue.Empty:
                if self._stop.is_set():
                    return
        if data is None:
            self.puts("\n## Binary (ymodem) download aborted\n")
            return
        blocks = (len(data) + 1023) // 1024 + 2  # data blocks, header and end-of-batch
        self.puts(f"xyzModem - CRC mode, 2(SOH)/{blocks - 2}(STX)/0(CAN) packets, 0 retries\n")
        self.memory[addr - BASE : addr - BASE + len(data)] = data
        self.puts(f"## Total Size      = 0x{len(data):08x} = {len(data)} Bytes\n")
        self.puts(f"## Start Addr      = 0x{addr:08X}\n")
        self.env["filesize"] = f"{len(data):x}"


@contextlib.contextmanager
def uboot_line(
    tmp_path: Path, paced: bool, **options: object
) -> Iterator[tuple[serial.Serial, FakeUBoot, str]]:
    """(host port, fake U-Boot, the host pty's path): direct on one pty pair, or paced at
    115200 baud through the line simulator between two."""
    with contextlib.ExitStack() as stack:
        if paced:
            one = stack.enter_context(PtyPair(tmp_path, "host"))
            two = stack.enter_context(PtyPair(tmp_path, "device"))
            host_path, device_path = one.a, two.a
        else:
            pair = stack.enter_context(PtyPair(tmp_path, "pty"))
            host_path, device_path = pair.a, pair.b
        # The host end is open before the device speaks (pyserial's open discards input).
        host = serial.Serial(host_path, timeout=0.05)
        stack.callback(host.close)
        if paced:
            stack.enter_context(LineSimulator(one.b, two.b, baud=115200))
        device = FakeUBoot(device_path, tmp_path, **options)  # type: ignore[arg-type]
        stack.callback(device.close)
        device.start()
        yield host, device, host_path


@pytest.fixture(params=[False, True], ids=["direct", "paced-115200"])
def uboot(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[serial.Serial, FakeUBoot, str]]:
    with uboot_line(tmp_path, request.param) as line:
        yield line


@pytest.fixture
def direct(tmp_path: Path) -> Iterator[tuple[serial.Serial, FakeUBoot, str]]:
    with uboot_line(tmp_path, paced=False) as line:
        yield line


def handover_hook(device: FakeUBoot) -> Callable[[HookCall], None]:
    """``ymodem-send FILE`` for the fake: hands the file to its ``loady``. The lead's CLI
    registers firmware_tools.ymodem under this name; a test of the whole procedure over
    real YMODEM belongs with that module."""

    def hook(call: HookCall) -> None:
        call.console.clear()  # the 'C's asking for a sender
        device.inbox.put(call.path(call.args[0]).read_bytes())

    return hook


# --- the console ------------------------------------------------------------------------------


def test_stop_autoboot_and_run_a_command(uboot: tuple[serial.Serial, FakeUBoot, str]) -> None:
    host, device, _ = uboot
    with Console(host, timeout=5) as console:
        found = console.interrupt_autoboot()
        assert found.text == "=> "
        assert found.before.endswith("\b\b\b 0 \r\n")  # the countdown, stopped at 0
        output = console.run("version")
    assert output == VERSION.rstrip("\n")  # echo gone, CRLF made LF, ends stripped
    assert device.commands == ["version"]
    assert not device.booted


def test_newline_is_cr_because_an_empty_line_repeats_the_command(
    direct: tuple[serial.Serial, FakeUBoot, str],
) -> None:
    host, device, _ = direct
    console = Console(host, timeout=5)
    console.interrupt_autoboot()
    console.run("version")
    assert bytes(device.raw) == b"version\r"
    # With CRLF, U-Boot sees "version" then an empty line, and runs version again.
    crlf = Console(host, newline="\r\n", timeout=5)
    crlf.run("version")
    crlf.expect("=> ")
    assert device.commands == ["version", "version", "version"]


def test_echo_is_kept_out_of_matches_and_output(
    direct: tuple[serial.Serial, FakeUBoot, str],
) -> None:
    host, _, _ = direct
    console = Console(host, timeout=5)
    console.interrupt_autoboot()
    console.sendline("printenv nothing")
    found = console.expect("nothing")  # in the echo too; must match the device's answer
    assert found.before == '## Error: "'
    console.expect("=> ")
    # Without echo handling the same pattern matches the command itself.
    raw = Console(host, echo=False, timeout=5)
    raw.sendline("printenv nothing")
    found = raw.expect("nothing")
    assert found.before == "printenv "
    raw.expect("=> ")


def test_regex_groups_and_earliest_pattern_wins(
    uboot: tuple[serial.Serial, FakeUBoot, str],
) -> None:
    host, device, _ = uboot
    device.memory[:4] = b"abcd"
    console = Console(host, timeout=5)
    console.interrupt_autoboot()
    console.sendline("crc32 ${loadaddr} 4")
    found = console.expect([re.compile(r"==> ([0-9a-f]{8})"), re.compile(r"crc32 for")])
    assert found.index == 1  # "crc32 for" comes first in the output
    found = console.expect([re.compile(r"==> ([0-9a-f]{8})"), "Unknown command"])
    assert found.index == 0
    assert found.group(1) == f"{zlib.crc32(b'abcd'):08x}"
    console.expect("=> ")


def test_expect_timeout_reports_the_tail(direct: tuple[serial.Serial, FakeUBoot, str]) -> None:
    host, _, _ = direct
    console = Console(host, timeout=5)
    console.interrupt_autoboot()
    console.sendline("echo almost there")
    start = time.monotonic()
    with pytest.raises(ExpectTimeoutError) as info:
        console.expect(["never", re.compile(r"nor\s+this")], timeout=0.4)
    assert 0.4 <= time.monotonic() - start < 1.0
    error = info.value
    assert error.pattern == "'never' | /nor\\s+this/"
    assert error.timeout == 0.4
    assert error.tail.endswith("almost there\r\n=> ")
    assert "almost there" in str(error)


def test_ctrl_c_and_raw_send(direct: tuple[serial.Serial, FakeUBoot, str]) -> None:
    host, device, _ = direct
    console = Console(host, timeout=5)
    console.interrupt_autoboot()
    console.send("halfway")
    console.send(b"\x03")
    found = console.expect("<INTERRUPT>")
    assert found.before == "halfway"
    console.expect("=> ")
    assert device.commands == []
    with pytest.raises(ValueError, match="one line"):
        console.sendline("two\nlines")


def test_autoboot_missed_and_no_autoboot(tmp_path: Path) -> None:
    with uboot_line(tmp_path / "late", paced=False) as (host, device, _):
        console = Console(host, timeout=5)
        console.expect("Hit any key")
        with pytest.raises(ExpectTimeoutError) as info:
            console.expect("=> ", timeout=0.6)  # nobody pressed a key: it boots
        assert "Starting kernel" in info.value.tail
        assert device.booted
    # bootdelay -1: no countdown at all, straight to the prompt; no key is sent.
    with uboot_line(tmp_path / "none", paced=False, bootdelay=-1) as (host, device, _):
        found = Console(host, timeout=5).interrupt_autoboot(within=5)
        assert found.index == 1
        assert bytes(device.raw) == b""


def test_break_on_a_pty_is_accepted_and_a_closed_port_is_a_port_error(
    direct: tuple[serial.Serial, FakeUBoot, str],
) -> None:
    host, _, _ = direct
    log = io.StringIO()
    console = Console(host, log=log)
    console.send_break(0.25)  # a pty has no line to hold low: nothing happens, no error
    assert '"break 0.25 s"' in log.getvalue()
    host.close()
    with pytest.raises(PortError) as info:
        console.send_break()
    assert "break" in info.value.reason
    with pytest.raises(PortError):
        console.sendline("version")
    with pytest.raises(PortError):
        console.expect("=> ", timeout=0.2)


def test_a_vanished_port_is_a_port_error(tmp_path: Path) -> None:
    pair = PtyPair(tmp_path)
    try:
        host = serial.Serial(pair.a, timeout=0.05)
        console = Console(host, timeout=5)
        pair.close()  # the USB adapter is pulled: socat and the pty go away
        with pytest.raises(PortError) as info:
            console.expect("=> ")
        assert info.value.port == pair.a
        host.close()
    finally:
        pair.close()


def test_session_log(tmp_path: Path, direct: tuple[serial.Serial, FakeUBoot, str]) -> None:
    host, _, _ = direct
    path = tmp_path / "session.log"
    with Console(host, log=path, timeout=5) as console:
        console.interrupt_autoboot()
        console.run("version")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith(f"# firmware_tools console log, port {host.port}, opened ")
    records = []
    for line in lines[1:]:
        offset, marker, text = line.split(maxsplit=2)
        records.append((float(offset), marker, json.loads(text)))
    offsets = [r[0] for r in records]
    assert offsets == sorted(offsets)
    assert records[0][1:] == ("!", "opened") and records[-1][1:] == ("!", "closed")
    sent = [text for _, marker, text in records if marker == ">"]
    assert sent == [" ", "version\r"]
    received = "".join(text for _, marker, text in records if marker == "<")
    assert "Hit any key to stop autoboot:  2 " in received
    assert "version\r\nU-Boot 2024.01" in received  # the log keeps the echo
    assert ("!", "matched '=> '") in [r[1:] for r in records]


def test_decoding_survives_bad_and_split_bytes(tmp_path: Path) -> None:
    with PtyPair(tmp_path) as pair:
        host = serial.Serial(pair.a, timeout=0.05)
        device = serial.Serial(pair.b, timeout=0.05)
        try:
            console = Console(host, echo=False, timeout=3)
            device.write(b"caf\xc3")  # "café" split inside its last character
            device.flush()
            time.sleep(0.1)
            device.write(b"\xa9 \xff=> ")
            found = console.expect("=> ")
            assert found.before == "café \ufffd"
            seen: list[str] = []
            console.on_receive = seen.append
            device.write(b"more")
            console.expect("more")
            assert "".join(seen) == "more"
        finally:
            host.close()
            device.close()


def test_closed_console_refuses_use(direct: tuple[serial.Serial, FakeUBoot, str]) -> None:
    host, _, _ = direct
    console = Console(host)
    console.close()
    console.close()
    assert console.closed and host.is_open
    with pytest.raises(RuntimeError, match="closed"):
        console.sendline("version")
    with pytest.raises(RuntimeError, match="closed"), console:
        pass


# --- scripts ----------------------------------------------------------------------------------

PROCEDURE = r"""
# Stop autoboot, load an image with YMODEM, check its CRC, boot (docs/serial-console.md).
timeout 10
fail-on "Unknown command"
fail-on /## Binary \(ymodem\) download aborted/
expect "Hit any key to stop autoboot"
send " "
expect "=> "
crc32 image.bin                       # host side: @{crc32}, @{size}, @{size_hex}
sendline "loady ${loadaddr} 115200"   # ${...} is U-Boot's; @{...} is the script's
expect /download to (?P<addr>0x[0-9A-F]+) at/    # "at": see "Partial matches" in the doc
ymodem-send image.bin
expect /## Total Size\s+= (0x[0-9a-f]+) = (\d+) Bytes/ 60
check "@{2}" == "@{size}"
expect "=> "
sendline "crc32 ${loadaddr} ${filesize}"
expect /==> ([0-9a-f]{8})/
check "@{1}" == "@{crc32}"
expect "=> "
sendline "boot"
expect "Starting kernel"
"""


def test_uboot_procedure_with_ymodem(
    tmp_path: Path, uboot: tuple[serial.Serial, FakeUBoot, str]
) -> None:
    host, device, _ = uboot
    image = bytes((i * 31 + 7) % 256 for i in range(6000))
    (tmp_path / "image.bin").write_bytes(image)
    log = io.StringIO()
    with Console(host, log=log) as console:
        runner = ScriptRunner(
            console, directory=tmp_path, hooks={"ymodem-send": handover_hook(device)}
        )
        variables = runner.run(runner.parse(PROCEDURE, name="flash.txt"))
    assert device.booted
    assert bytes(device.memory[: len(image)]) == image
    assert variables["addr"] == "0x80000000"
    assert variables["crc32"] == f"{zlib.crc32(image):08x}"
    assert variables["size"] == "6000" and variables["size_hex"] == "1770"
    assert device.commands == ["loady 0x80000000 115200", "crc32 0x80000000 1770", "boot"]
    assert "flash.txt line 12: ymodem-send image.bin" in log.getvalue()


def test_script_step_failures_name_the_line(
    tmp_path: Path, direct: tuple[serial.Serial, FakeUBoot, str]
) -> None:
    host, _, _ = direct
    console = Console(host, timeout=5)
    runner = ScriptRunner(console, directory=tmp_path)
    runner.run('expect "Hit any key"\nsend " "\nexpect "=> "\n')
    with pytest.raises(ScriptError) as info:
        runner.run(
            'fail-on "Unknown command"\nsendline "frobnicate"\nexpect "=> "\n',
        )
    assert info.value.line == 3
    assert "Unknown command" in info.value.reason
    assert "fail-on at line 1" in str(info.value)
    with pytest.raises(ScriptError) as info:
        # The pattern ends with what follows the number: one ending in a repeat could match
        # "1" while "234" is still on its way (docs/serial-console.md).
        runner.run('sendline "echo 1234"\nexpect /(\\d+)\\r?\\n/\ncheck "@{1}" == "4321"\n')
    assert info.value.line == 3 and "'1234' == '4321' is false" in info.value.reason
    console.expect("=> ")
    with pytest.raises(ScriptError) as info:
        runner.run('sendline "echo @{missing}"\n')
    assert info.value.line == 1 and "@{missing} is not set" in info.value.reason
    with pytest.raises(ScriptError) as info:
        runner.run('timeout 0.3\nexpect "never"\n')
    assert info.value.line == 2
    assert isinstance(info.value.__cause__, ExpectTimeoutError)
    with pytest.raises(ScriptError, match="cannot read"):
        runner.run("crc32 missing.bin\n")
    # Variables: set, substitution into a regex escapes the value.
    variables = runner.run(
        'set word "a.b"\nsendline "echo a.b axb"\nexpect /(@{word}) /\ncheck "@{1}" != "axb"\n',
        variables={"given": "1"},
    )
    assert variables["1"] == "a.b" and variables["given"] == "1"


def test_script_log_sleep_and_break(
    tmp_path: Path, direct: tuple[serial.Serial, FakeUBoot, str]
) -> None:
    host, _, _ = direct
    log = io.StringIO()
    console = Console(host, log=log, timeout=5)
    runner = ScriptRunner(console, directory=tmp_path)
    start = time.monotonic()
    runner.run('note "field run 42"\nsleep 0.2\nbreak 0.25\nexpect "Hit any key"\n')
    assert time.monotonic() - start >= 0.2
    with pytest.raises(ScriptError):
        runner.run(
            'check "a" == "b"\n',
        )
    text = log.getvalue()
    assert '! "field run 42"' in text
    assert '! "break 0.25 s"' in text
    assert '! "<script> line 3: break 0.25"' in text
    assert "failed: <script> line 1: check failed" in text


def test_any_serial_base_works() -> None:
    port = serial.serial_for_url("loop://", timeout=1)  # pyserial's loopback: no echo handling
    console = Console(port, echo=False, timeout=2)
    console.sendline("hello")
    assert console.expect("hello\r").before == ""
    console.send_break(0.01)
    port.close()
    with pytest.raises(PortError, match="read failed"):
        console.expect("x", timeout=0.1)


def test_parse_errors_name_the_line() -> None:
    cases = {
        'expect "=> "\nsendlin "x"': (2, "unknown command 'sendlin'"),
        'send "open': (1, "not closed"),
        "expect /a(b/": (1, "bad regex"),
        "expect /ab": (1, "not closed"),
        "expect /ab/q": (1, "unknown regex flag"),
        'send "\\q"': (1, "unknown escape"),
        'send "\\x4"': (1, "two hex digits"),
        "\n\nsend": (3, "usage: send TEXT"),
        'timeout "soon"': (1, "must be a number"),
        "timeout -1": (1, "more than 0"),
        'check "a" = "b"': (1, "operator"),
        "send /x/": (1, "not a /regex/"),
        "ymodem-send image.bin": (1, "unknown command 'ymodem-send'"),
        '"expect" "x"': (1, "starts with a command"),
        'set 1x "v"': (1, "bad variable name"),
        'expect ""': (1, "empty"),
    }
    for text, (line, message) in cases.items():
        with pytest.raises(ScriptError) as info:
            parse_script(text, name="s.txt")
        assert info.value.line == line, text
        assert message in info.value.reason, (text, info.value.reason)
        assert str(info.value).startswith(f"s.txt line {line}: ")


def test_parse_tokens() -> None:
    script = parse_script(
        "# a comment\n"
        'send "\\x03\\r\\n\\t\\e\\"\\\\"  # trailing comment\n'
        "expect /## Total Size\\s+= (0x[0-9a-f]+)/i 30\n"
        "expect /a\\/b/\n"
        "ymodem-send image.bin\n",
        hooks=["ymodem-send"],
    )
    assert [s.line for s in script.steps] == [2, 3, 4, 5]
    assert script.steps[0].args == (Text('\x03\r\n\t\x1b"\\'),)
    assert script.steps[1].args == (
        Regex(r"## Total Size\s+= (0x[0-9a-f]+)", "i"),
        Text("30", False),
    )
    assert script.steps[2].args == (Regex("a/b"),)
    assert script.steps[3].command == "ymodem-send"
    assert script.steps[3].args == (Text("image.bin", quoted=False),)


def test_hook_registry() -> None:
    assert set(BUILTIN_HOOKS) == {"crc32"}
    runner = ScriptRunner.__new__(ScriptRunner)
    runner._hooks = dict(BUILTIN_HOOKS)
    runner.register("ymodem-send", print)
    assert "ymodem-send" in runner.hooks
    with pytest.raises(ValueError, match="built-in"):
        runner.register("expect", print)
    with pytest.raises(ValueError, match="lowercase"):
        runner.register("Bad Name", print)
    with pytest.raises(TypeError, match="callable"):
        runner.register("x", "not callable")  # type: ignore[arg-type]
