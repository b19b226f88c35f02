"""inspect: a float model's weights and predicted size, and what an onnxq output stores."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from conftest import WEIGHT_NAMES, matmul_model, save_external, tiny_model

import onnxq
from onnxq import api
from onnxq.check import inspect as inspection
from onnxq.errors import OnnxqError
from onnxq.graph import external

# Every format with a codebook and widths it stores (matmulnbits fuses MatMul weights at 2, 4, 8).
CASES = [
    ("fold", "exponential", 5),
    ("fold", "linear", 3),
    ("fold", "kmeans", 4),
    ("qdq", "linear", 2),
    ("qdq", "linear", 5),
    ("matmulnbits", "linear", 4),
]


def saved(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(("fmt", "codebook", "bits"), CASES)
@pytest.mark.parametrize("group_size", [None, 8])
def test_the_predicted_bytes_are_the_reports_without_quantizing(tmp_path, fmt, codebook, bits, group_size):
    model, _ = tiny_model()
    config = onnxq.Config(bits=bits, codebook=codebook, format=fmt, group_size=group_size, validate=False)
    if fmt == "qdq" and group_size:
        config = onnxq.Config(bits=bits, format=fmt, group_size=group_size, exclude=("conv",))
    _, report = onnxq.compress_model(model, config)
    found = api.inspect(saved(tmp_path, model), config)
    assert not found.compressed and found.prediction is not None
    assert {w.name: w.groups for w in found.weights} == {w.name: w.groups for w in report.weights}
    if fmt != "matmulnbits":  # whose report counts its weights as fold does, the file padded
        predicted = {w.name: w.stored_bytes for w in found.weights}
        assert predicted == {w.name: w.index_bytes + w.codebook_bytes for w in report.weights}
    # the file's indices and codebooks, as the report measures them in the written graph
    assert found.prediction.bits_per_weight == pytest.approx(report.bits_per_weight)


def test_auto_is_predicted_at_its_costliest_candidate(tmp_path):
    model, _ = tiny_model()
    _, report = onnxq.compress_model(model, onnxq.Config(bits=4, codebook="auto"))
    found = api.inspect(saved(tmp_path, model), codebook="auto", bits=4)
    stored = {w.name: w.index_bytes + w.codebook_bytes for w in report.weights}
    assert all(w.stored_bytes >= stored[w.name] for w in found.weights)
    assert any("costliest" in a for a in found.prediction.assumptions)


def test_a_float_model_lists_ranges_skips_and_a_size_near_the_real_one(tmp_path):
    model, _ = tiny_model()
    src = saved(tmp_path, model)
    found = api.inspect(src)
    assert sorted(w.name for w in found.weights) == sorted(WEIGHT_NAMES)
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for w in found.weights:
        a = arrays[w.name].astype(np.float64)
        assert (w.min, w.max) == (a.min(), a.max()) and w.std == pytest.approx(a.std(), rel=1e-9)
        assert w.bytes == a.size * 4 and w.shape == list(a.shape)
    assert {s.reason for s in found.skipped} == {
        "bias of Conv (biases stay in float)",
        "bias of Gemm (biases stay in float)",
    }
    report = onnxq.compress(src, tmp_path / "out.onnx", validate=False)
    p = found.prediction
    assert p.float_bytes == 4 * p.weights == 4 * report.compressed_elements
    # Not counted: the decoder function and nodes, a few KB on a model this small.
    assert 0 < report.output.total - p.output_bytes < 8000


def test_target_bits_predicts_its_budget_and_says_so(tmp_path):
    model, _ = tiny_model()
    found = api.inspect(saved(tmp_path, model), target_bits=4.5)
    p = found.prediction
    assert p.bits_per_weight == pytest.approx(4.5, abs=1e-3) and p.stored_bytes == math.floor(
        4.5 * p.weights / 8
    )
    assert all(w.stored_bytes is None for w in found.weights)
    assert any(a.startswith("--target-bits 4.5: the whole budget") for a in p.assumptions)


def test_ranges_are_read_a_part_at_a_time(monkeypatch):
    monkeypatch.setattr(inspection, "CHUNK", 7)
    a = np.random.default_rng(0).standard_normal((13, 5)) * 3 + 1
    lo, hi, std = inspection.value_range(a)
    assert (lo, hi) == (a.min(), a.max()) and std == pytest.approx(a.std(), rel=1e-12)


def test_large_external_weights_are_mapped_not_loaded(tmp_path, monkeypatch):
    w = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)  # 2 MB: lazy
    src = save_external(matmul_model(w)[0], tmp_path / "ext")
    mapped = []
    real = external.mapped_array

    def spy(tensor, folder):
        mapped.append(tensor.name)
        return real(tensor, folder)

    monkeypatch.setattr(external, "mapped_array", spy)
    (found,) = api.inspect(src).weights
    assert mapped == ["W"] and (found.min, found.max) == (w.min(), w.max())


@pytest.mark.parametrize(("fmt", "codebook", "bits"), CASES)
def test_an_output_reads_back_as_the_report_stored_it(tmp_path, fmt, codebook, bits):
    src = saved(tmp_path, tiny_model()[0])
    dst = tmp_path / "out.onnx"
    report = onnxq.compress(src, dst, bits=bits, codebook=codebook, format=fmt, validate=False)
    found = api.inspect(dst)
    assert found.compressed and found.written_by == onnxq.__version__
    assert found.settings["format"] == fmt and found.settings["bits"] == bits
    stored = {s.name: s for s in found.stored}
    assert sorted(stored) == sorted(WEIGHT_NAMES)
    for w in report.weights:
        s = stored[w.name]
        assert (list(s.shape), s.codebook, s.bits) == (w.shape, w.codebook, w.bits)
        if s.format != "matmulnbits":  # its kernel pads codes to blocks and keeps float32 scales
            assert (s.groups, s.index_bytes, s.codebook_bytes) == (w.groups, w.index_bytes, w.codebook_bytes)
    formats = {s.format for s in found.stored}
    assert formats == ({"fold", "matmulnbits"} if fmt == "matmulnbits" else {fmt})
    assert found.file_bytes == dst.stat().st_size
    assert {s.reason for s in found.skipped} == {
        "bias of Conv (biases stay in float)",
        "bias of Gemm (biases stay in float)",
    }


def test_an_output_with_target_bits_reads_back_each_tensors_width(tmp_path):
    src = saved(tmp_path, tiny_model()[0])
    dst = tmp_path / "out.onnx"
    report = onnxq.compress(src, dst, target_bits=3.5, format="qdq", validate=False, sensitivity_samples=2)
    widths = {s.name: s.bits for s in api.inspect(dst).stored}
    assert widths == {w.name: w.bits for w in report.weights}


def test_bad_input_is_an_onnxq_error(tmp_path):
    with pytest.raises(OnnxqError, match="does not exist"):
        api.inspect(tmp_path / "missing.onnx")
    (tmp_path / "notes.onnx").write_text("not a model\n" * 10)
    with pytest.raises(OnnxqError, match="not a readable ONNX model"):
        api.inspect(tmp_path / "notes.onnx")
    with pytest.raises(OnnxqError, match="--bits must be between 1 and 8"):
        api.inspect(saved(tmp_path, tiny_model()[0]), bits=9)


def test_an_output_with_inlined_decoders_lists_its_tensors_from_the_record(tmp_path):
    """Below IR version 8 there are no local functions: compress inlines its decoders, so the graph
    no longer shows which call rebuilds which weight, and inspect reads compress's own record."""
    model = tiny_model()[0]
    model.ir_version = 7
    src = saved(tmp_path, model)
    dst = tmp_path / "out.onnx"
    report = onnxq.compress(src, dst, bits=4, validate=False)
    assert onnx.load(dst).ir_version == 7 and not onnx.load(dst).functions
    found = api.inspect(dst)
    assert any("inlined" in n for n in found.notes)
    rows = {s.name: (list(s.shape), s.bits, s.groups, s.index_bytes) for s in found.stored}
    assert rows == {w.name: (w.shape, w.bits, w.groups, w.index_bytes) for w in report.weights}
    # matmulnbits keeps its MatMul weights in MatMulNBits nodes, which the graph shows; the rest
    # come from the record, as the whole-weight format that stored them.
    onnxq.compress(src, tmp_path / "mnb.onnx", bits=4, format="matmulnbits", validate=False)
    formats = {s.name: s.format for s in api.inspect(tmp_path / "mnb.onnx").stored}
    assert formats == {n: "matmulnbits" if n == "mm.b" else "fold" for n in WEIGHT_NAMES}
    # An output with local functions keeps no such record: its graph is the truth.
    model.ir_version = 8
    onnxq.compress(saved(tmp_path, model, "m8.onnx"), tmp_path / "o8.onnx", bits=4, validate=False)
    assert "onnxq.tensors" not in {p.key for p in onnx.load(tmp_path / "o8.onnx").metadata_props}
