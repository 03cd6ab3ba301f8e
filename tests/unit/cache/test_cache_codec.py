import pytest

import sys

from cache.codec import HEADER_SIZE, compact_ids, decode_compact, decode_tokens, encode_tokens
from cache.exceptions import CorruptEntryError


@pytest.mark.parametrize(
    "ids, width",
    [([], 2), ([0, 1, 2, 65535], 2), ([0, 65536, 100_276, 2**32 - 1], 4), (list(range(5000)), 2)],
)
def test_round_trip_and_width(ids, width):
    data = encode_tokens(ids)
    assert data[3] == width
    assert len(data) == HEADER_SIZE + width * len(ids)
    assert decode_tokens(data) == ids


def test_rejects_out_of_range_ids():
    with pytest.raises(ValueError):
        encode_tokens([-1])
    with pytest.raises(ValueError):
        encode_tokens([2**32])


# decode_compact (shard and Redis hits into L0) must detect everything decode_tokens detects.
DECODERS = pytest.mark.parametrize("decode", [decode_tokens, decode_compact], ids=["decode_tokens", "decode_compact"])


@DECODERS
@pytest.mark.parametrize("pos", [0, 2, 3, 4, 8, HEADER_SIZE, HEADER_SIZE + 5])
def test_flipped_byte_is_detected(decode, pos):
    data = bytearray(encode_tokens(list(range(100, 200))))
    data[pos] ^= 0x01
    with pytest.raises(CorruptEntryError):
        decode(bytes(data))
    with pytest.raises(CorruptEntryError):
        decode(bytes(data[:-1]))


@DECODERS
@pytest.mark.parametrize("cut", [0, 5, HEADER_SIZE, HEADER_SIZE + 1])
def test_truncated_or_extended_is_detected(decode, cut):
    data = encode_tokens(list(range(10)))
    with pytest.raises(CorruptEntryError):
        decode(data[:cut] if cut < len(data) - 1 else data[:-1])
    with pytest.raises(CorruptEntryError):
        decode(data + b"\x00")


def test_foreign_json_value_is_corrupt():
    with pytest.raises(CorruptEntryError):
        decode_tokens(b'{"token_ids": [1, 2, 3]}')


@pytest.mark.parametrize(
    "ids, width", [([], 2), ([0, 1, 65535], 2), ([0, 65536, 2**32 - 1], 4), (list(range(5000)), 2)]
)
def test_compact_ids_round_trip_width_and_real_size(ids, width):
    arr = compact_ids(ids)
    assert arr.itemsize == width and arr.tolist() == ids
    assert sys.getsizeof(arr) >= width * len(ids)  # what the L0 charges: header and buffer
    assert sys.getsizeof(arr) <= width * len(ids) + 128


@pytest.mark.parametrize("ids", [[], [0, 1, 65535], [0, 65536, 2**32 - 1], list(range(5000))])
def test_decode_compact_matches_decode_tokens(ids):
    arr = decode_compact(encode_tokens(ids))
    assert arr.tolist() == ids and arr.itemsize == encode_tokens(ids)[3]
