"""Exponential levels: g_k = x0 * q^(k-1) with q = (1/x0)^(1/(K-1)), so g_K = 1.

In logs: ln g_k = ((K - k) / (K - 1)) * ln x0. With K = 1 the only level is x0.
"""

from __future__ import annotations

import numpy as np

from onnxq.quant.codebooks.base import Codebook, magnitude_count


class Exponential(Codebook):
    def log_coefficients(self, bits: int) -> tuple[np.ndarray, np.ndarray]:
        m = magnitude_count(bits)
        k = np.arange(1, m + 1, dtype=np.float64)
        a = (m - k) / (m - 1) if m > 1 else np.ones(1)
        return a, np.zeros(m)


CODEBOOK = Exponential(
    "exponential", "geometric levels from x0 up to the group's largest weight (the paper's)"
)
