"""tools/param_coding.py: parameter codings quantize onto few levels, clamp the scale span, and fail clearly."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from conftest import TOOLS
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(TOOLS))
try:
    import param_coding
finally:
    sys.path.remove(str(TOOLS))


def rows(seed: int = 0, groups: int = 24, n: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.laplace(size=(groups, n)) * np.exp(rng.uniform(-3, 0, size=(groups, 1)))


def test_parse_coding_reads_x0_bits_scale_bits_and_span():
    assert param_coding.parse_coding("exact") is None
    assert param_coding.parse_coding("6:8:9") == (6, 8, 9.0)
    for bad in ("6:8", "a:b:c", "0:8:9", "6:1:9", "6:8:-1"):
        with pytest.raises(SystemExit, match="coding"):
            param_coding.parse_coding(bad)


@pytest.mark.parametrize("coding", [None, (6, 10, 0.0), (3, 4, 2.0)])
def test_each_group_takes_at_most_its_codebook_levels_and_keeps_its_signs(coding):
    w = rows()
    q = param_coding.quantize_rows(w, 4, coding)
    assert q.shape == w.shape
    for wr, qr in zip(w, q):
        assert len(np.unique(np.abs(qr))) <= 8  # 7 magnitudes and zero at 4 bits
        assert np.all(np.sign(qr[qr != 0]) == np.sign(wr[qr != 0]))
    assert np.corrcoef(w.ravel(), q.ravel())[0, 1] > 0.95


def test_x0_codes_leave_at_most_2_to_the_x0_bits_values_per_tensor():
    w = rows(1)
    q = param_coding.quantize_rows(w, 5, (2, 16, 0.0))
    ratios = {round(float(np.min(np.abs(r[r != 0])) / np.max(np.abs(r))), 6) for r in q}
    exact = {
        round(float(np.min(np.abs(r[r != 0])) / np.max(np.abs(r))), 6)
        for r in param_coding.quantize_rows(w, 5, None)
    }
    assert len(ratios) <= 4 < len(exact)


def test_a_group_below_the_scale_span_takes_the_span_bottom():
    w = rows(2, groups=8)
    w[0] *= 1e-9  # a near-dead channel
    q = param_coding.quantize_rows(w, 5, (6, 8, 3.0))
    assert np.all(q[0] == 0)  # its weights are far below the smallest level at the span's bottom
    assert np.abs(q[1:]).max() > 0
    whole = param_coding.quantize_rows(w, 5, (6, 8, 0.0))
    assert np.abs(whole[0]).max() > 0  # a grid over the whole range keeps it


def test_all_zero_groups_stay_zero():
    w = rows(3, groups=4)
    w[2] = 0.0
    for coding in (None, (6, 8, 9.0)):
        q = param_coding.quantize_rows(w, 5, coding)
        assert np.all(q[2] == 0) and np.all(np.isfinite(q))


def test_quantized_model_rounds_only_large_float_matrices(tmp_path):
    big = rows(4, groups=8, n=32).astype(np.float32)
    small = np.ones((2, 3), np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "big"], ["y"]), helper.make_node("MatMul", ["y2", "small"], ["z"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
            helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 2]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3]),
        ],
        [numpy_helper.from_array(big, "big"), numpy_helper.from_array(small, "small")],
    )
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(src))
    model, sqnr = param_coding.quantized_model(src, 5, (6, 10, 0.0))
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.array_equal(out["small"], small)
    assert not np.array_equal(out["big"], big) and 15 < sqnr < 40
