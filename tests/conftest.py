"""Shared helpers: tiny seeded models built in code, onnxruntime runs, reference weights."""

from __future__ import annotations

import atexit
import hashlib
import re
import shutil
import signal
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir
from onnx import TensorProto, helper, numpy_helper

from onnxq.graph.select import find_weights, iter_graphs
from onnxq.quant.codebooks import CODEBOOKS
from onnxq.quant.layout import group_rows
from onnxq.quant.quantize import quantize, with_codes
from onnxq.refine.gptq import gptq_codes

OPSET = 13
IR_VERSION = 8
SEED = 0
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODELS = SHARED / "models"
IMAGES = SHARED / "data" / "imagenet-sample"
TOOLS = Path(__file__).resolve().parents[1] / "tools"

# Hypothesis keeps no example database (the suite writes nothing outside tmp folders) and
# draws the same examples on every run, so CI results do not depend on luck.
settings.register_profile("onnxq", database=None, deadline=None, derandomize=True)
settings.load_profile("onnxq")
# Hypothesis also caches source constants under ./.hypothesis: keep that out of the repo too.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="onnxq-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)

# A shell that starts the suite in the background (`bash .ci/run &` in a script) ignores SIGINT
# for it, and every process it starts inherits that, onnxq's subprocesses too. The signal tests
# send Ctrl-C on purpose: give it back its terminal meaning (a caught signal resets to the default
# in a child, where Python raises KeyboardInterrupt for it again).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Figures that tests measure and want shown at the end of the run (see pytest_terminal_summary).
MEASUREMENTS: dict[str, str] = {}


def pytest_terminal_summary(terminalreporter) -> None:
    if MEASUREMENTS:
        terminalreporter.section("onnxq measurements")
        for key, value in MEASUREMENTS.items():
            terminalreporter.write_line(f"{key}: {value}")


# ---------------------------------------------------------------------------
# Building models


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] = (),
    opset: int = OPSET,
    ir_version: int = IR_VERSION,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    onnx.checker.check_model(model, full_check=True)
    return model


def value(name: str, shape, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def randn(rng: np.random.Generator, *shape: int, dtype=np.float32) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def tiny_model(seed: int = SEED) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One model with every kind of weight input, and a seeded feed.

    Conv W (+ bias), ConvTranspose W (channel axis 1), MatMul constant B (axis 1),
    Gemm B with transB=1 (axis 0, + bias C), Gemm B without trans (axis 1), and a
    Gather embedding table. Every weight has >= 128 elements and a length that is
    not always a multiple of 8.
    """
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(randn(rng, 8, 3, 3, 3), "conv.w"),
        numpy_helper.from_array(randn(rng, 8), "conv.b"),
        numpy_helper.from_array(randn(rng, 8, 4, 3, 3) * 0.2, "convt.w"),
        numpy_helper.from_array(randn(rng, 400, 24) * 0.05, "mm.b"),
        numpy_helper.from_array(randn(rng, 13, 24) * 0.3, "gemm.b"),
        numpy_helper.from_array(randn(rng, 13), "gemm.c"),
        numpy_helper.from_array(randn(rng, 13, 11) * 0.3, "gemm2.b"),
        numpy_helper.from_array(randn(rng, 41, 7), "emb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c1"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("ConvTranspose", ["c1", "convt.w"], ["c2"], name="convt"),
        helper.make_node("Flatten", ["c2"], ["flat"]),
        helper.make_node("MatMul", ["flat", "mm.b"], ["m1"], name="mm"),
        helper.make_node("Gemm", ["m1", "gemm.b", "gemm.c"], ["g1"], transB=1, name="gemm"),
        helper.make_node("Gemm", ["g1", "gemm2.b"], ["y"], name="gemm2"),
        helper.make_node("Gather", ["emb", "ids"], ["e"], name="gather"),
    ]
    model = make_model(
        nodes,
        [value("x", [1, 3, 8, 8]), value("ids", [6], TensorProto.INT64)],
        [value("y", [1, 11]), value("e", [6, 7])],
        inits,
    )
    feeds = {"x": randn(rng, 1, 3, 8, 8), "ids": np.array([0, 3, 40, 7, 7, 12], np.int64)}
    return model, feeds


WEIGHT_NAMES = ("conv.w", "convt.w", "mm.b", "gemm.b", "gemm2.b", "emb")


def decoder_model(layers: int = 4, width: int = 48, seed: int = 0) -> onnx.ModelProto:
    """An embedding, then residual MLP layers of two MatMuls each (one weight read through a
    Transpose, a weight-only node), and a tied output head reading the embedding again."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(randn(rng, 97, width) * 0.5, "emb")]
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["h0"])]
    for i in range(layers):
        inits += [
            numpy_helper.from_array(randn(rng, width, 2 * width) * 0.2, f"up{i}"),
            numpy_helper.from_array(randn(rng, width, 2 * width) * 0.2, f"down{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [f"h{i}", f"up{i}"], [f"a{i}"]),
            helper.make_node("Tanh", [f"a{i}"], [f"t{i}"]),
            helper.make_node("Transpose", [f"down{i}"], [f"down{i}.T"]),
            helper.make_node("MatMul", [f"t{i}", f"down{i}.T"], [f"m{i}"]),
            helper.make_node("Add", [f"h{i}", f"m{i}"], [f"h{i + 1}"]),
        ]
    nodes += [
        helper.make_node("Transpose", ["emb"], ["emb.T"]),
        helper.make_node("MatMul", [f"h{layers}", "emb.T"], ["logits"]),
    ]
    return make_model(
        nodes, [value("ids", [1, "seq"], TensorProto.INT64)], [value("logits", [1, "seq", 97])], inits
    )


def matmul_model(
    weight: np.ndarray, name: str = "W", opset: int = OPSET, ir_version: int = IR_VERSION
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """y = x @ W for a constant (K, N) weight, with a seeded feed."""
    k, n = weight.shape
    elem = helper.np_dtype_to_tensor_dtype(weight.dtype)
    model = make_model(
        [helper.make_node("MatMul", ["x", name], ["y"], name="mm")],
        [value("x", [2, k], elem)],
        [value("y", [2, n], elem)],
        [numpy_helper.from_array(weight, name)],
        opset=opset,
        ir_version=ir_version,
    )
    feeds = {"x": np.random.default_rng(SEED + 1).standard_normal((2, k)).astype(weight.dtype)}
    return model, feeds


# ---------------------------------------------------------------------------
# Running models


def session(model: onnx.ModelProto | bytes | str | Path, optimize: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # The suite's own sessions run tiny models between numpy work: idle onnxruntime threads that
    # busy-wait only burn the CPU budget the suite has (5 CPU-minutes, DEVELOPERS.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run(model, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
    return session(model).run(outputs, feeds)


def with_outputs(model: onnx.ModelProto, names: list[str], dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """A copy of the model whose outputs are the main-graph tensors `names`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.output[:]
    out.graph.output.extend(value(n, None, dtype) for n in names)
    return out


# ---------------------------------------------------------------------------
# The reference: what each weight should decode to


def reference_weights(
    model: onnx.ModelProto,
    bits: int,
    codebook: str,
    granularity: str = "channel",
    scale: str = "lsq",
    min_elements: int = 128,
) -> dict[str, tuple[np.ndarray, object]]:
    """name -> (QuantizedTensor.dequantized in the weight's own layout and dtype, QuantizedTensor).

    Computed through the library's own selection and quantizer, independently of
    the storage format and the graph rewrite.
    """
    weights, _ = find_weights(model, min_elements)
    refs = {}
    for w in weights:
        q = quantize(group_rows(w, granularity), CODEBOOKS[codebook], bits, scale)
        deq = q.dequantized
        if q.groups > 1:
            moved = np.moveaxis(w.array, w.axis, 0).shape
            deq = np.moveaxis(deq.reshape(moved), 0, w.axis)
        refs[w.name] = (deq.reshape(w.array.shape).astype(w.array.dtype), q)
    return refs


def rename_weight(model: onnx.ModelProto, old: str, new: str) -> onnx.ModelProto:
    """The model with initializer old renamed new, and every node input that read it."""
    for t in model.graph.initializer:
        if t.name == old:
            t.name = new
    for node in model.graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
    return model


def replace_weights(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy with the named initializers / Constant values (in any subgraph) replaced."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    found = set()
    for graph in iter_graphs(out.graph):
        for init in graph.initializer:
            if init.name in arrays:
                init.CopyFrom(numpy_helper.from_array(arrays[init.name], init.name))
                found.add(init.name)
        for node in graph.node:
            if node.op_type == "Constant" and node.output[0] in arrays:
                for attr in node.attribute:
                    if attr.name == "value":
                        attr.t.CopyFrom(numpy_helper.from_array(arrays[node.output[0]]))
                        found.add(node.output[0])
    assert found == set(arrays), f"not found: {set(arrays) - found}"
    return out


# ---------------------------------------------------------------------------
# Inspecting models


def op_counts(model: onnx.ModelProto) -> Counter:
    """op_type -> count over the graph and all subgraphs (not inside functions)."""
    return Counter(n.op_type for g in iter_graphs(model.graph) for n in g.node)


def check_op_type_count(model: onnx.ModelProto, **expected: int) -> None:
    counts = op_counts(model)
    for op, n in expected.items():
        assert counts.get(op, 0) == n, f"{op}: expected {n}, found {counts.get(op, 0)}"


def float_tensor_names(model: onnx.ModelProto) -> set[str]:
    """Names of every float initializer or Constant tensor, in every graph."""
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
    names = set()
    for g in iter_graphs(model.graph):
        names |= {t.name for t in g.initializer if t.data_type in floats}
        for node in g.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value" and attr.t.data_type in floats:
                        names.add(node.output[0])
    return names


def default_opset(model: onnx.ModelProto) -> int:
    return next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


@pytest.fixture
def tiny():
    return tiny_model()


@pytest.fixture
def tiny_path(tmp_path, tiny) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny[0], path)
    return path


def control_flow_model(seed: int = SEED) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Weights inside If branches (an initializer and a Constant node) and a Loop body.

    y = If(cond, x @ then.w, x @ else.w) ; z = Loop(3 times: v <- tanh(v @ loop.w)) from x;
    k = x @ const.w with const.w a main-graph Constant node.
    """
    rng = np.random.default_rng(seed)
    then_graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "then.w"], ["then.y"], name="then.mm")],
        "then",
        [],
        [value("then.y", [1, 32])],
        [numpy_helper.from_array(randn(rng, 16, 32), "then.w")],
    )
    else_graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["else.w"], value=numpy_helper.from_array(randn(rng, 16, 32))),
            helper.make_node("MatMul", ["x", "else.w"], ["else.y"], name="else.mm"),
        ],
        "else",
        [],
        [value("else.y", [1, 32])],
    )
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["v_in", "loop.w"], ["v_mm"], name="loop.mm"),
            helper.make_node("Tanh", ["v_mm"], ["v_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [value("i", [], TensorProto.INT64), value("cond_in", [], TensorProto.BOOL), value("v_in", [1, 16])],
        [value("cond_out", [], TensorProto.BOOL), value("v_out", [1, 16])],
        [numpy_helper.from_array(randn(rng, 16, 16) * 0.3, "loop.w")],
    )
    nodes = [
        helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph, name="if"),
        helper.make_node("Loop", ["trips", "", "x"], ["z"], body=body, name="loop"),
        helper.make_node("Constant", [], ["const.w"], value=numpy_helper.from_array(randn(rng, 16, 12))),
        helper.make_node("MatMul", ["x", "const.w"], ["k"], name="const.mm"),
    ]
    model = make_model(
        nodes,
        [value("cond", [], TensorProto.BOOL), value("x", [1, 16])],
        [value("y", [1, 32]), value("z", [1, 16]), value("k", [1, 12])],
        [numpy_helper.from_array(np.array(3, np.int64), "trips")],
    )
    return model, {"cond": np.array(True), "x": randn(rng, 1, 16)}


def no_weights_model(tmp_path: Path, rng) -> Path:
    """A saved model whose only float tensor is an Add operand: nothing to compress."""
    model = make_model(
        [helper.make_node("Add", ["x", "b"], ["y"])],
        [value("x", [4])],
        [value("y", [4])],
        [numpy_helper.from_array(randn(rng, 4), "b")],
    )
    src = tmp_path / "add.onnx"
    onnx.save(model, src)
    return src


def save_external(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    model = onnx.ModelProto.FromString(model.SerializeToString())  # onnx.save externalizes in place
    onnx.save(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.bin",
        size_threshold=0,
    )
    return path


def relocate(path: Path, location: str) -> None:
    """Point every external tensor of the saved model at `location`."""
    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())


def small_cnn(batch: int | str = "N", seed: int = 0) -> onnx.ModelProto:
    """conv3x3 -> relu -> depthwise 3x3 -> relu -> conv1x1 -> global pool -> gemm: real layer kinds."""
    rng = np.random.default_rng(seed)

    def t(name, *shape, scale=1.0):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        t("stem.w", 32, 3, 3, 3, scale=0.3),
        t("stem.b", 32, scale=0.1),
        t("dw.w", 32, 1, 3, 3, scale=0.5),
        t("pw.w", 1024, 32, 1, 1, scale=0.18),
        t("fc.w", 10, 1024, scale=0.05),
        t("fc.b", 10, scale=0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "stem.w", "stem.b"], ["a"], pads=[1, 1, 1, 1], name="stem"),
        helper.make_node("Relu", ["a"], ["a1"]),
        helper.make_node("Conv", ["a1", "dw.w"], ["b"], pads=[1, 1, 1, 1], group=32, name="dw"),
        helper.make_node("Relu", ["b"], ["b1"]),
        helper.make_node("Conv", ["b1", "pw.w"], ["c"], name="pw"),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1, name="fc"),
    ]
    return make_model(nodes, [value("x", [batch, 3, 12, 12])], [value("y", [batch, 10])], inits)


def unpack_bits(blob: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Invert pack_bits: the first count codes, as uint8."""
    planes = np.unpackbits(np.asarray(blob, dtype=np.uint8).reshape(bits, -1), axis=1)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.uint8)
    return (
        (weights @ planes.astype(np.uint16)).astype(np.uint8)[:count]
        if planes.size
        else np.zeros(0, np.uint8)
    )


def gptq(q, rows, hessian):
    """q with codes from gptq_codes, for rows laid out as q's own groups (O, K)."""
    return with_codes(q, rows, gptq_codes(q, rows, hessian).reshape(q.codes.shape))


def without_progress(text: str) -> str:
    """stderr without the CLI's timestamped progress lines (onnxq/progress.py)."""
    return "\n".join(line for line in text.splitlines() if not re.match(r"^\[ *\d+ s\] ", line))
