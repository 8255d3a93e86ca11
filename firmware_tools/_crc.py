"""Check values of XMODEM/YMODEM blocks: CRC-16/XMODEM and the 8-bit arithmetic checksum.

CRC-16/XMODEM is CRC-16-CCITT with polynomial 0x1021, initial value 0, no reflection and no
final XOR ("XMODEM/YMODEM PROTOCOL REFERENCE", Forsberg, 1988, 8.1 "CRC Calculation": the
polynomial X^16 + X^12 + X^5 + 1; U-Boot computes the same with ``crc16_ccitt(0, ...)`` in
``common/xyzModem.c``). Its check value over ``b"123456789"`` is 0x31C3.

``binascii.crc_hqx`` is exactly this CRC (the BinHex 4 CRC: same polynomial, not reflected,
the initial value is the caller's), implemented in C: a 5 MB transfer spends milliseconds
here rather than seconds in a Python table loop. tests/test_xmodem.py checks it against a
bit-by-bit reference.
"""

from __future__ import annotations

import binascii

__all__ = ["checksum8", "crc16_xmodem"]


def crc16_xmodem(data: bytes, crc: int = 0) -> int:
    """CRC-16/XMODEM of ``data`` (continue a running CRC with ``crc``).

    Example: ``crc16_xmodem(b"123456789") == 0x31C3``.
    """
    return binascii.crc_hqx(data, crc)


def checksum8(data: bytes) -> int:
    """The original XMODEM check: the sum of the data bytes modulo 256 (Forsberg, 1988,
    7.2 Figure 9: "the sum of the data bytes only.  Toss any carry")."""
    return sum(data) & 0xFF
