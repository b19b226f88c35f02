"""The fold format: compressed models run in onnxruntime, decode bit-exactly, and check clean."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
from conftest import (
    WEIGHT_NAMES,
    control_flow_model,
    default_opset,
    float_tensor_names,
    make_model,
    matmul_model,
    op_counts,
    randn,
    reference_weights,
    replace_weights,
    run,
    session,
    tiny_model,
    unpack_bits,
    value,
    with_outputs,
)
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.check.decompress import decompress_model
from onnxq.graph import rewrite
from onnxq.graph.select import find_weights, iter_graphs
from onnxq.quant import layout
from onnxq.quant.codebooks import CODEBOOKS
from onnxq.quant.packing import packed_size
from onnxq.quant.quantize import quantize
from onnxq.storage import FORMATS, INDICES_SUFFIX
from onnxq.storage.fold import DOMAIN

BITS = range(1, 9)
GRANULARITIES = ("tensor", "channel")
ALL = [(b, c, g) for b in BITS for c in CODEBOOKS for g in GRANULARITIES]
MAX_ULP = 4  # onnxruntime's Exp and numpy's float32 exp differ by up to 2 ulps


def compress(model, bits, codebook, granularity, **options):
    return onnxq.compress_model(
        model, onnxq.Config(bits=bits, codebook=codebook, granularity=granularity, **options)
    )


def test_fold_is_the_registered_format():
    assert "fold" in FORMATS
    assert onnxq.Config().format == "fold"


@pytest.mark.parametrize(("bits", "codebook", "granularity"), ALL)
def test_compressed_model_matches_the_dequantized_weights(bits, codebook, granularity, tiny):
    model, feeds = tiny
    before = model.SerializeToString()
    out, report = compress(model, bits, codebook, granularity)
    assert model.SerializeToString() == before, "compress_model modified its input"
    assert {w.name for w in report.weights} == set(WEIGHT_NAMES)

    onnx.checker.check_model(out, full_check=True)
    assert default_opset(out) == default_opset(model) == 13
    assert any(i.domain == DOMAIN for i in out.opset_import)
    # No float copy of any compressed weight survives in the file.
    assert not float_tensor_names(out) & set(WEIGHT_NAMES)
    assert all(".onnxq." in n for n in float_tensor_names(out) - {"conv.b", "gemm.c"})

    refs = reference_weights(model, bits, codebook, granularity)
    expected = run(replace_weights(model, {k: v[0] for k, v in refs.items()}), feeds)
    got = run(out, feeds)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * np.abs(e).max())

    # The weights as the graph decodes them, read back through graph outputs.
    decoded = run(with_outputs(out, list(WEIGHT_NAMES)), feeds)
    for name, w in zip(WEIGHT_NAMES, decoded):
        assert w.shape == refs[name][0].shape
        np.testing.assert_array_max_ulp(w, refs[name][0], maxulp=MAX_ULP)


def decoder_codes(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    """The codes that the decoder's GatherElements picks levels with, read out of the graph."""
    inlined = onnx.inliner.inline_local_functions(model)
    gathers = [n for n in inlined.graph.node if n.op_type == "GatherElements"]
    assert len(gathers) == 1, "expected one decoder"
    name = gathers[0].input[1]
    inferred = onnx.shape_inference.infer_shapes(inlined)
    dtype = next(v.type.tensor_type.elem_type for v in inferred.graph.value_info if v.name == name)
    return run(with_outputs(inlined, [name], dtype), feeds)[0]


@pytest.mark.parametrize(("bits", "codebook", "granularity"), ALL)
def test_unpacking_is_bit_exact(bits, codebook, granularity, rng):
    # 37 x 13 = 481 weights: not a multiple of 8; MatMul B is grouped along axis 1.
    w = (randn(rng, 37, 13) * np.exp(rng.normal(0, 1.5, 13))).astype(np.float32)
    model, feeds = matmul_model(w)
    out, _ = compress(model, bits, codebook, granularity, min_elements=1)
    ((_, q),) = reference_weights(model, bits, codebook, granularity, min_elements=1).values()

    # The stored blob is exactly ceil(n/8)*b bytes and unpacks to the codes.
    (blob,) = [t for t in out.graph.initializer if t.name.endswith(INDICES_SUFFIX)]
    assert blob.name == f"Decode_{q.codebook}_{bits}{INDICES_SUFFIX}"
    assert blob.data_type == TensorProto.UINT8
    packed = numpy_helper.to_array(blob)
    assert packed.size == packed_size(w.size, bits)
    np.testing.assert_array_equal(unpack_bits(packed, bits, w.size), q.codes.ravel())

    # The graph's own unpacking yields the very same codes, group by group.
    codes = decoder_codes(out, feeds)
    np.testing.assert_array_equal(codes.reshape(q.codes.shape), q.codes)

    # And each weight decodes to the level of its code (to the last few ulps of Exp).
    decoded = run(with_outputs(out, ["W"]), feeds)[0]
    rows = decoded.T if q.groups > 1 else decoded.reshape(1, -1)
    levels = np.take_along_axis(q.level_table(), q.codes.astype(np.int64), axis=1)
    np.testing.assert_array_max_ulp(rows, levels, maxulp=MAX_ULP)
    # Bit-exact consistency: equal codes in a group decode to identical floats.
    for g in range(q.groups):
        for code in np.unique(q.codes[g]):
            assert np.unique(rows[g][q.codes[g] == code]).size == 1


def test_ir_3_model_with_initializers_as_inputs(rng):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "ir3",
        [value("x", [1, 32]), value("W", [32, 32])],
        [value("y", [1, 32])],
        [numpy_helper.from_array(randn(rng, 32, 32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=3)
    onnx.checker.check_model(model)
    out, report = onnxq.compress_model(model)
    assert [w.name for w in report.weights] == ["W"]
    onnx.checker.check_model(out, full_check=True)


def test_onnxruntime_folds_the_decoders_into_constants(tiny, tmp_path):
    out, _ = compress(tiny[0], 5, "exponential", "channel")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "folded.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(out.SerializeToString(), options, providers=["CPUExecutionProvider"])
    counts = op_counts(onnx.load(tmp_path / "folded.onnx"))
    assert not {"GatherElements", "BitShift", "Exp"} & set(counts), counts
    assert counts["Conv"] == 1 and counts["Gemm"] == 2


def test_one_call_decodes_every_weight_of_a_codebook_and_width(tiny):
    out, _ = compress(tiny[0], 4, "linear", "channel")
    assert [(f.domain, f.name) for f in out.functions] == [(DOMAIN, "Decode_linear_4")]
    (call,) = [n for n in out.graph.node if n.domain == DOMAIN]
    assert len(call.output) == len(WEIGHT_NAMES)
    names = [t.name for t in out.graph.initializer if ".onnxq." in t.name]
    suffixes = ("indices", "codebook", "ranges")
    assert sorted(names) == sorted(f"Decode_linear_4.onnxq.{s}" for s in suffixes)
    # Standard ops only: the function calls nothing else.
    assert {n.domain for f in out.functions for n in f.node} <= {"", "ai.onnx"}


def test_mixed_widths_get_a_call_each(rng, tmp_path):
    model, feeds = tiny_model()
    weights, _ = find_weights(model, 1)
    items = [
        (w, quantize(layout.group_rows(w, "channel"), CODEBOOKS["exponential"], 3 + i % 4, "lsq"))
        for i, w in enumerate(weights)
    ]
    rewrite.replace_weights(model, list(items), FORMATS["fold"])  # it empties the list it gets
    names = sorted(f.name for f in model.functions)
    assert names == sorted({f"Decode_exponential_{q.bits}" for _, q in items})
    onnx.checker.check_model(model, full_check=True)
    decoded = run(with_outputs(model, [w.name for w, _ in items]), feeds)
    for (w, q), got in zip(items, decoded):
        rows = layout.group_rows(onnx_weight(got, w), "channel")
        np.testing.assert_array_max_ulp(rows, q.dequantized, maxulp=MAX_ULP)


def test_weights_in_a_subgraph_get_their_own_call(rng):
    model, feeds = control_flow_model()
    out, report = onnxq.compress_model(model, onnxq.Config(bits=5, min_elements=1))
    onnx.checker.check_model(out, full_check=True)
    names = [f.name for f in out.functions]
    assert len(names) == len(set(names)) >= 3, names  # main graph, then branch, else branch, loop body
    # Each subgraph's weights decode to their quantized values: the outputs equal those
    # of the model whose weights are the dequantized ones (decompress checks its own).
    refs = reference_weights(model, 5, "exponential", min_elements=1)
    assert {w.name for w in report.weights} == set(refs)
    floats, count = decompress_model(out)
    assert count == len(refs)
    for got, want in zip(run(out, feeds), run(floats, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    decoded = {t.name: numpy_helper.to_array(t) for g in iter_graphs(floats.graph) for t in g.initializer}
    decoded |= {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for g in iter_graphs(floats.graph)
        for n in g.node
        if n.op_type == "Constant"
    }
    for name, (want, _) in refs.items():
        np.testing.assert_array_max_ulp(decoded[name], want, maxulp=MAX_ULP)


def onnx_weight(value, weight):
    """A decoded array dressed as the Weight it replaces, for group_rows."""
    return replace(weight, array=value)


def test_old_ir_versions_get_the_decoders_inlined(tiny):
    model, feeds = tiny
    old = onnx.ModelProto()
    old.CopyFrom(model)
    old.ir_version = 7
    out, report = compress(old, 5, "exponential", "channel")
    assert out.ir_version == 7
    assert len(out.functions) == 0
    assert all(i.domain != DOMAIN for i in out.opset_import)
    assert all(n.domain in ("", "ai.onnx") for n in out.graph.node)
    assert any("inlined" in n for n in report.notes)
    onnx.checker.check_model(out, full_check=True)
    new, _ = compress(model, 5, "exponential", "channel")
    for a, b in zip(run(out, feeds), run(new, feeds)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("opset", [11, 12, 13, 17, 18, 21])
def test_the_models_opset_is_kept(opset, rng):
    w = randn(rng, 32, 24)
    model, feeds = matmul_model(w, opset=opset)
    out, _ = compress(model, 4, "exponential", "channel")
    assert default_opset(out) == opset
    assert out.functions[0].opset_import[0].version == opset
    onnx.checker.check_model(out, full_check=True)
    ((deq, _),) = reference_weights(model, 4, "exponential").values()
    np.testing.assert_allclose(run(out, feeds)[0], feeds["x"] @ deq, rtol=1e-4, atol=1e-4)


def test_opset_below_11_is_upgraded_and_still_runs(rng):
    model, feeds = matmul_model(randn(rng, 32, 24), opset=10)
    out, report = onnxq.compress_model(model)
    assert any("from 10 to 11" in n for n in report.notes)
    assert [i.version for i in out.opset_import if i.domain == ""] == [11]
    onnx.checker.check_model(out, full_check=True)
    assert run(out, feeds)[0].shape == run(model, feeds)[0].shape


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_half_and_double_weights_keep_their_type(dtype, rng):
    w = randn(rng, 32, 24).astype(dtype)
    model, feeds = matmul_model(w)
    out, report = compress(model, 6, "exponential", "channel")
    assert [x.name for x in report.weights] == ["W"]
    decoded = run(with_outputs(out, ["W"], helper.np_dtype_to_tensor_dtype(np.dtype(dtype))), feeds)[0]
    assert decoded.dtype == dtype
    ((deq, _),) = reference_weights(model, 6, "exponential").values()
    np.testing.assert_allclose(decoded, deq, rtol=2e-3 if dtype == np.float16 else 1e-6)
    ref = run(replace_weights(model, {"W": deq}), feeds)[0]
    np.testing.assert_allclose(run(out, feeds)[0], ref, rtol=1e-2 if dtype == np.float16 else 1e-5, atol=1e-2)


def test_matmul_with_a_rank_3_weight(rng):
    w = randn(rng, 2, 16, 12)
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [value("x", [2, 3, 16])],
        [value("y", [2, 3, 12])],
        [numpy_helper.from_array(w, "W")],
    )
    feeds = {"x": randn(rng, 2, 3, 16)}
    out, report = compress(model, 5, "linear", "channel")
    assert report.weights[0].groups == 12  # the output-feature axis
    ((deq, _),) = reference_weights(model, 5, "linear").values()
    np.testing.assert_allclose(run(out, feeds)[0], feeds["x"] @ deq, rtol=1e-4, atol=1e-4)


def test_an_already_compressed_model_has_nothing_left_to_compress(tiny):
    out, _ = compress(tiny[0], 5, "exponential", "channel")
    again, report = onnxq.compress_model(out)
    assert report.weights == []
    assert any("no compressible weights" in n for n in report.notes)
    feeds = tiny[1]
    for a, b in zip(run(out, feeds), run(again, feeds)):
        np.testing.assert_array_equal(a, b)


def test_per_channel_codebooks_are_per_output_channel(rng):
    # Channels whose scales differ by 1000x are each reproduced well per channel,
    # but the small ones collapse with a single per-tensor codebook.
    w = randn(rng, 64, 16) * np.logspace(-3, 0, 16, dtype=np.float32)
    model, _ = matmul_model(w)
    _, channel = compress(model, 4, "exponential", "channel")
    _, tensor = compress(model, 4, "exponential", "tensor")
    assert channel.weights[0].groups == 16 and tensor.weights[0].groups == 1

    def column_sqnr(deq):
        return 10 * np.log10((w**2).sum(0) / ((w - deq) ** 2).sum(0))

    per_channel = column_sqnr(reference_weights(model, 4, "exponential", "channel")["W"][0])
    per_tensor = column_sqnr(reference_weights(model, 4, "exponential", "tensor")["W"][0])
    assert per_channel.min() > 15
    assert per_tensor[0] < per_channel[0] - 10


def test_session_loads_in_onnxruntime_without_custom_ops(tiny):
    out, _ = compress(tiny[0], 3, "linear", "tensor")
    sess = session(out)
    assert [i.name for i in sess.get_inputs()] == ["x", "ids"]
    assert [o.name for o in sess.get_outputs()] == ["y", "e"]


def test_a_batch_stops_at_batch_weights(tiny, monkeypatch):
    from onnxq.storage import fold

    model, feeds = tiny
    whole, _ = compress(model, 5, "exponential", "channel")
    monkeypatch.setattr(fold, "BATCH_WEIGHTS", 600)  # the tiny model's weights hold a few hundred each
    split, report = compress(model, 5, "exponential", "channel")
    names = [f.name for f in split.functions]
    assert len(names) > 1 and names[0] == "Decode_exponential_5" and names[1] == "Decode_exponential_5_1"
    elements = {w.name: w.elements for w in report.weights}
    calls = [n for n in split.graph.node if n.domain == DOMAIN]
    assert len(calls) == len(names)
    for call in calls:
        held = [elements[o.split(".onnxq.")[0]] for o in call.output]
        assert len(held) == 1 or sum(held) <= 600, held
    for got, want in zip(run(split, feeds), run(whole, feeds)):
        np.testing.assert_array_equal(got, want)


def _intermediate_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every tensor the decoders make on the way to the weights (onnxruntime keeps each
    one while it folds them at session creation), from the inlined graph's inferred shapes."""
    inlined = onnx.shape_inference.infer_shapes(onnx.inliner.inline_local_functions(model), data_prop=True)
    graph = inlined.graph
    known = {v.name: v.type.tensor_type for v in [*graph.value_info, *graph.output]}
    total = 0
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv"):
            continue
        for out in node.output:
            t = known.get(out)
            if t is None or not all(d.HasField("dim_value") for d in t.shape.dim):
                continue
            size = int(np.prod([d.dim_value for d in t.shape.dim]))
            total += size * helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
    return total


def test_a_large_weight_is_decoded_alone_with_few_copies():
    """onnxruntime keeps every folded intermediate until the session is ready: a weight of 2^20
    elements gets a call of its own whose unpacking makes the int32 index (4 bytes per 8 codes
    per bit), each code's bits (1 byte per bit) and their planes, the int32 codes, one Reshape of
    them, the float weight and its Transpose back: b / 2 + 2b + 4 + 4 + 4 + 4 bytes per weight at
    b = 5 (and no Split), where a batch's Split and Reshapes made 40; and the levels."""
    from onnxq.storage import fold

    big = randn(np.random.default_rng(0), 1024, fold.ALONE // 1024)
    out, _ = compress(matmul_model(big)[0], 5, "exponential", "channel")
    assert len([n for n in out.graph.node if n.domain == DOMAIN]) == 1
    (function,) = out.functions
    assert "Split" not in {n.op_type for n in function.node}
    levels = 6 * 4 * big.shape[1] * 2**5  # the float32 steps that build each channel's 32 levels
    assert _intermediate_bytes(out) <= (2.5 + 5 + 5 + 4 + 4 + 4 + 4) * big.size + levels + 2**16
    _, feeds = matmul_model(big)
    np.testing.assert_allclose(
        run(out, feeds)[0], run(decompress_model(out)[0], feeds)[0], rtol=1e-5, atol=1e-5
    )
