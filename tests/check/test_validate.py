"""compare_models: run two models on the same inputs, measure how far apart they are, and judge it."""

from __future__ import annotations

import ctypes
import sys

import numpy as np
import onnx
import pytest
from conftest import make_model, randn, value
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.check.validate import DEFAULT_MIN_COSINE, NOT_CHECKED, Validation, compare_models


def classifier(w: np.ndarray, batch="N") -> onnx.ModelProto:
    return make_model(
        [helper.make_node("MatMul", ["x", "W"], ["scores"])],
        [value("x", [batch, w.shape[0]])],
        [value("scores", [batch, w.shape[1]])],
        [numpy_helper.from_array(w, "W")],
    )


@pytest.fixture
def pair(rng):
    w = randn(rng, 16, 20)
    noisy = w + 0.05 * randn(rng, 16, 20)
    return classifier(w).SerializeToString(), classifier(noisy).SerializeToString()


@pytest.fixture
def real(tmp_path):
    path = tmp_path / "in.npz"
    np.savez(path, x=np.random.default_rng(5).standard_normal((64, 16)).astype(np.float32))
    return path


def test_identical_models_agree_exactly_and_random_inputs_are_not_a_pass(pair):
    v = compare_models(pair[0], pair[0], samples=3)
    assert isinstance(v, Validation) and v
    assert v.samples == 3 and not v.real
    assert v.inputs.startswith("random inputs: x 1x16")
    assert v.verdict == NOT_CHECKED and v.gates == []
    assert v.to_dict()["verdict"] == NOT_CHECKED and v.shapes == {"x": [[1, 16]]}
    (o,) = v.outputs
    assert o.name == "scores"
    assert o.max_abs_error == 0 and o.relative_l2_error == 0
    assert o.cosine == pytest.approx(1.0)
    assert o.sqnr_db == float("inf")
    assert o.top1_agreement == 1.0


def test_metrics_match_their_definitions(pair, real):
    x = np.load(real)["x"]
    v = compare_models(pair[0], pair[1], inputs=real, batch=5)
    y, yq = (
        x.astype(np.float64)
        @ numpy_helper.to_array(onnx.load_from_string(m).graph.initializer[0]).astype(np.float64)
        for m in pair
    )
    (o,) = v.outputs
    assert v.samples == 64 and v.real and v.inputs == f"{real} (64 samples)"
    assert o.max_abs_error == pytest.approx(np.abs(y - yq).max(), rel=1e-4)
    assert o.relative_l2_error == pytest.approx(np.linalg.norm(y - yq) / np.linalg.norm(y), rel=1e-4)
    assert o.sqnr_db == pytest.approx(10 * np.log10((y**2).sum() / ((y - yq) ** 2).sum()), abs=1e-3)
    assert o.cosine == pytest.approx((y * yq).sum() / np.linalg.norm(y) / np.linalg.norm(yq), abs=1e-6)
    assert o.top1_agreement == pytest.approx(np.mean(y.argmax(1) == yq.argmax(1)))


def test_the_batch_size_does_not_change_the_numbers(pair, real):
    one = compare_models(pair[0], pair[1], inputs=real, batch=1)
    many = compare_models(pair[0], pair[1], inputs=real, batch=64)
    for a, b in zip(one.outputs, many.outputs):
        for field in ("max_abs_error", "relative_l2_error", "cosine", "sqnr_db", "top1_agreement"):
            assert getattr(a, field) == pytest.approx(getattr(b, field), rel=1e-6)


def test_thresholds_make_the_validation_falsy(pair):
    v = compare_models(pair[0], pair[1], min_sqnr=200)
    assert not v and v.verdict == "FAILED"
    assert len(v.failures) == 1 and "< 200 (--min-sqnr)" in v.failures[0]
    assert v.gates == ["SQNR >= 200 on every output (--min-sqnr)"]
    assert v.to_dict()["passed"] is False
    v = compare_models(pair[0], pair[1], min_sqnr=5, min_agreement=0.0)
    assert v and v.to_dict()["passed"] is True


def test_agreement_is_gated_as_a_fraction(rng, real):
    w = randn(rng, 16, 20)
    ruined = classifier(w + 1.0 * randn(rng, 16, 20)).SerializeToString()
    v = compare_models(
        classifier(w).SerializeToString(), ruined, inputs=real, min_cosine=0, min_agreement=0.99
    )
    assert not v and v.failures == [
        f"scores: top-1 agreement {v.outputs[0].top1_agreement:.4g} < 0.99 (--min-agreement)"
    ]


def test_on_real_inputs_a_default_cosine_gate_runs(rng, real):
    w = randn(rng, 16, 20)
    ruined = classifier(w + 1.0 * randn(rng, 16, 20)).SerializeToString()  # cosine about 0.7
    v = compare_models(classifier(w).SerializeToString(), ruined, inputs=real)
    assert v.gates == [f"cosine >= {DEFAULT_MIN_COSINE:g} on every output (default)"]
    assert not v and v.verdict == "FAILED" and "(default)" in v.failures[0]
    # The same pair on random inputs: numbers, no default gate, and no pass either.
    v = compare_models(classifier(w).SerializeToString(), ruined)
    assert v and v.verdict == NOT_CHECKED and v.gates == []
    # A gate the user sets replaces the default, on real inputs and on random ones.
    assert compare_models(classifier(w).SerializeToString(), ruined, inputs=real, min_cosine=0.2)
    assert not compare_models(classifier(w).SerializeToString(), ruined, min_cosine=0.999)


def test_close_models_pass_the_default_gate(pair, real):
    v = compare_models(pair[0], pair[1], inputs=real)
    assert v and v.verdict == "passed" and v.outputs[0].cosine > DEFAULT_MIN_COSINE


def test_padding_positions_are_left_out_of_the_comparison(rng, tmp_path):
    """The candidate differs only where the mask is 0: masked out, the outputs agree exactly."""
    w = randn(rng, 4, 3)

    def model(noise_at_padding: float) -> bytes:
        nodes = [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["m", "axes"], ["m3"]),
            helper.make_node("Sub", ["one", "m3"], ["pad"]),
            helper.make_node("Mul", ["pad", "noise"], ["n"]),
            helper.make_node("Add", ["h", "n"], ["y"]),
        ]
        inits = [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([2], np.int64), "axes"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.full(3, noise_at_padding, np.float32), "noise"),
        ]
        ins = [value("x", ["N", "S", 4]), value("mask", ["N", "S"], TensorProto.INT64)]
        return make_model(nodes, ins, [value("y", ["N", "S", 3])], inits).SerializeToString()

    mask = np.ones((3, 6), np.int64)
    mask[1, 4:] = 0
    np.savez(tmp_path / "in.npz", x=randn(rng, 3, 6, 4), mask=mask)
    v = compare_models(model(0.0), model(5.0), inputs=tmp_path / "in.npz")
    assert v and v.outputs[0].max_abs_error == 0


def test_random_inputs_are_seeded(pair):
    a = compare_models(pair[0], pair[1], seed=1)
    b = compare_models(pair[0], pair[1], seed=1)
    c = compare_models(pair[0], pair[1], seed=2)
    assert a.outputs == b.outputs
    assert a.outputs != c.outputs


def test_symbolic_dims_come_from_dims(pair):
    v = compare_models(pair[0], pair[0], dims={"N": 7}, samples=2)
    assert v.shapes == {"x": [[7, 16]]} and "N=7 (--dim)" in v.inputs


def test_integer_and_bool_inputs_get_valid_values(rng):
    model = make_model(
        [
            helper.make_node("Gather", ["emb", "ids"], ["g"]),
            helper.make_node("Cast", ["flag"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["g", "f"], ["y"]),
        ],
        [value("ids", [4], TensorProto.INT64), value("flag", [1], TensorProto.BOOL)],
        [value("y", [4, 3])],
        [numpy_helper.from_array(randn(rng, 10, 3), "emb")],
    )
    v = compare_models(model.SerializeToString(), model.SerializeToString())
    assert v and "ids 4 [tokens]" in v.inputs and "flag 1 [bool]" in v.inputs


def test_one_unnamed_array_feeds_a_one_input_model(pair, tmp_path):
    np.savez(tmp_path / "in.npz", np.ones((2, 16), np.float64))
    v = compare_models(pair[0], pair[1], inputs=tmp_path / "in.npz", min_cosine=0)
    assert v.inputs == f"{tmp_path / 'in.npz'} (2 samples)"
    assert v.outputs[0].top1_agreement is not None


def test_npz_lacking_an_input_is_an_error(pair, tmp_path):
    np.savez(tmp_path / "in.npz", a=np.ones((2, 16)), b=np.ones((2, 16)))
    with pytest.raises(
        onnxq.OnnxqError, match=r"lacks inputs \['x'\]; the model takes \['x'\], the file has \['a', 'b'\]"
    ):
        compare_models(pair[0], pair[1], inputs=tmp_path / "in.npz")


def test_unreadable_npz_is_an_error(pair, tmp_path):
    (tmp_path / "in.npz").write_bytes(b"not a zip")
    with pytest.raises(onnxq.OnnxqError, match="is not an npz file"):
        compare_models(pair[0], pair[1], inputs=tmp_path / "in.npz")


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full((2, 16), np.inf), "x holds NaN or infinite values"),
        (np.ones((2, 17)), r"x has shape \(1, 17\) in a run, the model's input is x \(N, 16\)"),
        (np.ones(16), r"x has shape \(1,\) in a run"),
        (np.array([["a"] * 16]), "x holds <U1 values"),
    ],
)
def test_inputs_that_do_not_fit_the_model_are_a_one_line_error(pair, tmp_path, array, message):
    np.savez(tmp_path / "in.npz", x=array)
    with pytest.raises(onnxq.OnnxqError, match=message) as info:
        compare_models(pair[0], pair[1], inputs=tmp_path / "in.npz")
    assert "\n" not in str(info.value)


def test_fractional_values_for_an_integer_input_are_refused_and_whole_ones_cast(tmp_path):
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    model = make_model(
        [helper.make_node("Gather", ["T", "ids"], ["y"])],
        [value("ids", ["N"], TensorProto.INT64)],
        [value("y", ["N", 4])],
        [numpy_helper.from_array(table, "T")],
    ).SerializeToString()
    np.savez(tmp_path / "whole.npz", ids=np.array([1.0, 7.0]))
    assert compare_models(model, model, inputs=tmp_path / "whole.npz")
    np.savez(tmp_path / "half.npz", ids=np.array([1.5, 7.0]))
    with pytest.raises(onnxq.OnnxqError, match="ids holds fractional values, the model's input takes int64"):
        compare_models(model, model, inputs=tmp_path / "half.npz")


def test_a_fixed_batch_takes_the_file_samples_one_run_each(rng, tmp_path):
    w = randn(rng, 16, 20)
    model = classifier(w, batch=1).SerializeToString()
    x = randn(rng, 3, 16)
    np.savez(tmp_path / "in.npz", x=x)
    v = compare_models(
        model,
        classifier(w + 0.05 * randn(rng, 16, 20), batch=1).SerializeToString(),
        inputs=tmp_path / "in.npz",
    )
    assert v.samples == 3
    two = classifier(w, batch=2).SerializeToString()
    with pytest.raises(
        onnxq.OnnxqError, match=r"in.npz: the model takes 2 rows of 'x' per run; give a multiple of 2, not 3"
    ):
        compare_models(two, two, inputs=tmp_path / "in.npz")


def test_models_with_different_inputs_are_refused(pair, rng):
    other = classifier(randn(rng, 16, 20))
    other.graph.input[0].name = "image"
    other.graph.node[0].input[0] = "image"
    with pytest.raises(onnxq.OnnxqError, match="different inputs"):
        compare_models(pair[0], other.SerializeToString())
    # Same names but shapes that cannot take the same feed: an error, not a crash.
    with pytest.raises(onnxq.OnnxqError, match="onnxruntime failed on the validation inputs"):
        compare_models(pair[0], classifier(randn(rng, 8, 20)).SerializeToString())


def test_an_unloadable_model_is_an_onnxq_error(pair, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(onnxq.OnnxqError, match="onnxruntime cannot load the model"):
        compare_models(pair[0], bad)


def test_top1_only_for_class_score_outputs(rng):
    small = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [value("x", [2, 4])],
        [value("y", [2, 5])],
        [numpy_helper.from_array(randn(rng, 4, 5), "W")],
    ).SerializeToString()
    (o,) = compare_models(small, small).outputs
    assert o.top1_agreement is None


def test_compressed_model_validates_against_its_source(tiny, tmp_path):
    out, _ = onnxq.compress_model(tiny[0], onnxq.Config(bits=6))
    v = compare_models(tiny[0].SerializeToString(), out.SerializeToString(), samples=2, min_sqnr=15)
    assert v, v.failures
    assert {o.name for o in v.outputs} == {"y", "e"}
    assert all(o.sqnr_db > 15 for o in v.outputs)


def test_the_models_run_one_after_the_other_and_in_chunks_when_outputs_are_many(pair, real, monkeypatch):
    """Never both sessions at once; with a tiny output budget every run is its own round of
    sessions, and the numbers are those of one round."""
    import weakref

    from onnxq.check import validate

    live, peak, opened = [0], [0], [0]
    real_session = validate.runtime.session

    def tracked(*args, **kwargs):
        sess = real_session(*args, **kwargs)
        live[0] += 1
        opened[0] += 1
        peak[0] = max(peak[0], live[0])
        weakref.finalize(sess, lambda: live.__setitem__(0, live[0] - 1))
        return sess

    monkeypatch.setattr(validate.runtime, "session", tracked)
    whole = compare_models(pair[0], pair[1], inputs=real, batch=8)
    assert peak[0] == 1 and opened[0] == 2
    monkeypatch.setattr(validate, "CHUNK_BYTES", 1)
    opened[0] = 0
    chunked = compare_models(pair[0], pair[1], inputs=real, batch=8)
    # 64 samples in runs of 8, one run per round; a last float session finds no run left
    assert peak[0] == 1 and opened[0] == 2 * 8 + 1
    (a,), (b,) = whole.outputs, chunked.outputs
    for metric in ("max_abs_error", "relative_l2_error", "cosine", "sqnr_db", "top1_agreement"):
        assert getattr(b, metric) == pytest.approx(getattr(a, metric), rel=1e-9)


def test_a_large_output_is_validated_unfolded_with_the_same_numbers(tmp_path, tiny_path, monkeypatch):
    """Over validate.UNFOLDED_WEIGHTS, both sessions run without graph optimizations, so that the
    decoders are not folded at session creation; the comparison is the same to rounding."""
    from onnxq import runtime
    from onnxq.check import validate

    folded = onnxq.compress(tiny_path, tmp_path / "a.onnx", jobs=1, samples=8)
    literal_flags = []
    real_session = runtime.session
    monkeypatch.setattr(
        runtime, "session", lambda *a, **k: literal_flags.append(k.get("literal")) or real_session(*a, **k)
    )
    monkeypatch.setattr(validate, "UNFOLDED_WEIGHTS", 0)
    unfolded = onnxq.compress(tiny_path, tmp_path / "b.onnx", jobs=1, samples=8)
    assert literal_flags and all(literal_flags[-2:])  # the float and the compressed sessions
    assert any("validated without graph optimizations" in n for n in unfolded.notes)
    assert not any("validated without graph optimizations" in n for n in folded.notes)
    for a, b in zip(folded.validation.outputs, unfolded.validation.outputs):
        assert b.cosine == pytest.approx(a.cosine, abs=1e-6)


def test_an_output_validated_unfolded_takes_fewer_random_samples_unless_told(
    tmp_path, tiny_path, monkeypatch
):
    """Each unfolded run decodes every weight again: 2 random samples by default, and the note
    says so; --samples still decides, and so do real inputs."""
    from onnxq.check import validate

    small = onnxq.compress(tiny_path, tmp_path / "a.onnx", jobs=1)
    monkeypatch.setattr(validate, "UNFOLDED_WEIGHTS", 0)
    large = onnxq.compress(tiny_path, tmp_path / "b.onnx", jobs=1)
    told = onnxq.compress(tiny_path, tmp_path / "c.onnx", jobs=1, samples=5)
    assert (small.validation.samples, large.validation.samples, told.validation.samples) == (8, 2, 5)
    assert any("(so 2 random samples, not 8; --samples N for more)" in n for n in large.notes)
    assert not any("random samples" in n for n in told.notes + small.notes)


def test_a_large_fold_output_says_what_loading_it_will_need(tmp_path, tiny_path, monkeypatch):
    from onnxq.storage import fold

    monkeypatch.setattr(fold, "NOTE_ABOVE", 0)
    report = onnxq.compress(tiny_path, tmp_path / "a.onnx", jobs=1, validate=False)
    (note,) = [n for n in report.notes if n.startswith("creating an onnxruntime session")]
    folded = sum(w.elements for w in report.weights)  # the tiny embedding table is folded whole too
    assert f"decoders of {folded:,} weights" in note
    qdq = onnxq.compress(tiny_path, tmp_path / "b.onnx", jobs=1, validate=False, format="qdq")
    assert not any(n.startswith("creating an onnxruntime session") for n in qdq.notes)


def _rss() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1]) * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and glibc's malloc_trim")
def test_freed_heap_pages_go_back_to_the_system():
    """What a session freed but the C allocator kept is returned before the next one opens: 128 MB
    of small blocks, freed under a block still in use at the top of the heap, leave the RSS only
    after give_back_memory."""
    from onnxq import runtime

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(64 << 10) for _ in range(2048)]
    for b in blocks:
        ctypes.memset(b, 1, 64 << 10)
    for b in blocks[:-1]:
        libc.free(b)
    before = _rss()
    runtime.give_back_memory()
    after = _rss()
    libc.free(blocks[-1])
    assert before - after > 64 << 20


def test_validation_gives_memory_back_between_its_sessions(pair, real, monkeypatch):
    """After each float session and before the compressed one; and its sessions keep no arena."""
    from onnxq import runtime
    from onnxq.check import validate

    events = []
    real_session = validate.runtime.session
    monkeypatch.setattr(validate.runtime, "give_back_memory", lambda: events.append("trim"))
    monkeypatch.setattr(
        validate.runtime, "session", lambda *a, **k: events.append("session") or real_session(*a, **k)
    )
    compare_models(pair[0], pair[1], inputs=real, batch=8, literal=True)
    assert events == ["session", "trim", "session"]
    assert runtime._options(spin=True, literal=True).enable_cpu_mem_arena is False
    assert runtime._options(spin=True, literal=False).enable_cpu_mem_arena is True


def test_compress_gives_memory_back_once_the_output_is_written(tmp_path, tiny_path, monkeypatch):
    """The rewritten model is freed and the heap trimmed before validation's first session."""
    from onnxq import runtime

    events = []
    real_session = runtime.session
    monkeypatch.setattr(runtime, "give_back_memory", lambda: events.append("trim"))
    monkeypatch.setattr(runtime, "session", lambda *a, **k: events.append("session") or real_session(*a, **k))
    onnxq.compress(tiny_path, tmp_path / "a.onnx", jobs=1)
    assert events[-4:] == ["trim", "session", "trim", "session"]
