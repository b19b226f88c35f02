"""Probe: the noise of swapping one weight, measured with that weight as the only input besides the model's."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import run, tiny_model
from onnx import numpy_helper

from onnxq.sensitivity import Probe


def swapped_noise(model: onnx.ModelProto, feeds: dict, name: str, value: np.ndarray) -> float:
    """The same noise, the slow way: a copy of the model with the initializer replaced."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for t in copy.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(value, name))
    ref, got = run(model, feeds), run(copy, feeds)
    err = sum(float(np.sum((g.astype(np.float64) - r) ** 2)) for g, r in zip(got, ref))
    return err / sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref)


@pytest.mark.parametrize("name", ["conv.w", "mm.b", "gemm.b"])
def test_noise_matches_a_model_with_the_weight_replaced_and_leaves_the_model_alone(name):
    model, feeds = tiny_model()
    before = model.SerializeToString()
    probe = Probe(model, [name], [feeds])
    w = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)
    rng = np.random.default_rng(3)
    values = [w, w + 0.01 * rng.standard_normal(w.shape).astype(w.dtype), np.round(w * 4) / 4]
    noises = probe.noise(name, values)
    assert noises[0] < 1e-12
    for value, noise in zip(values[1:], noises[1:]):
        assert noise == pytest.approx(swapped_noise(model, feeds, name, value), rel=1e-4)
    assert 0 < noises[1] < noises[2]
    assert model.SerializeToString() == before  # the initializer is back, in its place


def test_before_ir4_an_initializer_that_is_already_an_input_is_fed_too():
    model, feeds = tiny_model()
    model.ir_version = 3
    w = next(t for t in model.graph.initializer if t.name == "gemm.b")
    model.graph.input.append(onnx.helper.make_tensor_value_info("gemm.b", w.data_type, list(w.dims)))
    before = model.SerializeToString()
    value = numpy_helper.to_array(w) * 1.1
    (noise,) = Probe(model, ["gemm.b"], [feeds]).noise("gemm.b", [value])
    assert noise == pytest.approx(swapped_noise(model, feeds, "gemm.b", value), rel=1e-4)
    assert model.SerializeToString() == before


def test_only_measured_weights_can_be_probed():
    model, feeds = tiny_model()
    with pytest.raises(KeyError, match="gemm.c"):
        Probe(model, ["conv.w"], [feeds]).noise("gemm.c", [np.zeros(13, np.float32)])
