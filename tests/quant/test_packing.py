"""pack_bits / unpack_bits: exact for every width 1..8 and every length, ceil(n/8)*b bytes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import unpack_bits
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxq.quant.packing import pack_bits, packed_size

BITS = range(1, 9)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("count", range(71))
def test_round_trip_every_width_and_length(bits, count):
    rng = np.random.default_rng(1000 * bits + count)
    codes = rng.integers(0, 1 << bits, count).astype(np.uint8)
    blob = pack_bits(codes, bits)
    assert blob.dtype == np.uint8
    assert blob.size == packed_size(count, bits) == -(-count // 8) * bits
    np.testing.assert_array_equal(unpack_bits(blob, bits, count), codes)


@settings(max_examples=50, deadline=None)
@given(bits=st.integers(1, 8), data=st.data())
def test_round_trip_property(bits, data):
    codes = data.draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=70))
    blob = pack_bits(np.array(codes, dtype=np.int64), bits)
    assert blob.size == -(-len(codes) // 8) * bits
    got = unpack_bits(blob, bits, len(codes))
    assert got.dtype == np.uint8
    assert got.tolist() == codes


@pytest.mark.parametrize("bits", BITS)
def test_extreme_codes_survive(bits):
    top = (1 << bits) - 1
    codes = np.array([top, 0] * 9 + [top], dtype=np.uint8)  # 19 codes: a partial last byte group
    np.testing.assert_array_equal(unpack_bits(pack_bits(codes, bits), bits, codes.size), codes)


def test_documented_layout_for_3_bits():
    # docs/FORMATS.md: plane 0 holds every code's high bit, eight codes per byte, the first code
    # in the byte's high bit; then the middle bits; then the low bits.
    codes = np.array([0b101, 0b011, 0b111, 0b000, 0b100, 0b010, 0b001, 0b110, 0b111])
    blob = pack_bits(codes, 3)
    assert blob.tolist() == [
        0b1010_1001, 0b1000_0000,  # high bits of codes 0-7, then of code 8 (padded)
        0b0110_0101, 0b1000_0000,  # middle bits
        0b1110_0010, 0b1000_0000,  # low bits
    ]  # fmt: skip


def test_documented_layout_for_1_bit_pads_with_zeros():
    blob = pack_bits(np.array([1, 0, 1]), 1)
    assert blob.tolist() == [0b1010_0000]


@pytest.mark.parametrize("bits", [0, 9, -1])
def test_invalid_width_is_refused(bits):
    with pytest.raises(ValueError, match="bits"):
        pack_bits(np.zeros(3, np.uint8), bits)


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_codes_out_of_range_are_refused(bits):
    with pytest.raises(ValueError, match="codes must lie"):
        pack_bits(np.array([0, 1 << bits]), bits)
    with pytest.raises(ValueError, match="codes must lie"):
        pack_bits(np.array([-1, 0]), bits)


def test_empty_input_packs_to_nothing():
    for bits in BITS:
        blob = pack_bits(np.zeros(0, np.uint8), bits)
        assert blob.size == 0
        assert unpack_bits(blob, bits, 0).size == 0
