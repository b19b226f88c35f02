"""Exact b-bit packing as bit planes: codes in [0, 2^b) -> ceil(n/8) * b bytes, and back.

Layout (documented in docs/FORMATS.md): the codes are padded with zeros to a
multiple of 8. Plane j (j = 0 .. b-1) holds bit b-1-j of every code, the most
significant first, eight codes per byte, the first code in the byte's most
significant bit (numpy.packbits order). The planes follow each other in one
uint8 blob, so the blob has exactly n8 * b bytes for n8 = ceil(n/8), and one
decoder unpacks every width the same way.
"""

from __future__ import annotations

import numpy as np


def _check(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")


def packed_size(count: int, bits: int) -> int:
    """Bytes that pack_bits writes for count codes of b bits."""
    return -(-count // 8) * bits


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack a 1-D array of codes in [0, 2^bits) into a uint8 blob."""
    return pack_rows(np.asarray(codes).reshape(1, -1), bits).ravel()


def pack_rows(codes: np.ndarray, bits: int) -> np.ndarray:
    """pack_bits of every row of a 2-D array of codes: shape (rows, ceil(n/8) * bits).

    Each row is a blob of its own, so a Gather of rows gathers whole blobs.
    """
    _check(bits)
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {1 << bits})")
    rows, n = codes.shape
    padded = np.zeros((rows, -(-n // 8) * 8), dtype=np.uint8)
    padded[:, :n] = codes
    planes = [np.packbits((padded >> (bits - 1 - j)) & 1, axis=1) for j in range(bits)]
    return np.concatenate(planes, axis=1)
