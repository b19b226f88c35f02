"""w (groups, n) -> codes, per-group log-parameters, and the dequantized w_q.

Per group: u = |w| / max|w|; x0 = argmax corr(u, round(u)) (search.py); the
paper's rescale s (variance: sqrt(sum w^2 / sum y^2), or least squares:
sum w*y / sum y^2). The level of code k in group g is then

    w_q = sign_k * exp(slope_k * ln(x0_g) + offset_k + ln(s_g))

Each group's parameters share one uint16 on per-tensor grids: 6 bits of
ln(x0) and 10 of ln(s) (a linear codebook needs only ln(s*x0), which gets all
16). Scale code 0 marks an all-zero group. A fitted codebook (kmeans) has one
table t per tensor instead of x0: offset_k = ln t_k, stored with the tensor, and
ln(s) gets all 16 bits. Every weight then takes the code of
its nearest stored level; the graph rebuilds these levels with the same
float32 operations, so they match to within the 1-2 ulp by which onnxruntime's
Exp differs from numpy's. (tools/param_coding.py measures codings: at 5 bits,
6 + 10 bits cost no agreement against exact parameters; 4 or 5 bits of ln(x0) do.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from onnxq import search_exact
from onnxq.codebooks import Codebook, code_layout, magnitude_count, zero_code
from onnxq.search import SortedGroups, bin_index, level_magnitudes, maximize_correlation

SCALES = ("variance", "lsq")
# How x0 is chosen: the fast grid and golden-section search, or a branch and bound
# that proves the maximum to within 1e-6 (search.py, search_exact.py).
SEARCHES = {"fast": maximize_correlation, "exact": search_exact.maximize_correlation}
DEFAULT_SEARCH = "exact"  # the pipeline's (api.Config.search) and quantize's
X0_BITS = 6  # ln(x0): codes 0..63; each group takes the one that correlates best
SCALE_BITS = 10  # ln(s): codes 1..1023, and 0 for an all-zero group
SPLIT = float(1 << SCALE_BITS)  # params = x0_code * SPLIT + scale_code


@dataclass
class QuantizedTensor:
    """One weight, quantized: everything a storage format needs to rebuild it."""

    bits: int
    codebook: str
    codes: np.ndarray  # (groups, n) uint8
    params: np.ndarray  # (groups,) uint16: x0_code * 1024 + scale_code (P = 2), or step code (P = 1)
    ranges: np.ndarray  # (P, 2) float32: value = ranges[p, 0] + code * ranges[p, 1]
    slope: np.ndarray  # (2^bits,) float32, per code, multiplies ln x0 (unused when P = 1)
    offset: np.ndarray  # (2^bits,) float32
    sign: np.ndarray  # (2^bits,) float32: -1, 0 or 1
    dequantized: np.ndarray  # (groups, n) float32, what the graph rebuilds
    correlation: float  # corr(w, w_q) over the whole tensor
    sqnr_db: float  # 10 log10(sum w^2 / sum (w - w_q)^2)
    tensor_offset: bool = False  # offset is this tensor's own (a fitted table), not its codebook's
    rounding: str = "nearest"  # how the codes were chosen: nearest, gptq, or why GPTQ could not run

    @property
    def groups(self) -> int:
        return int(self.codes.shape[0])

    @property
    def codebook_bytes(self) -> int:
        """What the file stores besides the indices: parameters, ranges, and an own offset table."""
        own = self.offset.nbytes if self.tensor_offset else 0
        return int(self.params.nbytes + self.ranges.nbytes + own)

    def level_table(self) -> np.ndarray:
        """(groups, 2^bits) float32 levels, computed in the graph's order of operations."""
        return level_table(self.params, self.ranges, self.slope, self.offset, self.sign)


def split_params(params: np.ndarray, count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The float32 parameter codes and the live flag, in the graph's order of operations."""
    cf = params.astype(np.float32)
    if count == 1:
        return [cf], np.minimum(cf, np.float32(1.0))
    hi = np.floor(cf / np.float32(SPLIT))
    lo = cf - hi * np.float32(SPLIT)
    return [hi, lo], np.minimum(lo, np.float32(1.0))


def level_table(params, ranges, slope, offset, sign) -> np.ndarray:
    codes, live = split_params(params, ranges.shape[0])
    v = [c * ranges[i, 1] + ranges[i, 0] for i, c in enumerate(codes)]
    if len(v) == 2:
        exponent = slope[None, :] * v[0][:, None] + offset[None, :] + v[1][:, None]
    else:
        exponent = offset[None, :] + v[0][:, None]
    return (sign[None, :] * np.exp(exponent)) * live[:, None]


def _code_coefficients(codebook: Codebook, bits: int):
    a, c = codebook.log_coefficients(bits)
    sign, index = code_layout(bits)
    slope = np.where(index >= 0, a[np.maximum(index, 0)], 0.0).astype(np.float32)
    offset = np.where(index >= 0, c[np.maximum(index, 0)], 0.0).astype(np.float32)
    return slope, offset, sign.astype(np.float32)


def _encode(values: np.ndarray, live: np.ndarray, bits: int, zero_code: bool):
    """Codes of values on a uniform grid over the live groups' range, and that range.

    With zero_code, code 0 is kept for all-zero groups and the grid is 1..2^bits-1.
    """
    codes = np.zeros(values.shape, dtype=np.int64)
    first = 1 if zero_code else 0
    steps = (1 << bits) - 1 - first
    if not live.any():
        return codes, np.zeros(2, np.float32)
    lo, hi = float(values[live].min()), float(values[live].max())
    step = (hi - lo) / steps
    rng = np.array([lo - first * step, step], dtype=np.float32)
    if step > 0:
        codes[live] = np.clip(np.rint((values[live] - lo) / step) + first, first, steps + first)
    else:
        codes[live] = first
    return codes, rng


def _x0_grid(groups: SortedGroups, codebook: Codebook, bits: int, log_x0: np.ndarray, live: np.ndarray):
    """Codes of ln(x0) on a 64-point grid over the middle 96% of the groups' optima.

    Each group takes the grid point with the highest correlation, so an outlier
    group whose optimum lies off the grid still gets the best stored x0. Measured
    on MobileNetV2 at 5 bits: a grid over the full range lost 9 points of
    agreement (a few degenerate channels stretched it), and trying only the 5
    points nearest each optimum lost 1.7 (small groups have several peaks of
    nearly equal height).
    """
    codes = np.zeros(log_x0.shape, dtype=np.int64)
    if not live.any():
        return codes, np.zeros(2, np.float32)
    lo, hi = np.percentile(log_x0[live], [2.0, 98.0])
    steps = (1 << X0_BITS) - 1
    rng = np.array([lo, (hi - lo) / steps], dtype=np.float32)
    if rng[1] == 0:
        return codes, rng
    best = np.full(log_x0.shape, -np.inf)
    levels: np.ndarray | None = None
    edges: np.ndarray | None = None
    for code in range(steps + 1):
        previous, levels = levels, level_magnitudes(codebook, _decode(np.full(log_x0.shape, code), rng), bits)
        # Levels that only rise from one grid point to the next let the counts walk up.
        rising = previous is not None and bool(np.all(levels >= previous))
        score, edges = groups.correlation_edges(levels, start=edges if rising else None)
        better = score > best
        codes[better] = code
        best[better] = score[better]
    return codes, rng


def _decode(codes: np.ndarray, rng: np.ndarray) -> np.ndarray:
    return (codes.astype(np.float32) * rng[1] + rng[0]).astype(np.float64)


def nearest_codes(w: np.ndarray, table: np.ndarray, bits: int) -> np.ndarray:
    """The code of the nearest level of every weight; ties go away from zero."""
    m = magnitude_count(bits)
    mags = np.abs(table[:, -m - 1 : -1] if bits > 1 else table[:, -m:]).astype(np.float64)
    if bits > 1:
        mags = np.concatenate([np.zeros((mags.shape[0], 1)), mags], axis=1)
    top = mags[:, -1:].copy()
    top[top == 0] = 1.0
    index = bin_index(np.minimum(np.abs(w) / top, 1.0), 0.5 * (mags[:, 1:] + mags[:, :-1]) / top)
    if bits == 1:
        return np.where(w < 0, 0, 1).astype(np.uint8)
    signed = np.where(w < 0, -index, index)
    return (signed + zero_code(bits)).astype(np.uint8)


def quantize(
    w: np.ndarray,
    codebook: Codebook,
    bits: int,
    scale: str,
    error: Callable[[QuantizedTensor], float] | None = None,
    search: str = DEFAULT_SEARCH,
) -> QuantizedTensor:
    """Quantize each row of w (groups, n) to its own b-bit codebook.

    error ranks the candidates of a choosing codebook (auto); None means the
    weight-space squared error sum (w - w_q)^2. search names how x0 is found (SEARCHES).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}")
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {tuple(SEARCHES)}")
    w64 = np.asarray(w, dtype=np.float64)
    if not np.all(np.isfinite(w64)):
        raise ValueError("weights contain NaN or Inf")
    if codebook.candidates():
        return _least_error(w64, codebook.candidates(), bits, scale, error, search)
    if codebook.fitted:
        return _quantize_fitted(w64, codebook, bits, scale)
    peak = np.abs(w64).max(axis=1)
    live = peak > 0
    norm = np.where(live, peak, 1.0)
    u = np.abs(w64) / norm[:, None]
    groups = SortedGroups(u)
    log_x0, _ = SEARCHES[search](groups, codebook, bits)

    slope, offset, sign = _code_coefficients(codebook, bits)
    a, _c = codebook.log_coefficients(bits)
    two_params = bool(np.ptp(a) > 0)
    if two_params:
        x0_codes, x0_rng = _x0_grid(groups, codebook, bits, log_x0, live)
        log_x0 = _decode(x0_codes, x0_rng)

    # The paper's assignment in normalized units, then its rescale.
    mags = level_magnitudes(codebook, log_x0, bits)
    index = bin_index(u, 0.5 * (mags[:, 1:] + mags[:, :-1]))
    y = np.take_along_axis(mags, index, axis=1) * norm[:, None]  # magnitudes in w's units
    absw = np.abs(w64)
    syy = np.einsum("ij,ij->i", y, y)
    safe = np.where(syy > 0, syy, 1.0)
    if scale == "variance":
        s = np.sqrt(np.einsum("ij,ij->i", absw, absw) / safe)
    else:
        s = np.einsum("ij,ij->i", absw, y) / safe
    live &= s > 0
    log_s = np.log(np.where(live, s * norm, 1.0))  # s scales y/norm = the normalized levels

    if two_params:
        s_codes, s_rng = _encode(log_s, live, SCALE_BITS, zero_code=True)
        x0_codes[~live] = 0
        params = (x0_codes * int(SPLIT) + s_codes).astype(np.uint16)
        ranges = np.stack([x0_rng, s_rng])
    else:
        step_codes, step_rng = _encode(a[0] * log_x0 + log_s, live, 16, zero_code=True)
        params = step_codes.astype(np.uint16)
        ranges = step_rng[None, :]
    return _nearest(w64, codebook, bits, params, ranges, (slope, offset, sign), live)


def _nearest(w64, codebook, bits, params, ranges, tables, live, tensor_offset=False) -> QuantizedTensor:
    """Every weight at its nearest stored level (zero in dead groups)."""
    slope, offset, sign = tables
    table = level_table(params, ranges, slope, offset, sign)
    codes = nearest_codes(w64, table, bits)
    codes[~live] = zero_code(bits)
    q = QuantizedTensor(
        bits=bits,
        codebook=codebook.name,
        codes=codes,
        params=params,
        ranges=ranges.astype(np.float32),
        slope=slope,
        offset=offset,
        sign=sign,
        dequantized=np.zeros(0, np.float32),
        correlation=0.0,
        sqnr_db=0.0,
        tensor_offset=tensor_offset,
    )
    return with_codes(q, w64, codes)


def _quantize_fitted(w64: np.ndarray, codebook: Codebook, bits: int, scale: str) -> QuantizedTensor:
    """A fitted codebook: its per-tensor table as offset_k = ln t_k, and ln(s) on 16 bits."""
    t, s = codebook.fit(np.abs(w64), bits, scale)
    sign, index = code_layout(bits)
    log_t = np.log(t)
    offset = np.where(index >= 0, log_t[np.maximum(index, 0)], 0.0).astype(np.float32)
    live = s > 0
    codes, rng = _encode(np.log(np.where(live, s, 1.0)), live, 16, zero_code=True)
    tables = (np.zeros(sign.size, np.float32), offset, sign.astype(np.float32))
    return _nearest(w64, codebook, bits, codes.astype(np.uint16), rng[None, :], tables, live, True)


def _least_error(w64, candidates, bits, scale, error, search) -> QuantizedTensor:
    """The candidate codebook's quantization with the least error (the first one on a tie)."""
    best, best_error = None, np.inf
    for codebook in candidates:
        q = quantize(w64, codebook, bits, scale, search=search)
        e = error(q) if error is not None else float(np.sum((w64 - q.dequantized) ** 2))
        if best is None or e < best_error:
            best, best_error = q, e
    assert best is not None
    return best


def with_codes(q: QuantizedTensor, w: np.ndarray, codes: np.ndarray) -> QuantizedTensor:
    """q with other codes (same levels), its dequantized values and its error against w."""
    w64 = np.asarray(w, dtype=np.float64).reshape(codes.shape)
    table = q.level_table()
    deq = np.take_along_axis(table, codes.astype(np.int64), axis=1)
    err = float(np.sum((w64 - deq) ** 2))
    energy = float(np.sum(w64 * w64))
    dot = float(np.sum(w64 * deq))
    dd = float(np.sum(deq.astype(np.float64) ** 2))
    corr = dot / np.sqrt(energy * dd) if energy > 0 and dd > 0 else (1.0 if err == 0 else 0.0)
    sqnr = 10 * np.log10(energy / err) if err > 0 else float("inf")
    return replace(
        q,
        codes=codes.astype(np.uint8),
        dequantized=deq.astype(np.float32),
        correlation=float(corr),
        sqnr_db=float(sqnr),
    )
