"""BlockProbe: the sensitivity measurement a segment of the graph at a time (--sensitivity blocks),
against the whole-model Probe it stands in for."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import control_flow_model, make_model, randn, tiny_model, value
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import onnxq
from onnxq import runtime
from onnxq.check import blocks
from onnxq.errors import OnnxqError
from onnxq.graph.select import find_weights
from onnxq.refine import blockwise, widths
from onnxq.refine.blockwise import BlockProbe
from onnxq.refine.sensitivity import Probe


def rounded(w: np.ndarray, step: float) -> np.ndarray:
    return (np.round(w / step) * step).astype(w.dtype)


def values_of(weights, steps=(0.08, 0.02)):
    """Each weight at two roundings: a coarse and a fine one, as the allocation measures them."""
    return {w.name: (lambda w=w: [rounded(w.array, s) for s in steps]) for w in weights}


def chain_model(layers: int = 6, width: int = 24, shared: bool = False):
    """x -> layers of h + tanh(h @ w_i) @ v_i -> y, every weight read by a MatMul; shared: the last
    layer reads w0 again (a weight read in two segments)."""
    rng = np.random.default_rng(2)
    inits, nodes = [], []
    for i in range(layers):
        inits += [
            numpy_helper.from_array(randn(rng, width, 2 * width) * 0.3, f"w{i}"),
            numpy_helper.from_array(randn(rng, 2 * width, width) * 0.3, f"v{i}"),
        ]
        w = "w0" if shared and i == layers - 1 else f"w{i}"
        nodes += [
            helper.make_node("MatMul", [f"h{i}", w], [f"a{i}"]),
            helper.make_node("Tanh", [f"a{i}"], [f"t{i}"]),
            helper.make_node("MatMul", [f"t{i}", f"v{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"h{i}", f"m{i}"], [f"h{i + 1}"]),
        ]
    nodes[0].input[0] = "x"
    nodes[3].input[0] = "x"
    nodes.append(helper.make_node("Identity", [f"h{layers}"], ["y"]))
    return make_model(nodes, [value("x", ["b", 5, width])], [value("y", ["b", 5, width])], inits)


def feeds_of(count: int = 2, width: int = 24) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": randn(rng, 2, 5, width)} for _ in range(count)]


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_one_segment_measures_what_the_whole_model_probe_measures(monkeypatch):
    model, feeds = tiny_model()
    weights = find_weights(model, 1)[0]
    monkeypatch.setattr(blockwise, "PROBE_SEGMENTS", 1)
    probe = BlockProbe(model, weights, [feeds])
    assert len(probe.segments) == 1
    got = probe.noises(values_of(weights))
    want = Probe(model, weights, [feeds]).noises(values_of(weights))
    assert set(got) == set(want) == {w.name for w in weights}
    for name in want:
        # The block probe feeds its weights (runtime.Fed), the whole-model one holds the others as
        # constants that onnxruntime prepacks: their sums round differently (1.5e-5 seen).
        assert got[name] == pytest.approx(want[name], rel=1e-4)


@settings(max_examples=8, deadline=None)
@given(budget=st.integers(1_000, 30_000))
def test_whole_allocations_are_measured_exactly_in_any_cut(budget):
    model = chain_model()
    weights = find_weights(model, 1)[0]
    swapped = {w.name: rounded(w.array, 0.05) for w in weights}
    feeds = feeds_of()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(blocks, "BLOCK_BYTES", budget)
        probe = BlockProbe(model, weights, feeds)
    parts = probe.noise_parts(swapped)
    assert parts == pytest.approx(Probe(model, weights, feeds).noise_parts(swapped), rel=1e-6)
    assert len(parts) == 2 and all(parts > 0)  # one per run


def test_cut_in_segments_it_ranks_the_weights_as_the_whole_model_does():
    """Each weight in its segment, scaled by the segment's gain: the ranking holds (the values not
    exactly: the gain is the segment's, measured with all of its weights moved at once)."""
    model = chain_model(layers=8)
    weights = find_weights(model, 1)[0]
    feeds = feeds_of(3)
    probe = BlockProbe(model, weights, feeds)
    assert len(probe.segments) >= 4
    got = probe.noises(values_of(weights))
    want = Probe(model, weights, feeds).noises(values_of(weights))
    for i in range(2):
        a = [want[n][i] for n in want]
        b = [got[n][i] for n in want]
        assert spearman(a, b) > 0.8
        assert np.median(np.abs(np.log(np.divide(b, a)))) < np.log(2)


@pytest.mark.parametrize("segments", [1, 3])
def test_from_its_reader_on_a_weight_measures_what_its_whole_segment_does(monkeypatch, segments):
    """Each weight run from its first reader to the segment's end, on the float tensors there,
    against the whole segment run for each value (TAIL_BYTES below any kept tensor)."""
    model = chain_model(layers=3)
    weights = find_weights(model, 1)[0]
    monkeypatch.setattr(blockwise, "PROBE_SEGMENTS", segments)
    sizes = []
    real = blocks.segment_model
    monkeypatch.setattr(
        blocks, "segment_model", lambda m, seg, *a: sizes.append(len(seg.nodes)) or real(m, seg, *a)
    )
    probe = BlockProbe(model, weights, feeds_of())
    assert len(probe.segments) == segments
    sizes.clear()
    tails = probe.noises(values_of(weights))
    assert min(sizes) < min(len(s.nodes) for s in probe.segments)  # a tail ran, not its segment
    monkeypatch.setattr(blockwise, "TAIL_BYTES", -1)
    sizes.clear()
    whole = probe.noises(values_of(weights))
    assert min(sizes) == min(len(s.nodes) for s in probe.segments)
    assert set(tails) == set(whole) == {w.name for w in weights}
    for name in whole:
        assert tails[name] == pytest.approx(whole[name], rel=1e-5)
        assert all(v > 0 for v in tails[name])


def test_a_weight_read_in_two_segments_is_measured_through_the_whole_model(monkeypatch):
    """w0 is read by the first layer and the last: measured with the whole model."""
    model = chain_model(shared=True)
    weights = find_weights(model, 1)[0]
    feeds = feeds_of()
    probe = BlockProbe(model, weights, feeds)
    homes = {n: [k for k, s in enumerate(probe.segments) if n in s.weights] for n in probe.names}
    assert len(homes["w0"]) == 2
    (w0,) = [w for w in weights if w.name == "w0"]
    got = probe.noises({"w0": lambda: [rounded(w0.array, 0.05)]})
    want = Probe(model, weights, feeds).noises({"w0": lambda: [rounded(w0.array, 0.05)]})
    assert got["w0"] == pytest.approx(want["w0"], rel=1e-6)


def test_no_session_holds_more_than_a_segments_weights(monkeypatch):
    model = chain_model()
    weights = find_weights(model, 1)[0]
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 10_000)
    held = []
    real = runtime.Fed.__init__

    def fed(self, proto, arrays, **k):
        held.append(sum(a.nbytes for a in arrays.values()))
        real(self, proto, arrays, **k)

    monkeypatch.setattr(runtime.Fed, "__init__", fed)
    probe = BlockProbe(model, weights, feeds_of())
    opened = len(held)
    probe.noises(values_of(weights))
    # One session per segment serves the pass, and one per weight runs from its reader on.
    assert len(held) - opened == len(probe.segments) + len(weights)
    probe.noise_parts({w.name: rounded(w.array, 0.05) for w in weights})
    largest = max(w.array.nbytes for w in weights)
    assert held and max(held) <= max(10_000, largest)
    assert sum(w.array.nbytes for w in weights) > 2 * max(held)  # never the whole model at once


def test_compress_measures_by_blocks_when_asked_or_when_the_model_is_large(tmp_path, monkeypatch):
    model = chain_model()
    src = tmp_path / "d.onnx"
    src.write_bytes(model.SerializeToString())
    made = []
    real = blockwise.BlockProbe.__init__
    monkeypatch.setattr(
        blockwise.BlockProbe, "__init__", lambda self, *a, **k: made.append(1) or real(self, *a, **k)
    )
    asked = onnxq.compress(src, tmp_path / "a.onnx", target_bits=4.5, sensitivity="blocks", jobs=1, samples=2)
    assert made and any("measured block by block" in n for n in asked.notes)
    made.clear()
    small = onnxq.compress(src, tmp_path / "b.onnx", target_bits=4.5, jobs=1, samples=2)
    assert not made and not any("measured block by block" in n for n in small.notes)
    monkeypatch.setattr(widths, "BLOCKS_FROM", 0)
    large = onnxq.compress(src, tmp_path / "c.onnx", target_bits=4.5, jobs=1, samples=2)
    assert made and any("measured block by block" in n for n in large.notes)


def test_a_model_that_cannot_be_cut_says_so_in_one_line(tmp_path):
    model, _ = control_flow_model()
    src = tmp_path / "cf.onnx"
    src.write_bytes(model.SerializeToString())
    with pytest.raises(OnnxqError, match="--sensitivity blocks needs a graph without If, Loop or Scan"):
        onnxq.compress(src, tmp_path / "out.onnx", target_bits=4, sensitivity="blocks", jobs=1)
    report = onnxq.compress(src, tmp_path / "out.onnx", target_bits=4, jobs=1, samples=2)
    assert not any("measured block by block" in n for n in report.notes)


def test_a_weight_onnxruntime_cannot_take_as_an_input_gets_no_entry(monkeypatch):
    """As with the whole-model probe: widths scales it by the others' gain. The segment that holds
    it cannot feed all its weights, and measures them with a session per weight."""
    model = chain_model()
    weights = find_weights(model, 1)[0]
    probe = BlockProbe(model, weights, feeds_of())
    real = BlockProbe._session

    tried = []

    def session(self, k, inputs=(), swaps=None, fed=False, **given):
        tried.append(k) if fed else None
        if fed or "v2" in inputs:  # so every segment falls back to a session per weight
            raise OnnxqError("onnxruntime cannot load the model: v2 must be a constant")
        return real(self, k, inputs, swaps)

    monkeypatch.setattr(BlockProbe, "_session", session)
    probe._unfed.clear()
    got = probe.noises(values_of(weights))
    assert sorted(tried) == list(range(len(probe.segments)))  # each segment tries feeding once
    assert "v2" not in got and set(got) == {w.name for w in weights} - {"v2"}
    assert all(n > 0 for noise in got.values() for n in noise)
