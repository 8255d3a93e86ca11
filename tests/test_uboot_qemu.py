"""Against a real U-Boot: Debian's u-boot-qemu (2023.01, the qemu_arm64 build) running in
qemu-system-aarch64, its serial console on a loopback TCP socket reached through pyserial's
``socket://`` URL. The field procedure the issue names, scripted with firmware_tools.console:
stop autoboot, ``loady`` / ``loadx``, send the image with our sender, check U-Boot's
``filesize`` and ``crc32`` against the file.

The board is booted once for the module (about a second); every transfer is checked by
U-Boot's own CRC of the bytes in its memory, not by anything of ours.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import _broker
import pytest

from firmware_tools import xmodem, ymodem
from firmware_tools.console import Console

UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
# Memory of the "virt" board starts at 0x40000000; U-Boot relocates itself to the top.
LOAD_ADDRESS = 0x40200000


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    qemu = _broker.require_program(
        "qemu-system-aarch64",
        packages=("qemu-system-arm", "u-boot-qemu"),
        purpose="a real U-Boot for the loady/loadx tests",
    )
    if not UBOOT.is_file():
        _broker.require_program(
            str(UBOOT), packages=("u-boot-qemu",), purpose="U-Boot's qemu_arm64 build"
        )
    port_number = _broker.free_port()
    log = tmp_path_factory.mktemp("uboot") / "qemu.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                qemu,
                "-M",
                "virt",
                "-cpu",
                "cortex-a57",
                "-m",
                "512",
                "-display",
                "none",
                "-monitor",
                "none",
                "-nic",
                "none",
                "-bios",
                str(UBOOT),
                "-serial",
                f"tcp:127.0.0.1:{port_number},server=on,wait=on",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # Module-scoped, so not in _serial's per-test leftover check: ended by pid below.
    port = None
    try:
        deadline = time.monotonic() + 20
        while port is None:
            try:
                port = ymodem.open_port(f"socket://127.0.0.1:{port_number}")
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"qemu did not start: {log.read_text()}") from None
                time.sleep(0.05)
        console = Console(port, timeout=20)
        console.interrupt_autoboot(within=30)
        console.run("setenv bootdelay -1")
        yield console
    finally:
        if port is not None:
            port.close()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


CASES = {
    "One Byte.bin": b"\x42",
    "Exactly 1024.BIN": random.Random(3).randbytes(1024),
    "Ends In SUB.bin": random.Random(2).randbytes(1000) + b"\x1a" * 3,
    "Odd Size.bin": random.Random(1).randbytes(5000),
    "Image.itb": random.Random(4).randbytes(256 * 1024 + 17),
}


def _load(board: Console, command: str, send) -> tuple[int, str]:
    board.sendline(f"{command} {LOAD_ADDRESS:#x} 115200")
    # U-Boot prints its banner, then sends 'C': hand it the port at once, unread.
    board.expect(re.compile(r"Ready for binary|Ready for .* download"), timeout=10)
    board.clear()
    send()
    # Fixed widths: a pattern ending in a repeat would match a number still arriving.
    found = board.expect(re.compile(r"Total Size\s*= 0x([0-9a-f]{8})"), timeout=30)
    size = int(found.group(1), 16)
    board.expect(board.prompt, timeout=10)
    board.sendline(f"crc32 {LOAD_ADDRESS:#x} {size:#x}")
    # "... ==> 1234abcd": the prompt "=> " occurs inside "==> ", so wait for the value itself.
    crc = board.expect(re.compile(r"==> ([0-9a-f]{8})"), timeout=10)
    board.expect(re.compile(r"\n=> "), timeout=10)
    return size, crc.group(1)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_loady_takes_our_ymodem_whole(board: Console, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(CASES[name])
    sent: list = []
    size, crc = _load(board, "loady", lambda: sent.extend(ymodem.send_files(board.port, [path])))
    assert sent[0].acknowledged == len(CASES[name])
    # YMODEM carries the length: U-Boot keeps every byte, trailing 0x1A included.
    assert size == len(CASES[name])
    assert int(crc, 16) == zlib.crc32(CASES[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Exactly 1024.BIN", "Ends In SUB.bin", "Odd Size.bin"])
def test_loadx_takes_our_xmodem_and_strips_what_u_boot_strips(
    board: Console, tmp_path: Path, name: str
) -> None:
    data = CASES[name]

    def send() -> None:
        with (tmp_path / name).open("wb+") as stream:
            stream.write(data)
            stream.seek(0)
            xmodem.send(board.port, stream, block_size=1024)

    size, crc = _load(board, "loadx", send)
    # XMODEM has no length: U-Boot cuts the last block's trailing run of 0x1A bytes, the
    # padding and, for a file that really ends in 0x1A, those bytes too (NOTES.md).
    kept = data.rstrip(b"\x1a") if len(data) % 1024 else data
    assert size == len(kept)
    assert int(crc, 16) == zlib.crc32(kept)
