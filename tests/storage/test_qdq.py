"""The qdq format: one DequantizeLinear per weight, k * step exactly, at the opset it needs."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import SEED, make_model, matmul_model, op_counts, randn, value, with_outputs
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import onnxq
from onnxq.cli import app
from onnxq.errors import OnnxqError
from onnxq.graph.select import find_weights
from onnxq.quant import layout
from onnxq.quant.codebooks import CODEBOOKS, magnitude_count
from onnxq.quant.quantize import quantize
from onnxq.storage import FORMATS

BITS = range(1, 9)
GRANULARITIES = ("tensor", "channel")
ELEMENT = {1: TensorProto.INT2, 2: TensorProto.INT2, 3: TensorProto.INT4, 4: TensorProto.INT4}
OPSET = {1: 25, 2: 25, 3: 21, 4: 21}  # 5..8 bits: the test models' own 13
# fold rebuilds k * step as exp(ln k + ln step) in onnxruntime: a few ulps from k * step.
FOLD_ULP = 8


def conv_model(kernel: int = 3, seed: int = SEED) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """y = Conv(x, W) + b for a seeded (16, 8, kernel, kernel) weight."""
    rng = np.random.default_rng(seed)
    w = randn(rng, 16, 8, kernel, kernel) * 0.2
    model = make_model(
        [helper.make_node("Conv", ["x", "W", "b"], ["y"], name="conv")],
        [value("x", [1, 8, 6, 6])],
        [value("y", [1, 16, 7 - kernel, 7 - kernel])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(randn(rng, 16), "b")],
    )
    return model, {"x": randn(rng, 1, 8, 6, 6)}


def mm_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    return matmul_model(randn(np.random.default_rng(SEED), 96, 24) * 0.1)


MODELS = {"matmul": mm_model, "conv": conv_model}


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """Exact arithmetic: MatMulNBits (which onnxruntime fuses DequantizeLinear + MatMul into) at
    accuracy level 0 instead of its default 4 (int8 activations, about 5e-3 relative error)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def decoded(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return session(with_outputs(model, ["W"])).run(["W"], feeds)[0]


def expected(model: onnx.ModelProto, bits: int, granularity: str, group_size: int | None = None):
    """k * step in float32 from the quantizer alone, in the weight's layout."""
    (w,) = find_weights(model, 128)[0]
    q = quantize(layout.group_rows(w, granularity, group_size), CODEBOOKS["linear"], bits, "lsq")
    table = q.level_table()
    m = magnitude_count(bits)
    if bits == 1:
        k, step = 2 * q.codes.astype(np.float32) - 1, table[:, 1]
    else:
        k, step = q.codes.astype(np.float32) - m, table[:, m + 1]
    values = k * step[:, None]
    if q.groups == 1:
        return values.reshape(w.array.shape), q
    moved = np.moveaxis(w.array, w.axis, 0).shape
    return np.moveaxis(values.reshape(moved), 0, w.axis), q


def compress(model, bits, granularity="channel", fmt="qdq", **options):
    config = onnxq.Config(bits=bits, codebook="linear", granularity=granularity, format=fmt, **options)
    return onnxq.compress_model(model, config)


def ulps(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64)).max())


def test_qdq_is_registered():
    assert FORMATS["qdq"].NAME == "qdq"
    onnxq.Config(format="qdq", codebook="linear").check()


@pytest.mark.parametrize("fmt", ["qdq", "matmulnbits"])
def test_without_a_codebook_the_formats_of_evenly_spaced_levels_take_linear(fmt):
    assert onnxq.Config(format=fmt, bits=4).codebook == "linear"
    # at any width and with --target-bits too, so that a width the format lacks is what an error names
    assert onnxq.Config(format=fmt, bits=3).codebook == "linear"
    assert onnxq.Config(format=fmt, target_bits=3.0).codebook == "linear"
    assert onnxq.Config(format="fold").codebook == "exponential"
    model, _ = MODELS[next(iter(MODELS))]()
    _, report = onnxq.compress_model(model, onnxq.Config(format=fmt, bits=4, min_elements=1))
    assert report.config["codebook"] == "linear" and report.weights


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bits", BITS)
def test_decodes_k_times_step_exactly(kind, granularity, bits):
    model, feeds = MODELS[kind]()
    out, report = compress(model, bits, granularity)
    assert op_counts(out)["DequantizeLinear"] == 1
    assert not out.functions
    indices = next(t for t in out.graph.initializer if t.name == "W.onnxq.indices")
    assert indices.data_type == ELEMENT.get(bits, TensorProto.INT8)
    assert tuple(indices.dims) == tuple(find_weights(model, 128)[0][0].array.shape)
    assert out.opset_import[0].version == OPSET.get(bits, 13)
    want, q = expected(model, bits, granularity)
    got = decoded(out, feeds)
    np.testing.assert_array_equal(got, want)  # bit-exact: DequantizeLinear is k * step in float32

    folded, _ = compress(model, bits, granularity, fmt="fold")
    assert ulps(got, decoded(folded, feeds)) <= FOLD_ULP
    y, y_fold = session(out).run(None, feeds)[0], session(folded).run(None, feeds)[0]
    np.testing.assert_allclose(y, y_fold, rtol=1e-5, atol=1e-6 * np.abs(y_fold).max())
    assert report.output.indices == len(indices.raw_data)
    assert report.output.codebooks == 4 * q.groups


@pytest.mark.parametrize("codebook", [c for c in CODEBOOKS if c != "linear"])
def test_other_codebooks_fail_early_naming_the_formats_that_can(codebook):
    config = onnxq.Config(codebook=codebook, format="qdq")
    with pytest.raises(OnnxqError) as info:
        config.check()
    message = str(info.value)
    assert "\n" not in message
    assert "--codebook linear" in message and "--format fold" in message and codebook in message


def test_cli_rejects_a_nonlinear_codebook_and_writes_nothing(tmp_path):
    model, _ = mm_model()
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    args = ["compress", str(src), str(dst), "--format", "qdq", "--codebook", "exponential"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --format qdq stores only --codebook linear")
    assert "Traceback" not in result.stderr + result.stdout
    assert not dst.exists() and list(tmp_path.iterdir()) == [src]


@pytest.mark.parametrize(("bits", "opset", "ir"), [(2, 25, 13), (4, 21, 10), (8, 13, 8)])
def test_opset_upgrade_is_reported(bits, opset, ir):
    model, feeds = mm_model()
    out, report = compress(model, bits)
    assert (out.opset_import[0].version, out.ir_version) == (opset, ir)
    upgraded = [n for n in report.notes if n.startswith("upgraded the default opset")]
    if opset == 13:
        assert not upgraded
    else:
        note = (
            f"upgraded the default opset from 13 to {opset}: --format qdq at these widths needs it "
            f"(and the IR version from 8 to {ir})"
        )
        assert upgraded == [note]
    onnx.checker.check_model(out, full_check=True)
    session(out).run(None, feeds)


def test_a_width_below_its_type_is_noted():
    model, _ = mm_model()
    assert "3-bit linear levels stored as INT4 (4 bits per weight on disk)" in compress(model, 3)[1].notes
    assert not [n for n in compress(model, 4)[1].notes if "stored as" in n]


@pytest.mark.parametrize(("bits", "stored"), [(4, 4), (8, 8), (2, 2)])
def test_file_holds_the_stored_bits_per_weight(tmp_path, bits, stored):
    weight = randn(np.random.default_rng(SEED), 512, 256) * 0.05
    model, _ = matmul_model(weight)
    out, report = compress(model, bits)
    path = tmp_path / "q.onnx"
    onnx.save(out, path)
    payload = weight.size * stored / 8
    assert report.output.indices == payload
    assert payload <= path.stat().st_size <= 1.03 * payload + 4 * 256 + 1024


@pytest.mark.parametrize(("kind", "group_size"), [("matmul", 32), ("gemm", 16), ("conv1x1", 4)])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_blocked_weights_map_to_block_size(kind, group_size, bits):
    rng = np.random.default_rng(SEED)
    if kind == "matmul":
        model, feeds = mm_model()  # W (96, 24), channel axis 1: blocks along axis 0
        block_axis, scale_shape = 0, [3, 24]
    elif kind == "gemm":  # W (24, 64) with transB: channel axis 0, blocks along axis 1
        model = make_model(
            [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
            [value("x", [2, 64])],
            [value("y", [2, 24])],
            [numpy_helper.from_array(randn(rng, 24, 64), "W")],
        )
        feeds = {"x": randn(rng, 2, 64)}
        block_axis, scale_shape = 1, [24, 4]
    else:
        model, feeds = conv_model(kernel=1)  # W (16, 8, 1, 1)
        block_axis, scale_shape = 1, [16, 2, 1, 1]
    out, _ = compress(model, bits, group_size=group_size)
    (node,) = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"axis": block_axis, "block_size": group_size}
    scale = next(t for t in out.graph.initializer if t.name == "W.onnxq.scale")
    assert list(scale.dims) == scale_shape
    assert out.opset_import[0].version == max(21, OPSET.get(bits, 13))
    want, _ = expected(model, bits, "channel", group_size)
    got = decoded(out, feeds)
    np.testing.assert_array_equal(got, want)
    folded, _ = compress(model, bits, fmt="fold", group_size=group_size)
    assert ulps(got, decoded(folded, feeds)) <= FOLD_ULP


def test_blocks_across_several_input_axes_fail_clearly():
    model, _ = conv_model(kernel=3)  # each channel's 72 weights span (8, 3, 3)
    with pytest.raises(OnnxqError, match="block_size cannot express.*--exclude"):
        compress(model, 4, group_size=8)
    compress(model, 4, fmt="fold", group_size=8)  # fold stores any grouping


def test_default_session_options_use_approximate_matmulnbits():
    """Documented in docs/FORMATS.md: default onnxruntime sessions lose about 5e-3 on a qdq MatMul."""
    model, feeds = mm_model()
    out, _ = compress(model, 4)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    default = ort.InferenceSession(out.SerializeToString(), options, providers=["CPUExecutionProvider"])
    exact = session(out).run(None, feeds)[0]
    error = np.abs(default.run(None, feeds)[0] - exact).max() / np.abs(exact).max()
    assert error < 2e-2


def test_cli_block_size_is_group_size(tmp_path):
    model, _ = mm_model()
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    args = [
        "compress",
        src,
        dst,
        "--format",
        "qdq",
        "--codebook",
        "linear",
        "--bits",
        "4",
        "--block-size",
        "32",
    ]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr
    (node,) = [n for n in onnx.load(dst).graph.node if n.op_type == "DequantizeLinear"]
    assert {a.name: a.i for a in node.attribute} == {"axis": 0, "block_size": 32}


def test_target_bits_budgets_the_stored_widths():
    # qdq stores 3 bits as INT4 and 5-7 as INT8: at the same cost, the wider width has less
    # error, so the allocation only ever picks 2, 4 or 8, and the stored bytes fit the budget.
    rng = np.random.default_rng(SEED)
    sizes = [48, 96, 64, 32]
    inits = [
        numpy_helper.from_array(randn(rng, k, n) * np.exp(rng.normal(0, 1, n)).astype(np.float32), f"w{i}")
        for i, (k, n) in enumerate(itertools.pairwise(sizes))
    ]
    nodes = [
        helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"], name=f"mm{i}")
        for i in range(len(inits))
    ]
    model = make_model(nodes, [value("h0", [2, sizes[0]])], [value(f"h{len(inits)}", [2, sizes[-1]])], inits)
    target = 4.0
    _, report = onnxq.compress_model(
        model, onnxq.Config(format="qdq", codebook="linear", target_bits=target, validate=False)
    )
    widths = {w.bits for w in report.weights}
    assert widths <= {2, 4, 8}, widths
    stored = sum(w.index_bytes + w.codebook_bytes for w in report.weights)
    assert stored <= target * sum(w.elements for w in report.weights) / 8
