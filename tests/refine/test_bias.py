"""Bias correction: with W replaced by W_q, the corrected layer's mean output equals the float one's."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.refine.bias import correct, output_shift, shrunk_shift

RNG = np.random.default_rng(0)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def model_of(nodes, inits, x_shape, y_shape) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def swap_weight(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def check(model, x, w, node_index, rows_of, mean, expected_how, axes):
    """Quantize W crudely, correct, and compare mean outputs with the float model."""
    wq = np.round(w * 2) / 2  # a coarse grid: a visible mean shift
    reference = run(model, x).mean(axis=axes)
    swap_weight(model, "w", wq)
    shifted = run(model, x).mean(axis=axes)
    shift = output_shift(rows_of(wq) - rows_of(w), mean)
    how = correct(model.graph, model.graph.node[node_index], shift, np.dtype(np.float32), "w.onnxq.bias")
    assert how == expected_how
    corrected = run(model, x).mean(axis=axes)
    assert np.abs(shifted - reference).max() > 1e-2  # there was a shift to remove
    np.testing.assert_allclose(corrected, reference, atol=2e-5)


@pytest.mark.parametrize("with_bias", [True, False])
def test_pointwise_conv(with_bias):
    w = RNG.standard_normal((6, 4, 1, 1))
    inits = {"w": w} | ({"b": RNG.standard_normal(6)} if with_bias else {})
    node = helper.make_node("Conv", ["x", "w", "b"] if with_bias else ["x", "w"], ["y"])
    model = model_of([node], inits, [3, 4, 5, 5], [3, 6, 5, 5])
    x = (RNG.standard_normal((3, 4, 5, 5)) + 1).astype(np.float32)
    mean = x.mean(axis=(0, 2, 3))[None, :]
    check(
        model,
        x,
        w,
        0,
        lambda a: a.reshape(6, 4),
        mean,
        "bias updated" if with_bias else "bias added",
        (0, 2, 3),
    )


def test_grouped_conv_uses_each_group_mean():
    w = RNG.standard_normal((4, 1, 1, 1))
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=4)
    model = model_of([node], {"w": w}, [2, 4, 3, 3], [2, 4, 3, 3])
    x = (RNG.standard_normal((2, 4, 3, 3)) + np.arange(4)[None, :, None, None]).astype(np.float32)
    mean = x.mean(axis=(0, 2, 3))[:, None]  # G = 4 groups of K = 1
    check(model, x, w, 0, lambda a: a.reshape(4, 1), mean, "bias added", (0, 2, 3))


@pytest.mark.parametrize("alpha,beta,with_c", [(1.0, 1.0, True), (0.5, 2.0, True), (2.0, 3.0, False)])
def test_gemm(alpha, beta, with_c):
    w = RNG.standard_normal((5, 7))  # transB: (N, K)
    inits = {"w": w} | ({"c": RNG.standard_normal(5)} if with_c else {})
    node = helper.make_node(
        "Gemm", ["x", "w", "c"] if with_c else ["x", "w"], ["y"], transB=1, alpha=alpha, beta=beta
    )
    model = model_of([node], inits, [8, 7], [8, 5])
    x = (RNG.standard_normal((8, 7)) + 1).astype(np.float32)
    check(model, x, w, 0, lambda a: a, x.mean(axis=0)[None], "bias updated" if with_c else "bias added", 0)


def test_matmul_followed_by_add_gets_the_add_updated():
    w = RNG.standard_normal((7, 5))  # (K, N): rows are W^T
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    model = model_of(nodes, {"w": w, "b": RNG.standard_normal(5)}, [2, 8, 7], [2, 8, 5])
    x = (RNG.standard_normal((2, 8, 7)) + 1).astype(np.float32)
    mean = x.reshape(-1, 7).mean(axis=0)[None]
    check(model, x, w, 0, lambda a: a.T, mean, "Add updated", (0, 1))


def test_matmul_alone_gets_an_add():
    w = RNG.standard_normal((7, 5))
    model = model_of([helper.make_node("MatMul", ["x", "w"], ["y"])], {"w": w}, [8, 7], [8, 5])
    x = (RNG.standard_normal((8, 7)) + 1).astype(np.float32)
    check(model, x, w, 0, lambda a: a.T, x.mean(axis=0)[None], "Add inserted", 0)
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add"]


def test_a_shared_bias_is_copied_not_changed_under_its_other_reader():
    w = RNG.standard_normal((3, 3))
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["y0"], transB=1),
        helper.make_node("Add", ["y0", "b"], ["y"]),
    ]
    b = RNG.standard_normal(3)
    model = model_of(nodes, {"w": w, "b": b}, [4, 3], [4, 3])
    how = correct(model.graph, model.graph.node[0], np.ones(3), np.dtype(np.float32), "w.onnxq.bias")
    assert how == "bias updated"
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_allclose(values["b"], b.astype(np.float32))
    np.testing.assert_allclose(values["w.onnxq.bias"], (b - 1).astype(np.float32), rtol=1e-6)
    assert model.graph.node[0].input[2] == "w.onnxq.bias" and model.graph.node[1].input[1] == "b"


def test_a_bias_that_is_not_a_constant_is_left_alone():
    w = RNG.standard_normal((2, 2, 1, 1))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 1, 1]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 1, 1])],
        [numpy_helper.from_array(w.astype(np.float32), "w")],
    )
    assert correct(graph, graph.node[0], np.ones(2), np.dtype(np.float32), "w.onnxq.bias") is None


def stats_of(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E[x] and E[x x^T] of rows x, one group."""
    x = x.astype(np.float64)
    return x.mean(axis=0)[None], (x.T @ x / len(x))[None]


def energy(delta: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    return np.einsum("rk,kl,rl->r", delta, hessian[0], delta)


def test_a_shift_the_samples_measure_clearly_is_kept_almost_whole():
    delta = 0.01 * RNG.standard_normal((16, 32))
    x = 1.0 + 0.3 * RNG.standard_normal((64, 32))  # a mean far from zero: activations after a ReLU
    mean, hessian = stats_of(x)
    shrunk = shrunk_shift(delta, mean, energy(delta, hessian), samples=64)
    raw = output_shift(delta, mean)
    assert np.all(np.abs(shrunk) <= np.abs(raw)) and np.all(np.sign(shrunk) == np.sign(raw))
    np.testing.assert_allclose(shrunk, raw, rtol=0.05)


def test_a_shift_measured_from_a_mean_that_is_zero_in_truth_is_mostly_dropped():
    """A centred signal (audio frames): the measured mean is sampling noise, and so is the shift."""
    delta = 0.01 * RNG.standard_normal((256, 32))
    x = RNG.standard_normal((16, 32))
    mean, hessian = stats_of(x)
    shrunk = shrunk_shift(delta, mean, energy(delta, hessian), samples=16)
    raw = output_shift(delta, mean)
    # Each row's estimate is about one standard error from zero: few stand two away, and they
    # are shrunk, so the kept energy is a small share of the raw shift's.
    assert np.mean(shrunk == 0) > 0.8
    assert np.sum(shrunk**2) < 0.1 * np.sum(raw**2)
