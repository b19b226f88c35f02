"""Error-compensating rounding (GPTQ / OBQ): codes that minimise tr(dW H dW^T), not |dW|.

For a layer y = W x with input second moments H = E[x x^T], rounding column i of
W to its row's nearest level leaves an error e_i; moving -e_i * Hinv[i, j] / Hinv[i, i]
onto every later column j is the least-squares correction of the layer output.
With U = chol(H^-1) (upper), that is W[:, j] -= (e_i / U[i, i]) * U[i, j]; the same
corrections come from the Cholesky factor of H itself, without inverting it (_update_factor).

The levels are fixed beforehand (each row's codebook from quantize.py), so the
storage is unchanged: only the choice of code per weight moves. Columns are
visited in order of decreasing H[i, i] ("act order"), H is damped by a fraction
of its mean diagonal (damping_for: more when few input columns were seen), and
inputs that are never active get H[i, i] = 1 (their weights cannot matter, so
they round to nearest). Everything is deterministic.
"""

from __future__ import annotations

import numpy as np

from onnxq.quant import kernels
from onnxq.quant.layout import channels_moved
from onnxq.quant.quantize import Nearest, QuantizedTensor

DAMPING = 0.01  # of the mean diagonal, as in the GPTQ paper: the least, for an H seen through many columns
SAMPLE_DAMPING = 1.0  # times K / N: K inputs per row, N input columns seen (see damping_for)
BLOCK = 128  # columns updated lazily together
DTYPE = np.float32
SUB = 16  # within a block, columns rounded one by one before a matmul updates the block's rest


def _update_factor(h: np.ndarray) -> np.ndarray:
    """V' for a batch of symmetric positive definite H (G, K, K): V upper with V V^T = H (with J
    the reversal of the columns' order, J chol(J H J) J), each column j divided by V[j, j].

    GPTQ's corrections are usually written with U = chol(H^-1) upper: rounding column i moves
    -(w_i' - q_i) / U[i, i] * U[i, j] onto each later column j. Summed over the columns, that
    makes W - Q = E U, E the scaled errors, so E = (W - Q) V with V = U^-1, and column j's
    value when rounded is w_j' = w_j + sum_{i<j} (w_i - q_i) V[i, j] / V[j, j]: the original
    weights' residuals, moved by V'. One Cholesky, no inverse (which took 3.8 of 5.1 CPU-s at
    K = 4096)."""
    v = np.linalg.cholesky(h[:, ::-1, ::-1])[:, ::-1, ::-1]
    return v / np.einsum("gjj->gj", v)[:, None, :]


def damping_for(columns: int, count: int) -> float:
    """The damping of a K x K H (K = columns) averaged over count input columns: DAMPING, or
    SAMPLE_DAMPING * K / count when that is more.

    An H averaged over few columns has small eigenvalues that are sampling noise, and GPTQ
    moves rounding error into them: the codes fit the calibration inputs and not others.
    MobileNetV2's classifier (K = 1280, one column per calibration image) at DAMPING and 3
    bits had 80 times less output noise than nearest rounding on the calibration images.
    With this rule, at --target-bits 4 --calibration, the mean KL divergence to the float
    model on the 900 evaluation images fell on all three shared models (MobileNetV2 0.080 to
    0.056, EfficientNet-Lite2 0.067 to 0.055, Lite0 0.070 to 0.057; measured at 57bcb93 with
    this rule added), while top-1 moved within the split's noise (docs/RESULTS.md). A uniform
    damping of 0.1 or 0.3 did as well on KL but also moves the well-sampled layers.
    Convolutions over large feature maps see thousands of columns per input and keep DAMPING.
    """
    return max(DAMPING, SAMPLE_DAMPING * columns / max(count, 1))


def prepare_hessian(h: np.ndarray, damping: float = DAMPING) -> np.ndarray:
    """Damped copy of H (G, K, K) with dead inputs made harmless."""
    h = np.array(h, dtype=np.float64, copy=True)
    diag = np.einsum("gii->gi", h)  # a writable view of the diagonals
    dead = diag <= 0
    diag[dead] = 1.0
    mean = diag.mean(axis=1, keepdims=True)
    diag += damping * mean
    return h


class Factored:
    """H (G, K, K) prepared for GPTQ once, for every rounding of one weight: damped, and for each
    column order asked for, that order and the update factor V' (_update_factor) in it. The
    factorisation is much of GPTQ's time, and --target-bits rounds each weight at several widths."""

    def __init__(self, h: np.ndarray, damping: float = DAMPING):
        self.h = prepare_hessian(h, damping)
        self._orders: dict[bool, tuple[np.ndarray, np.ndarray]] = {}

    def ordered(self, act_order: bool) -> tuple[np.ndarray, np.ndarray]:
        """(order (G, K), V' (G, K, K), _update_factor): act order (decreasing H[i, i], per group)
        or column order."""
        if act_order not in self._orders:
            g, k = self.h.shape[:2]
            if act_order:
                order = np.argsort(-np.einsum("gii->gi", self.h), axis=1, kind="stable")
            else:
                order = np.broadcast_to(np.arange(k), (g, k))
            h = np.stack([each[np.ix_(o, o)] for each, o in zip(self.h, order)])
            self._orders[act_order] = (order, _update_factor(h).astype(DTYPE))
        return self._orders[act_order]


def round_groups(
    w: np.ndarray, factored: Factored, table: np.ndarray, bits: int, block: int | None = None
) -> np.ndarray:
    """Codes for w (G, R, K) given its layer's prepared H and per-row levels table (G*R, 2^bits).

    With block B, table is (G*R*K/B, 2^bits): row r's columns j*B..(j+1)*B-1 use
    its j-th table, and the columns keep their order (act order would scatter a
    block's columns differently in each group).
    """
    g, r, k = w.shape
    order, v = factored.ordered(act_order=block is None)
    # Columns as contiguous rows (G, K, R): a column is read and updated in place, where in
    # (G, R, K) it is strided by K. float32, as GPTQ's own code: half the memory traffic.
    w = np.stack([channels_moved(np.asarray(each, DTYPE), 1)[o] for each, o in zip(w, order)])
    codes = np.zeros((g, k, r), dtype=np.uint8)
    if block is None:
        nearest = [Nearest(table, bits)]
    else:
        per_block = table.reshape(g * r, k // block, table.shape[1])
        nearest = [Nearest(per_block[:, j], bits) for j in range(k // block)]
    column = (lambda i: nearest[0]) if block is None else (lambda i: nearest[i // block])
    residual = np.empty_like(w)  # w - q, column by column as they are rounded
    for start in range(0, k, BLOCK):
        stop = min(start + BLOCK, k)
        cols = w[:, start:stop].copy()
        if start:  # every earlier column's residual moved onto this block's at once: a batched matmul
            cols += np.matmul(np.swapaxes(v[:, :start, start:stop], 1, 2), residual[:, :start])
        args = (v[:, start:stop, start:stop], codes[:, start:stop], start, column)
        residual[:, start:stop] = _round_block(cols, w[:, start:stop], *args)
    inverse = np.argsort(order, axis=1)
    return np.stack([channels_moved(each[o], 1) for each, o in zip(codes, inverse)])


def _round_block(
    cols: np.ndarray, weights: np.ndarray, v: np.ndarray, codes: np.ndarray, first: int, column
) -> np.ndarray:
    """Round a block's columns (G, B, R), updated in place as each is rounded; their codes into
    codes (G, B, R); the residuals weights - q (G, B, R). Within the block, SUB columns at a time
    update the rest by a matmul: column by column, the updates read and wrote (B/2) R values per
    column."""
    g, b, r = cols.shape
    residual = weights.copy()
    block = np.ascontiguousarray(v)  # the compiled loop reads it contiguous, and vectorizes
    for s0 in range(0, b, SUB):
        s1 = min(s0 + SUB, b)
        near = column(first + s0)
        fast = kernels.engine(g * r) if near.bits > 1 and column(first + s1 - 1) is near else None
        if fast is not None:  # the same, a row at a time (one table read per row, not per column)
            flat, starts, keys, offsets, bound = near.column_tables()
            args = (keys, offsets, cols.dtype.type(bound), near.m, flat, starts)
            fast.round_columns(cols, residual, codes, block, s0, s1, *args)
        else:
            for j in range(s0, s1):
                c, q = column(first + j).column(cols[:, j].reshape(g * r))
                codes[:, j] = c.reshape(g, r)
                residual[:, j] -= q.reshape(g, r)
                if j + 1 < s1:
                    cols[:, j + 1 : s1] += v[:, j, j + 1 : s1][:, :, None] * residual[:, j][:, None, :]
        if s1 < b:
            cols[:, s1:] += np.matmul(np.swapaxes(v[:, s0:s1, s1:], 1, 2), residual[:, s0:s1])
    return residual


def gptq_codes(
    q: QuantizedTensor, rows: np.ndarray, hessian: np.ndarray | Factored, damping: float = DAMPING
) -> np.ndarray:
    """Codes (O, K) for weight rows (O, K) on q's levels, given H (G, K, K) of the layer's input,
    or H already prepared (then its own damping holds).

    Rows are split into G consecutive groups of O / G rows that share an H (a
    grouped Conv); q may have one level table for all rows (tensor granularity).
    """
    o, k = rows.shape
    shape = hessian.h.shape if isinstance(hessian, Factored) else hessian.shape
    g = shape[0]
    if o % g or shape[1:] != (k, k):
        raise ValueError(f"H of shape {shape} does not fit weight rows of shape {rows.shape}")
    factored = hessian if isinstance(hessian, Factored) else Factored(hessian, damping)
    table = q.level_table()
    block = None
    if table.shape[0] == 1:  # tensor granularity: one table for every row
        table = np.broadcast_to(table, (o, table.shape[1]))
    elif table.shape[0] != o:  # blocks of q.codes.shape[1] columns, each with its own table
        block = q.codes.shape[1]
        if table.shape[0] * block != o * k:
            raise ValueError(f"{table.shape[0]} level tables do not fit weight rows of shape {rows.shape}")
    codes = round_groups(rows.reshape(g, o // g, k), factored, np.ascontiguousarray(table), q.bits, block)
    return codes.reshape(o, k)
