"""decompress: onnxq's output back to a plain float model with the same outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import control_flow_model, run, sha256, tiny_model
from onnx import TensorProto
from typer.testing import CliRunner

import onnxq
from onnxq.check.decompress import MARK, decompress, decompress_model
from onnxq.cli import app
from onnxq.errors import OnnxqError
from onnxq.storage.fold import DOMAIN


def plain(model: onnx.ModelProto) -> None:
    """No trace of onnxq's storage is left."""
    onnx.checker.check_model(model, full_check=True)
    assert not model.functions
    assert all(i.domain != DOMAIN for i in model.opset_import)
    graphs = [model.graph]
    for g in graphs:
        for n in g.node:
            assert n.domain != DOMAIN
            graphs += [a.g for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
        assert not [t.name for t in g.initializer if t.name.endswith((".onnxq.indices", ".onnxq.codebook"))]


@pytest.mark.parametrize("codebook", ["linear", "exponential", "kmeans"])
@pytest.mark.parametrize("bits", [2, 5])
def test_outputs_equal_the_compressed_models(codebook, bits):
    model, feeds = tiny_model()
    compressed, _ = onnxq.compress_model(model, onnxq.Config(bits=bits, codebook=codebook))
    floats, count = decompress_model(compressed)
    assert count == 6
    plain(floats)
    for a, b in zip(run(floats, feeds), run(compressed, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_weights_inside_subgraphs_come_back_too():
    model, feeds = control_flow_model()
    compressed, report = onnxq.compress_model(model, onnxq.Config(bits=4, min_elements=1))
    floats, count = decompress_model(compressed)
    assert count == len(report.weights) >= 3
    plain(floats)
    for a, b in zip(run(floats, feeds), run(compressed, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_float16_weights_come_back_as_float16(rng):
    model, feeds = tiny_model()
    for t in model.graph.initializer:
        if t.name == "mm.b":
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t).astype(np.float16), t.name))
    # MatMul needs both operands in one type: feed it through a Cast.
    for n in model.graph.node:
        if n.name == "mm":
            n.input[1] = "mm.b16"
    model.graph.node.insert(0, onnx.helper.make_node("Cast", ["mm.b"], ["mm.b16"], to=TensorProto.FLOAT))
    compressed, _ = onnxq.compress_model(model, onnxq.Config(bits=5))
    floats, _ = decompress_model(compressed)
    (t,) = [t for t in floats.graph.initializer if t.name == "mm.b"]
    assert t.data_type == TensorProto.FLOAT16
    for a, b in zip(run(floats, feeds), run(compressed, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_corrected_biases_are_kept(tmp_path):
    from conftest import small_cnn

    src = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(), src)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((8, 3, 12, 12)).astype(np.float32) + 0.5)
    onnxq.compress(src, tmp_path / "c.onnx", bits=3, min_elements=1, calibration=str(calib), validate=False)
    assert decompress(tmp_path / "c.onnx", tmp_path / "d.onnx") == 4
    floats = onnx.load(tmp_path / "d.onnx")
    plain(floats)
    assert any(t.name.endswith(".onnxq.bias") for t in floats.graph.initializer)
    x = np.random.default_rng(1).standard_normal((4, 3, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(
        run(floats, {"x": x})[0], run(onnx.load(tmp_path / "c.onnx"), {"x": x})[0], rtol=1e-5, atol=1e-6
    )


def test_a_model_without_decoders_is_refused(tiny_path, tmp_path):
    with pytest.raises(OnnxqError, match="no onnxq decoder calls"):
        decompress(tiny_path, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_cli_writes_the_model_checks_it_and_leaves_the_input_alone(tiny_path, tmp_path):
    runner = CliRunner()
    assert (
        runner.invoke(app, ["compress", str(tiny_path), str(tmp_path / "c.onnx"), "--no-validate"]).exit_code
        == 0
    )
    before = sha256(tmp_path / "c.onnx")
    result = runner.invoke(app, ["decompress", str(tmp_path / "c.onnx"), str(tmp_path / "d.onnx")])
    assert result.exit_code == 0, result.output
    assert "decoded 6 weights" in result.output and "passed" in result.output
    assert sha256(tmp_path / "c.onnx") == before
    assert not any(MARK in t.name for t in onnx.load(tmp_path / "d.onnx").graph.initializer)


def test_cli_error_is_one_line(tiny_path, tmp_path):
    result = CliRunner().invoke(app, ["decompress", str(tiny_path), str(tmp_path / "d.onnx")])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and result.output.startswith("error:")
    assert not (tmp_path / "d.onnx").exists()


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_qdq_models_decompress_too(bits):
    model, feeds = tiny_model()
    qdq, _ = onnxq.compress_model(model, onnxq.Config(bits=bits, codebook="linear", format="qdq"))
    floats, count = decompress_model(qdq)
    assert count == 6
    plain(floats)
    assert not any(n.op_type == "DequantizeLinear" for n in floats.graph.node)
    # onnxruntime rewrites DequantizeLinear + MatMul into MatMulNBits by default: approximate
    # at 4 and 8 bits, and wrong at 2 (onnxruntime 1.32). Without that rewrite both agree.
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    exact = ort.InferenceSession(qdq.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for a, b in zip(run(floats, feeds), exact.run(None, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_onnxruntime_gets_int2_qdq_matmuls_wrong_and_the_report_says_so():
    model, feeds = tiny_model()
    qdq, report = onnxq.compress_model(model, onnxq.Config(bits=2, codebook="linear", format="qdq"))
    assert any("INT2 weights feeding MatMul" in n for n in report.notes)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    right = ort.InferenceSession(qdq.SerializeToString(), options, providers=["CPUExecutionProvider"])
    default = run(qdq, feeds)[0]
    # If this starts failing, onnxruntime fixed its rewrite: drop the note in qdq.notes.
    assert relative_error(default, right.run(None, feeds)[0]) > 0.1


def relative_error(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("bits", [4, 8])
def test_a_qdq_model_decompresses_and_passes_its_own_check(tiny_path, tmp_path, bits):
    """onnxruntime fuses DequantizeLinear into integer kernels that round differently (5e-3 apart
    on this model); the check runs both models as their graphs state, where they agree."""
    runner = CliRunner()
    src, dst = tmp_path / "q.onnx", tmp_path / "d.onnx"
    args = ["compress", str(tiny_path), str(src), "--no-validate", "--format", "qdq", "--codebook", "linear"]
    assert runner.invoke(app, [*args, "--bits", str(bits)]).exit_code == 0
    result = runner.invoke(app, ["decompress", str(src), str(dst)])
    assert result.exit_code == 0, result.output
    assert "passed" in result.output
    fused = onnxq.compare_models(src, dst)  # with every fusion: the kernels' rounding shows
    literal = onnxq.compare_models(src, dst, literal=True)
    assert max(o.relative_l2_error for o in literal.outputs) < 1e-5
    assert max(o.relative_l2_error for o in fused.outputs) > max(o.relative_l2_error for o in literal.outputs)
