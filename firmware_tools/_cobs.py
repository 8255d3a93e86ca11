"""Consistent Overhead Byte Stuffing (Cheshire and Baker, IEEE/ACM ToN 7(2), 1999).

COBS rewrites a block so that it contains no 0x00 byte, at a cost of one byte per 254 bytes
(plus one), so 0x00 can delimit frames on a byte stream. The block is cut at every zero; each
piece becomes a code byte (its length plus one) and the piece's bytes, the zero itself being
implied. A piece longer than 254 bytes is split into groups of 254 under the code 0xFF, which
implies no zero. Both functions work on whole blocks; the link's stream decoder finds the
0x00 delimiters and bounds the block size before calling :func:`decode`.
"""

from __future__ import annotations

__all__ = ["decode", "encode", "max_encoded_size"]

_FULL = 0xFF  # a group of 254 data bytes with no zero after it


def max_encoded_size(size: int) -> int:
    """The longest COBS encoding of a ``size``-byte block: one code byte per started group
    of 254 data bytes, and one more (a block is at least one group)."""
    return size + size // 254 + 1


def encode(data: bytes | bytearray | memoryview) -> bytes:
    """``data`` with every 0x00 removed (COBS); the result never contains 0x00."""
    out = bytearray()
    # bytes.split does the byte scanning in C; the loop runs once per zero or 254 bytes.
    pieces = bytes(data).split(b"\x00")
    last = len(pieces) - 1
    for i, piece in enumerate(pieces):
        start = 0
        while len(piece) - start >= 254:
            out.append(_FULL)
            out += piece[start : start + 254]
            start += 254
        if i == last and start and start == len(piece):
            break  # the block ends with a full group: nothing is implied after it
        out.append(len(piece) - start + 1)
        out += piece[start:]
    return bytes(out)


def decode(block: bytes | bytearray | memoryview) -> bytes | None:
    """The data ``block`` encodes, or None when it is not a valid COBS block (a 0x00 inside,
    or a code byte pointing past the end): line noise, never an exception."""
    view = bytes(block)
    if b"\x00" in view:
        return None
    size = len(view)
    out = bytearray()
    i = 0
    while i < size:
        code = view[i]
        end = i + code
        if code == 0 or end > size:
            return None
        out += view[i + 1 : end]
        i = end
        # A group shorter than 254 bytes ends at a zero, except the last one of the block.
        if code != _FULL and i < size:
            out.append(0)
    return bytes(out)
