"""Compact binary codec for a list of token IDs, with a checksum.

Layout (all little-endian), 12-byte header then payload:

    offset  size  field
    0       2     magic   b"TK"            -- rejects values that are not ours (e.g. the old JSON format)
    2       1     version 1                -- lets the format change without misreading old entries
    3       1     width   2 or 4           -- bytes per ID: uint16 when every ID < 65536, else uint32
    4       4     count   uint32           -- number of IDs; payload length must equal count * width
    8       4     crc32   uint32           -- zlib.crc32 of header bytes 0..7 plus the payload, so a flipped
                                              bit in the count or width is caught as well as in the IDs
    12      n     payload packed IDs

Why this shape: most served vocabularies (SmolLM2: 49,152) fit uint16, halving memory and Redis bytes
against uint32; the width is chosen per entry, so a 100k-vocab tokenizer still round-trips. numpy packs
and unpacks a few thousand IDs in microseconds, far below tokenization cost. Truncation, extension, a bad
magic or version, and any payload corruption raise ``CorruptEntryError``; the caller treats it as a miss.

``compact_ids`` is the in-process form used by the L0 tier: an ``array.array`` of the same width, no
header and no checksum (it never crosses a wire or leaves process memory), turned back into a fresh
list with ``.tolist()`` (one C loop) on every hit.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from collections.abc import Sequence

import numpy as np

from cache.exceptions import CorruptEntryError

__all__ = ["encode_tokens", "decode_tokens", "decode_compact", "compact_ids", "HEADER_SIZE", "MAGIC", "VERSION"]

MAGIC = b"TK"
VERSION = 1
_PREFIX = struct.Struct("<2sBBI")  # magic, version, width, count (bytes 0..7)
_CRC = struct.Struct("<I")
HEADER_SIZE = _PREFIX.size + _CRC.size  # 12
_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
# array typecodes per width: "H" is 2 bytes everywhere; "I" is 4 on every platform CPython supports
# for this project, "L" is the fallback where it is not.
_ARRAY_2 = "H"
_ARRAY_4 = "I" if array("I").itemsize == 4 else "L"


def encode_tokens(ids: Sequence[int]) -> bytes:
    """Pack token IDs into the format above. IDs must be in 0..2**32-1."""
    arr = np.asarray(ids, dtype=np.int64) if len(ids) else np.zeros(0, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= 1 << 32):
        raise ValueError("token ids must be in [0, 2**32)")
    width = 2 if (arr.size == 0 or arr.max() < 1 << 16) else 4
    payload = arr.astype(_DTYPES[width]).tobytes()
    prefix = _PREFIX.pack(MAGIC, VERSION, width, arr.size)
    crc = zlib.crc32(payload, zlib.crc32(prefix))
    return prefix + _CRC.pack(crc) + payload


def decode_tokens(data: bytes) -> list[int]:
    """Unpack and verify; raises ``CorruptEntryError`` on any mismatch."""
    width, count = _verify(data)
    return np.frombuffer(data, dtype=_DTYPES[width], offset=HEADER_SIZE, count=count).tolist()


def decode_compact(data: bytes) -> array:
    """Verify exactly as ``decode_tokens`` does, but return the IDs as an ``array.array`` (the L0 form):
    a copy of the payload, no int objects made; ``.tolist()`` gives the list."""
    width, _ = _verify(data)
    arr = array(_ARRAY_2 if width == 2 else _ARRAY_4)
    arr.frombytes(memoryview(data)[HEADER_SIZE:])
    if sys.byteorder == "big":
        arr.byteswap()  # the payload is little-endian
    return arr


def _verify(data: bytes) -> tuple[int, int]:
    """(width, count) of a well-formed, checksum-clean entry; raises ``CorruptEntryError`` otherwise."""
    if len(data) < HEADER_SIZE:
        raise CorruptEntryError(f"entry too short: {len(data)} bytes")
    magic, version, width, count = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise CorruptEntryError(f"bad magic {magic!r}")
    if version != VERSION:
        raise CorruptEntryError(f"unknown codec version {version}")
    if width not in _DTYPES:
        raise CorruptEntryError(f"bad id width {width}")
    if len(data) != HEADER_SIZE + count * width:
        raise CorruptEntryError(f"length {len(data)} does not match count {count} x width {width}")
    (crc,) = _CRC.unpack_from(data, _PREFIX.size)
    view = memoryview(data)
    if zlib.crc32(view[HEADER_SIZE:], zlib.crc32(view[: _PREFIX.size])) != crc:
        raise CorruptEntryError("checksum mismatch")
    return width, count


def compact_ids(ids: Sequence[int]) -> array:
    """Token IDs as an ``array.array`` of the narrowest width (uint16 when every ID < 65536, else
    uint32); ``sys.getsizeof`` of the result is its real size. IDs must be in 0..2**32-1."""
    if not ids:
        return array(_ARRAY_2)
    return array(_ARRAY_2 if max(ids) < 1 << 16 else _ARRAY_4, ids)
