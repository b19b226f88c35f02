"""The compiled loops (numba, the `fast` extra) against numpy's: the same codes, parameters and
levels for every codebook and width, and the same error statistics up to summation order."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxq.quant import kernels
from onnxq.quant.codebooks import CODEBOOKS
from onnxq.quant.quantize import quantize

needs_numba = pytest.mark.skipif(
    kernels.name() != "numba", reason="numba is not installed: pip install -e '.[fast]'"
)
# What every comparison of the engines draws: a seed, a codebook and a width.
SEEDS = st.integers(0, 2**31 - 1)
CODEBOOK_NAMES = st.sampled_from(["exponential", "linear", "kmeans"])
WIDTHS = st.integers(1, 8)


def weights(seed: int, groups: int, n: int, dtype: str, transposed: bool) -> np.ndarray:
    """Gaussian rows of mixed scales, with outliers, a dead row and ties; a transposed view when asked
    (as a MatMul weight's rows are)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((groups, n)) * rng.lognormal(0, 1, (groups, 1))
    w[:, : max(1, n // 50)] *= 8.0
    w[0] = 0.0
    if n > 3:
        w[-1, :3] = w[-1, 3]  # repeated values
    w = w.astype(dtype)
    return np.ascontiguousarray(w.T).T if transposed else w


def on_each_engine(make):
    """make() on the compiled loops, then on numpy's."""
    out = []
    for name in ("numba", "numpy"):
        with kernels.use(name):
            out.append(make())
    return out


@needs_numba
@given(
    seed=SEEDS,
    codebook=CODEBOOK_NAMES,
    bits=WIDTHS,
    groups=st.integers(1, 40),
    n=st.integers(1, 300),
    dtype=st.sampled_from(["float32", "float64", "float16"]),
    transposed=st.booleans(),
    search=st.sampled_from(["auto", "grid", "exact"]),
)
def test_compiled_loops_give_what_numpy_gives(seed, codebook, bits, groups, n, dtype, transposed, search):
    w = weights(seed, groups, n, dtype, transposed)
    a, b = on_each_engine(lambda: quantize(w, CODEBOOKS[codebook], bits, "variance", search=search))
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.params, b.params)
    np.testing.assert_array_equal(a.ranges, b.ranges)
    for x, y in ((a.correlation, b.correlation), (a.sqnr_db, b.sqnr_db)):
        assert (math.isinf(x) and x == y) or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)


@needs_numba
@given(
    seed=SEEDS,
    codebook=CODEBOOK_NAMES,
    bits=WIDTHS,
    groups=st.integers(1, 40),
    dtype=st.sampled_from(["float32", "float64"]),
)
def test_the_compiled_column_search_gives_what_numpy_gives(seed, codebook, bits, groups, dtype):
    """Nearest.column (GPTQ's one weight per row, many times over): the same codes and levels,
    also for weights on the midpoints, beyond the largest level, and at -0.0."""
    from onnxq.quant.quantize import Nearest

    w = weights(seed, groups, 64, "float64", False)
    q = quantize(w, CODEBOOKS[codebook], bits, "variance")
    table = q.level_table()
    rng = np.random.default_rng(seed)
    mids = 0.5 * (table[:, 1:] + table[:, :-1])
    pick = rng.integers(0, mids.shape[1], groups)
    columns = [
        w[:, rng.integers(0, 64)],
        mids[np.arange(groups), pick] * rng.choice([-1.0, 1.0], groups),  # ties
        np.abs(table).max(axis=1) * 3.0 + 1.0,
        np.full(groups, -0.0),
    ]
    for column in columns:
        column = np.ascontiguousarray(column, dtype=dtype)
        (codes, levels), (want_codes, want_levels) = on_each_engine(
            lambda c=column: Nearest(table, bits).column(c)
        )
        np.testing.assert_array_equal(codes, want_codes)
        np.testing.assert_array_equal(levels, want_levels)


@needs_numba
@given(
    seed=SEEDS,
    codebook=CODEBOOK_NAMES,
    bits=WIDTHS,
    rows=st.integers(1, 24),
    k=st.integers(1, 300),
    groups=st.sampled_from([1, 2]),
    block=st.sampled_from([None, 4, 32]),
)
def test_gptq_rows_rounded_a_row_at_a_time_give_numpys_codes(seed, codebook, bits, rows, k, groups, block):
    """gptq's compiled rounding (a row at a time through a block's columns, round_columns) against
    numpy's column by column: the same codes, per channel, per block of columns (where a block
    of SUB columns can hold two tables) and with H per group of rows; ties included."""
    from onnxq.refine.gptq import Factored, gptq_codes

    rows *= groups
    if block is not None:
        k = block * max(1, k // block)
    w = weights(seed, rows, k, "float32", False)
    q = quantize(w.reshape(-1, block) if block else w, CODEBOOKS[codebook], bits, "variance")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((groups, 3 * k + 1, k)) * rng.lognormal(0, 1, (groups, 1, k))
    h = np.einsum("gnk,gnl->gkl", x, x) / x.shape[1]
    table = q.level_table()
    if bits > 1:  # a weight on a midpoint of its row's first table: a tie
        mid = 0.5 * (table[0, 1] + table[0, 2])
        w[0, 0] = mid
    compiled, plain = on_each_engine(lambda: gptq_codes(q, w, Factored(h)))
    np.testing.assert_array_equal(compiled, plain)


@needs_numba
@given(
    seed=SEEDS,
    codebook=CODEBOOK_NAMES,
    bits=WIDTHS,
    groups=st.integers(1, 30),
    n=st.integers(1, 200),
)
def test_the_compiled_dequantize_gives_what_numpy_gives(seed, codebook, bits, groups, n):
    w = weights(seed, groups, n, "float32", False)
    for q in (
        quantize(w, CODEBOOKS[codebook], bits, "variance"),
        quantize(w.reshape(1, -1), CODEBOOKS[codebook], bits, "lsq"),
    ):
        compiled, plain = on_each_engine(lambda q=q: q.dequantized)
        assert compiled.dtype == plain.dtype == np.float32
        np.testing.assert_array_equal(compiled, plain)


@needs_numba
def test_a_large_weight_takes_the_compiled_loops_and_a_small_one_numpy():
    assert kernels.engine(kernels.MIN_WEIGHTS) is not None
    assert kernels.engine(kernels.MIN_WEIGHTS - 1) is None
    with kernels.use("numpy"):
        assert kernels.engine(10**9) is None


def test_onnxq_kernels_numpy_turns_the_compiled_loops_off():
    env = dict(os.environ, ONNXQ_KERNELS="numpy")
    code = "from onnxq.quant import kernels; print(kernels.name(), kernels.engine(10**9))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["numpy", "None"]


def test_an_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="numba or numpy"), kernels.use("cuda"):
        pass


@pytest.mark.parametrize("run_weights, loaded", [(None, False), (0, True)])
def test_compress_loads_numba_only_for_a_run_large_enough_to_win_its_import_back(
    tmp_path, tiny_path, run_weights, loaded
):
    """A small model's compress, in a fresh process, never imports numba (0.2-0.3 s per process
    that only millions of weights win back); over kernels.RUN_WEIGHTS it does. quantize_rows
    hands the run's engine to the worker processes (next test)."""
    if loaded and kernels.name() != "numba":
        pytest.skip("numba is not installed: pip install -e '.[fast]'")
    code = (
        "import sys; from onnxq.quant import kernels\n"
        + (f"kernels.RUN_WEIGHTS = {run_weights}\n" if run_weights is not None else "")
        + f"import onnxq; onnxq.compress({str(tiny_path)!r}, {str(tmp_path / 'o.onnx')!r}, jobs=2)\n"
        + "print('numba' in sys.modules, kernels.current())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(loaded), "auto"]  # and the mode is restored after the run


@needs_numba
def test_worker_settings_carry_the_runs_engine():
    from onnxq import jobs

    settings = jobs.Settings("exponential", "channel", "variance", "grid", None, 1, kernels="numba")
    w = np.random.default_rng(0).standard_normal((4, 64))
    with kernels.use("numpy"):
        jobs.quantize_rows(w, settings, 5)
        assert kernels.current() == "numba"  # what a worker process keeps for the run
    assert kernels.current() == "auto"
