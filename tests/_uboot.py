"""A receiver with the habits of U-Boot's ``loadx`` / ``loady``, for tests on a pty.

Written from U-Boot's ``common/xyzModem.c`` and ``cmd/load.c`` (v2024/2025 master), not
copied: what matters to a sender is reproduced, with the same timings.

* ``xyzModem_stream_open``: sends one 'C' and, for YMODEM, waits for block 0 (asking again
  with 'C' after each timeout; after 10 timeouts it falls back to checksum and asks with NAK).
  From block 0 it reads only the length (``parse_num``, decimal or 0x hex, up to a space).
  It does not send the second 'C' the YMODEM spec asks for after block 0.
* ``xyzModem_get_hdr``: the ACK of the previous block is sent only when the next header is
  awaited (``tx_ack``); bytes before SOH/STX are ignored; 3 CANs cancel; EOT counts only as
  the first byte. Each byte gets 2 s (``xyzModem_CHAR_TIMEOUT``); on a timeout the line is
  drained until 2 s of silence, then 250 ms pass. A bad block number pair drains too; a bad
  CRC does not.
* ``xyzModem_stream_read``: a refused block is asked for again with 'C' (in CRC mode), not
  NAK; a repeated block is re-acknowledged at once; an EOT is answered ACK (in get_hdr), ACK
  again, then for YMODEM 'C', one more header is read (the end of batch, or whatever comes),
  and ACK. Only one file is taken. For XMODEM, or YMODEM without a length, a block whose last
  three bytes are 0x1A loses all its trailing 0x1A bytes; with a length, the data is cut there.
* ``cmd/load.c`` ``load_serial_ymodem``: the bytes read become ``filesize``.

    with UBootLoad(port_path, "y") as board:   # loady
        ymodem.send_files(host_port, [path])
    assert board.wait(10) and board.data == path.read_bytes()
"""

from __future__ import annotations

import binascii
import threading
import time
from types import TracebackType
from typing import Literal

import serial

SOH, STX, EOT, ACK, BSP, NAK, CAN, SUB = 0x01, 0x02, 0x04, 0x06, 0x08, 0x15, 0x18, 0x1A
CHAR_TIMEOUT = 2.0
MAX_RETRIES = 20
MAX_RETRIES_WITH_CRC = 10
CAN_COUNT = 3


class _Timeout(Exception):
    pass


class UBootLoad:
    """``loadx`` (mode "x") or ``loady`` (mode "y") on the pty ``path``, in a thread.

    After ``wait()``: ``data`` (what would be in memory, ``filesize`` bytes), ``error`` (None,
    or U-Boot's word for the failure: "Timed out", "Cancelled", ...), ``sent`` (every byte
    U-Boot wrote, for checks of its habits).
    """

    def __init__(self, path: str, mode: Literal["x", "y"]) -> None:
        self.mode = mode
        self.port = serial.Serial(path, timeout=0.05)
        self.data = bytearray()
        self.error: str | None = None
        self.sent = bytearray()
        self.crc_mode = True
        self.tx_ack = False
        self.file_length = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="u-boot load", daemon=True)
        self._thread.start()

    # --- the console primitives (CYGACC_COMM_IF_*) -------------------------------------------

    def _putc(self, byte: int) -> None:
        self.sent.append(byte)
        self.port.write(bytes([byte]))

    def _getc(self, timeout: float = CHAR_TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            data = self.port.read(1)
            if data:
                return data[0]
            if time.monotonic() > deadline:
                break
        raise _Timeout

    def _flush(self) -> None:
        """xyzModem_flush: read until a whole character timeout passes in silence."""
        while True:
            try:
                self._getc()
            except _Timeout:
                return

    # --- xyzModem_get_hdr ---------------------------------------------------------------------

    def _get_hdr(self) -> tuple[str, int, bytes]:
        if self.tx_ack:
            self._putc(ACK)
            self.tx_ack = False
        cans = 0
        chars = 0
        try:
            while True:
                c = self._getc()
                chars += 1
                if c in (SOH, STX):
                    break
                if c == CAN:
                    cans += 1
                    if cans == CAN_COUNT:
                        return "cancel", 0, b""
                elif c == EOT and chars == 1:
                    self._putc(ACK)
                    return "eof", 0, b""
        except _Timeout:
            self._flush()
            time.sleep(0.25)
            return "timeout", 0, b""
        try:
            blk = self._getc()
            cblk = self._getc()
            size = 128 if c == SOH else 1024
            payload = bytes(self._getc() for _ in range(size))
            crc1 = self._getc()
            crc2 = self._getc() if self.crc_mode else 0
        except _Timeout:
            return "timeout", 0, b""
        if blk ^ cblk != 0xFF:
            self._flush()
            return "frame", 0, b""
        if self.crc_mode:
            if binascii.crc_hqx(payload, 0) != (crc1 << 8) | crc2:
                return "cksum", 0, b""
        elif sum(payload) & 0xFF != crc1:
            return "cksum", 0, b""
        return "ok", blk, payload

    # --- xyzModem_stream_open / stream_read --------------------------------------------------

    @staticmethod
    def _parse_num(text: bytes) -> int:
        text = text.lstrip(b" ")
        radix = 16 if text[:2].lower() == b"0x" else 10
        digits = text[2:] if radix == 16 else text
        value = 0
        for ch in digits:
            if ch in (0x20, 0):
                break
            value = value * radix + int(chr(ch), radix)
        return value

    def _open(self) -> str:
        self._putc(ord("C"))
        if self.mode == "x":
            return "ok"
        crc_retries = MAX_RETRIES_WITH_CRC
        for _ in range(MAX_RETRIES):
            stat, blk, payload = self._get_hdr()
            if stat == "ok":
                if blk == 0:
                    rest = payload[payload.index(0) + 1 :]
                    self.file_length = self._parse_num(rest)
                    self.tx_ack = True
                return "ok"
            if stat == "timeout":
                crc_retries -= 1
                if crc_retries <= 0:
                    self.crc_mode = False
                time.sleep(0.5)
                self._putc(ord("C") if self.crc_mode else NAK)
            if stat == "cancel":
                return "Cancelled"
        return "Timed out"

    def _read_all(self) -> str | None:
        next_blk = 1
        read_length = 0
        while True:
            stat = "cancel"
            for _ in range(MAX_RETRIES):
                stat, blk, payload = self._get_hdr()
                if stat == "ok":
                    if blk == next_blk:
                        self.tx_ack = True
                        next_blk = (next_blk + 1) & 0xFF
                        block = bytearray(payload)
                        if (self.mode == "x" or self.file_length == 0) and block[-3:] == bytes(
                            [SUB] * 3
                        ):
                            while block and block[-1] == SUB:
                                block.pop()
                        if self.mode != "x" and self.file_length:
                            read_length += len(block)
                            if read_length > self.file_length:
                                del block[len(block) - (read_length - self.file_length) :]
                        self.data += block
                        break
                    if blk == (next_blk - 1) & 0xFF:
                        self._putc(ACK)
                        continue
                    stat = "sequence"
                if stat == "cancel":
                    return "Cancelled"
                if stat == "eof":
                    self._putc(ACK)
                    if self.mode == "y":
                        self._putc(ord("C") if self.crc_mode else NAK)
                        self._get_hdr()
                        self._putc(ACK)
                    return None
                self._putc(ord("C") if self.crc_mode else NAK)
            else:
                return {"timeout": "Timed out", "sequence": "Block sequence error"}.get(
                    stat, "CRC/checksum error"
                )

    def _run(self) -> None:
        try:
            error = self._open()
            self.error = None if error == "ok" else error
            if self.error is None:
                self.error = self._read_all()
        except _Timeout:
            self.error = "stopped"
        except serial.SerialException as exc:
            self.error = f"port: {exc}"

    def wait(self, timeout: float) -> bool:
        """True once the command has returned (to the U-Boot prompt)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.port.close()

    def __enter__(self) -> UBootLoad:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
