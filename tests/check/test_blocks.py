"""Validation block by block (onnxq/check/blocks.py): the graph cut into segments of bounded
weights runs to the same outputs as the whole model, float or compressed, and validation by
blocks reports the numbers whole validation reports."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import control_flow_model, decoder_model, make_model, randn, run, save_external, value
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import onnxq
from onnxq import runtime
from onnxq.check import blocks, validate
from onnxq.data import synthetic
from onnxq.graph import external, io


def feeds(count: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    return [{"ids": rng.integers(0, 97, (1, int(rng.integers(1, 9)))).astype(np.int64)} for _ in range(count)]


@given(budget=st.integers(1, 120_000), layers=st.integers(1, 5))
def test_every_node_runs_once_and_every_crossing_tensor_is_carried(budget, layers):
    graph = decoder_model(layers).graph
    segments = blocks.plan(graph, budget)
    nodes = [n for s in segments for n in s.nodes]
    assert sorted(n.output[0] for n in nodes) == sorted(n.output[0] for n in graph.node)
    weights = {t.name: t for t in graph.initializer}
    made = {i.name for i in graph.input}
    for s in segments:
        assert set(s.inputs) <= made  # read from the graph's inputs or an earlier segment
        own = {o for n in s.nodes for o in n.output}
        assert {x for n in s.nodes for x in n.input if x} <= own | set(s.inputs) | set(s.weights)
        made |= set(s.outputs)
        size = sum(external.stored_bytes(weights[w]) for w in s.weights)
        assert size == s.size
        assert size <= budget or len([n for n in s.nodes if n.op_type == "MatMul"]) <= 1
    for n in graph.node:  # a weight-only node runs in the segment of its reader
        if n.op_type == "Transpose":
            (home,) = [s for s in segments if n in s.nodes]
            assert any(n.output[0] in r.input for r in home.nodes)
    assert {o.name for o in graph.output} <= made


@pytest.mark.parametrize("budget", [1, 20_000, 60_000, 10**9])
@pytest.mark.parametrize("fmt", ["float", "fold", "matmulnbits"])
def test_blocks_give_the_whole_models_outputs(tmp_path, monkeypatch, budget, fmt):
    monkeypatch.setattr(external, "LAZY_BYTES", 0)  # every weight stays in its file: the stub path
    path = save_external(decoder_model(), tmp_path / "src")
    if fmt != "float":
        options = {"bits": 4, "codebook": "linear", "format": "matmulnbits"} if fmt == "matmulnbits" else {}
        out = tmp_path / "out" / "c.onnx"
        out.parent.mkdir()
        onnxq.compress(path, out, jobs=1, validate=False, **options)
        path = out
    samples = feeds()
    got = blocks.run(path, samples, ["logits"], True, "test", budget)
    for sample, (y,) in zip(samples, got):
        np.testing.assert_array_equal(y, run(str(path), sample)[0])


def test_a_segment_decodes_its_weights_once_for_all_its_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(external, "LAZY_BYTES", 0)
    src = save_external(decoder_model(), tmp_path / "src")
    path = tmp_path / "out" / "c.onnx"
    path.parent.mkdir()
    onnxq.compress(src, path, jobs=1, validate=False)
    decoded: list[list[str]] = []
    real = blocks._run_fixed
    monkeypatch.setattr(blocks, "_run_fixed", lambda *a, **k: decoded.append(a[2]) or real(*a, **k))
    samples = feeds(4)
    got = blocks.run(path, samples, ["logits"], True, "test", 20_000)
    names = [n for made in decoded for n in made]
    assert names and len(names) == len(set(names))  # each rebuilt weight once, not once per sample
    assert len(decoded) <= len(blocks.plan(onnx.load(path, load_external_data=False).graph, 20_000))
    whole = runtime.session(str(path), literal=True)  # an optimized one differs at length 1 (1e-5)
    for sample, (y,) in zip(samples, got):
        np.testing.assert_array_equal(y, whole.run(["logits"], sample)[0])
    decoded.clear()
    blocks.run(path, samples[:1], ["logits"], True, "test", 20_000)
    assert not decoded  # one run: the decoders run inside it, as the graph has them


def test_validation_by_blocks_reports_what_whole_validation_reports(tmp_path, monkeypatch):
    path = save_external(decoder_model(), tmp_path / "src")
    whole = onnxq.compress(path, tmp_path / "a.onnx", jobs=1, samples=4)
    monkeypatch.setattr(validate, "UNFOLDED_WEIGHTS", 0)
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 20_000)
    seen = []
    real_run = blocks.run
    monkeypatch.setattr(blocks, "run", lambda *a, **k: seen.append(a[0]) or real_run(*a, **k))
    cut = onnxq.compress(path, tmp_path / "b.onnx", jobs=1, samples=4)
    # The plan's check ran the float model on validation's runs, and validation took its outputs.
    assert seen.count(path) == 1 and len(seen) == 2
    (a,), (b,) = whole.validation.outputs, cut.validation.outputs
    assert b.cosine == pytest.approx(a.cosine, abs=1e-6) and b.sqnr_db == pytest.approx(a.sqnr_db, abs=1e-3)
    assert cut.validation.by_blocks and not whole.validation.by_blocks
    assert any("a block of the graph" in n for n in cut.notes)


def test_the_float_outputs_of_other_runs_are_not_taken(tmp_path):
    """compare_blocks takes the known outputs only for the runs they were made on."""
    path = save_external(decoder_model(), tmp_path / "src")
    out = tmp_path / "out.onnx"
    onnxq.compress(path, out, jobs=1, validate=False)
    samples = feeds(2)
    described = (blocks.describe(path), blocks.describe(out))
    fresh, _ = validate.compare_blocks(path, out, samples, None, "test", True, described)
    other = [{"ids": (s["ids"] + 1) % 97} for s in samples]
    wrong = synthetic.Reference(other, blocks.run(path, other, ["logits"], True, "test"))
    assert wrong.answers(other) and not wrong.answers(samples) and not wrong.answers(other[:1])
    got, _ = validate.compare_blocks(path, out, samples, None, "test", True, described, wrong)
    assert got == fresh
    right = synthetic.Reference(samples, blocks.run(path, samples, ["logits"], True, "test"))
    assert validate.compare_blocks(path, out, samples, None, "test", True, described, right)[0] == fresh


def test_a_graph_with_control_flow_is_validated_whole(tmp_path, monkeypatch):
    model, _ = control_flow_model()
    assert not blocks.cuttable(model.graph)
    path = tmp_path / "cf.onnx"
    onnx.save(model, path)
    monkeypatch.setattr(validate, "UNFOLDED_WEIGHTS", 0)
    monkeypatch.setattr(blocks, "run", lambda *a, **k: pytest.fail("a graph with If and Loop was cut"))
    report = onnxq.compress(path, tmp_path / "out.onnx", jobs=1)
    assert report.validation is not None and report.validation.outputs and not report.validation.by_blocks
    assert not any("a block of the graph" in n for n in report.notes)


def test_onnxq_validate_checks_a_large_model_by_blocks(tmp_path, monkeypatch):
    """`onnxq validate FLOAT COMPRESSED` (compare_models) on a model over UNFOLDED_WEIGHTS: literal
    sessions block by block, and the whole comparison's numbers."""
    from onnxq.check import validate

    path = save_external(decoder_model(), tmp_path / "src")
    out = tmp_path / "out.onnx"
    onnxq.compress(path, out, jobs=1, validate=False)
    whole = validate.compare_models(path, out, samples=3, literal=True)
    monkeypatch.setattr(validate, "UNFOLDED_WEIGHTS", 0)
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 20_000)
    opened = []
    real_session = runtime.session
    monkeypatch.setattr(
        runtime, "session", lambda *a, **k: opened.append(k.get("literal")) or real_session(*a, **k)
    )
    cut = validate.compare_models(str(path), str(out), samples=3)
    assert cut.by_blocks and not whole.by_blocks and opened and all(opened)
    assert len(opened) > 4  # segments' sessions, not the two whole models'
    (a,), (b,) = whole.outputs, cut.outputs
    assert b.cosine == pytest.approx(a.cosine, abs=1e-9) and b.max_abs_error == pytest.approx(
        a.max_abs_error, abs=1e-6
    )


def test_each_model_is_read_once_however_many_chunks_of_samples(tmp_path, monkeypatch):
    path = save_external(decoder_model(), tmp_path / "src")
    out = tmp_path / "out.onnx"
    onnxq.compress(path, out, jobs=1, validate=False)
    monkeypatch.setattr(validate, "UNFOLDED_WEIGHTS", 0)
    monkeypatch.setattr(validate, "BLOCK_SAMPLES", 1)  # a chunk per sample
    reads = []
    real_read = io.read_model
    monkeypatch.setattr(io, "read_model", lambda p, **k: reads.append(str(p)) or real_read(p, **k))
    cut = validate.compare_models(str(path), str(out), samples=3)
    assert cut.by_blocks and cut.samples == 3
    # The float model for the synthetic inputs' check and for the comparison; not once per chunk.
    assert (reads.count(str(path)), reads.count(str(out))) == (2, 1)


def test_a_long_chain_of_weight_only_nodes_is_planned_without_recursion(tmp_path):
    """3000 Identity nodes on a weight before its reader: deeper than Python's recursion limit."""
    rng = np.random.default_rng(0)
    chain = [helper.make_node("Identity", [f"w{i}"], [f"w{i + 1}"]) for i in range(3000)]
    model = make_model(
        [*chain, helper.make_node("MatMul", ["x", "w3000"], ["y"])],
        [value("x", [2, 8])],
        [value("y", [2, 4])],
        [numpy_helper.from_array(randn(rng, 8, 4), "w0")],
    )
    (segment,) = blocks.plan(model.graph, 1)
    assert [n.output[0] for n in segment.nodes] == [f"w{i + 1}" for i in range(3000)] + ["y"]
    path = tmp_path / "chain.onnx"
    onnx.save(model, path)
    x = randn(rng, 2, 8)
    ((y,),) = blocks.run(path, [{"x": x}], ["y"], True, "test")
    np.testing.assert_allclose(y, x @ numpy_helper.to_array(model.graph.initializer[0]), rtol=1e-6)


def test_an_output_that_is_an_initializer_is_validated_whole(tmp_path, monkeypatch):
    """No segment makes such an output; the whole model is validated instead of failing."""
    model = decoder_model(layers=1)
    model.graph.output.append(value("emb", [97, 48]))
    assert not blocks.cuttable(model.graph)
    path = save_external(model, tmp_path / "src")
    monkeypatch.setattr(validate, "UNFOLDED_WEIGHTS", 0)
    report = onnxq.compress(path, tmp_path / "out.onnx", jobs=1)
    assert not report.validation.by_blocks and {o.name for o in report.validation.outputs} == {
        "logits",
        "emb",
    }


def test_a_fed_session_computes_what_a_session_with_the_initializers_does(rng):
    """runtime.Fed: the stubbed weights become inputs fed on every run, uncopied; the outputs equal
    those of the session that holds them, and a run's feed can give a weight another value."""
    w1, w2 = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal((5, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((2, 6)).astype(np.float32)
    held = runtime.session(model, literal=True)
    stub = runtime.stubbed(model, {"w1": w1})
    assert not stub.graph.initializer[0].raw_data  # no data: only the fed array can give it
    fed = runtime.Fed(stub, {"w1": w1}, literal=True)
    (want,), (got,) = runtime.run(held, {"x": x}), runtime.run(fed, {"x": x})
    np.testing.assert_array_equal(got, want)
    (swapped,) = runtime.run(fed, {"x": x, "w1": 2 * w1})
    np.testing.assert_allclose(swapped, 2 * want, rtol=1e-5)
    assert [i.name for i in runtime.as_inputs(stub, {"w1": w1}).graph.input] == ["x", "w1"]
