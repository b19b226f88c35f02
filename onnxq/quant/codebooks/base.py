"""What every codebook shares: the code layout and log-linear magnitudes.

A codebook of b bits has M positive magnitudes g_1 < ... < g_M (M = 2^(b-1) - 1,
or 1 for b = 1) and, for b >= 2, a zero level. Codes are sorted by level:
[-g_M, ..., -g_1, 0, g_1, ..., g_M], so 2M + 1 of the 2^b codes are used and
the last code is spare (it decodes to 0). One bit is the sign alone: [-g_1, g_1].

Two kinds of codebook share that layout. A log-linear family writes its
magnitudes as ln g_k = a_k * ln(x0) + c_k, which lets the graph rebuild
per-group levels from two numbers per group, x0 being searched per group. A
fitted codebook (fitted = True) instead fits one normalized table t_1 < ... < t_M
to the whole tensor and a scale per group (fit). A codebook with candidates is a
choice among others, made per tensor by the quantizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np


def magnitude_count(bits: int) -> int:
    """How many positive magnitudes a b-bit codebook has."""
    return 1 if bits == 1 else (1 << (bits - 1)) - 1


def code_layout(bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per code: its sign (-1, 0 or 1) and its magnitude index (0-based, -1 for none)."""
    m = magnitude_count(bits)
    size = 1 << bits
    sign = np.zeros(size, dtype=np.int8)
    index = np.full(size, -1, dtype=np.int64)
    if bits == 1:
        sign[:] = [-1, 1]
        index[:] = [0, 0]
        return sign, index
    for code in range(2 * m + 1):
        j = code - m
        sign[code] = np.sign(j)
        index[code] = abs(j) - 1 if j else -1
    return sign, index


def zero_code(bits: int) -> int:
    """The code of level 0 (for 1 bit, which has no zero, the code of +g_1)."""
    return 1 if bits == 1 else magnitude_count(bits)


@dataclass(frozen=True)
class Codebook:
    """A family of level sets, indexed by the first level x0 in (0, 1], or fitted to the data.

    Log-linear subclasses give the coefficients of their magnitudes; fitted ones
    set fitted and implement fit.
    """

    name: str
    summary: str
    fitted: ClassVar[bool] = False  # levels fitted per tensor (fit), not searched over x0
    evenly_spaced: ClassVar[bool] = False  # levels k * step, which integer formats can store

    def log_coefficients(self, bits: int) -> tuple[np.ndarray, np.ndarray]:
        """(a, c) with ln g_k = a_k * ln(x0) + c_k, each of length magnitude_count(bits)."""
        raise NotImplementedError

    def magnitudes(self, log_x0: np.ndarray, bits: int) -> np.ndarray:
        """Normalized magnitudes, shape (groups, M), for ln(x0) of shape (groups,)."""
        a, c = self.log_coefficients(bits)
        return np.exp(np.asarray(log_x0, dtype=np.float64)[:, None] * a[None, :] + c[None, :])

    def fit(self, magnitudes: np.ndarray, bits: int, scale: str) -> tuple[np.ndarray, np.ndarray]:
        """For a fitted codebook: the table t (M,) in (0, 1] and the scales (groups,) for |w| (groups, n).

        Group g's magnitude levels are then s_g * t; a scale of 0 marks an all-zero group.
        """
        raise NotImplementedError(f"the {self.name} codebook is searched over x0, not fitted")

    def candidates(self) -> tuple[Codebook, ...]:
        """The codebooks this one chooses among, per tensor; () for a codebook of its own."""
        return ()
