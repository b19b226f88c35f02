"""Exact b-bit packing: codes in [0, 2^b) -> ceil(n/8) * b bytes, and back.

Layout (documented in the README): the codes are padded with zeros to a
multiple of 8, then split into bit fields by the binary expansion of b, high
bits first (b=5 -> a 4-bit field and a 1-bit field). Each field is a stream
of bytes holding 8/w values of w bits, the first value in the most
significant bits. The streams follow each other in one uint8 blob, so the
blob has exactly n8 * b bytes for n8 = ceil(n/8).
"""

from __future__ import annotations

import numpy as np


def field_widths(bits: int) -> list[int]:
    """The bit fields of a b-bit code, high bits first: 5 -> [4, 1]."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    return [w for w in (8, 4, 2, 1) if bits & w]


def packed_size(count: int, bits: int) -> int:
    """Bytes that pack_bits writes for count codes of b bits."""
    return -(-count // 8) * bits


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack a 1-D array of codes in [0, 2^bits) into a uint8 blob."""
    codes = np.asarray(codes).ravel()
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {1 << bits})")
    padded = np.zeros(-(-codes.size // 8) * 8, dtype=np.uint8)
    padded[: codes.size] = codes
    streams = []
    shift = bits
    for width in field_widths(bits):
        shift -= width
        field = (padded >> shift) & ((1 << width) - 1)
        per_byte = 8 // width
        groups = field.reshape(-1, per_byte).astype(np.uint8)
        packed = np.zeros(groups.shape[0], dtype=np.uint8)
        for i in range(per_byte):
            packed |= groups[:, i] << (8 - width * (i + 1))
        streams.append(packed)
    return np.concatenate(streams) if streams else np.zeros(0, np.uint8)


def unpack_bits(blob: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Invert pack_bits: the first count codes, as uint8."""
    blob = np.asarray(blob, dtype=np.uint8).ravel()
    n8 = blob.size // bits
    codes = np.zeros(n8 * 8, dtype=np.uint8)
    start = 0
    shift = bits
    for width in field_widths(bits):
        shift -= width
        stream = blob[start : start + n8 * width]
        start += n8 * width
        per_byte = 8 // width
        shifts = np.array([8 - width * (i + 1) for i in range(per_byte)], dtype=np.uint8)
        field = (stream[:, None] >> shifts[None, :]) & ((1 << width) - 1)
        codes |= field.astype(np.uint8).ravel() << shift
    return codes[:count]
