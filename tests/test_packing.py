"""pack_bits / unpack_bits: exact for every width 1..8 and every length, ceil(n/8)*b bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxq.packing import field_widths, pack_bits, packed_size, unpack_bits

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


def test_documented_layout_for_5_bits():
    # README: for b = 5 the first n/8*4 bytes hold the high 4 bits two per byte, first
    # value in the high nibble, then n/8 bytes hold the low bits eight per byte.
    codes = np.array([0b10110, 0b00011, 0b11111, 0b00000, 0b01001, 0b10000, 0b00001, 0b11110])
    blob = pack_bits(codes, 5)
    assert blob.tolist() == [0b1011_0001, 0b1111_0000, 0b0100_1000, 0b0000_1111, 0b01_1_0_1_0_1_0]


def test_documented_layout_for_1_bit_pads_with_zeros():
    blob = pack_bits(np.array([1, 0, 1]), 1)
    assert blob.tolist() == [0b1010_0000]


def test_field_widths_are_the_binary_expansion():
    for bits in BITS:
        widths = field_widths(bits)
        assert sum(widths) == bits
        assert widths == sorted(widths, reverse=True)
        assert all(w in (1, 2, 4, 8) for w in widths)
        assert len(set(widths)) == len(widths)


@pytest.mark.parametrize("bits", [0, 9, -1])
def test_invalid_width_is_refused(bits):
    with pytest.raises(ValueError, match="bits"):
        field_widths(bits)


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
