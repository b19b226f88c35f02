"""compare_models: run two models on the same inputs and measure how far apart they are."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import make_model, randn, value
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.validate import Validation, compare_models, random_feeds, session


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


def test_identical_models_agree_exactly(pair):
    v = compare_models(pair[0], pair[0], samples=3)
    assert isinstance(v, Validation) and v
    assert v.inputs == "random" and v.samples == 3
    (o,) = v.outputs
    assert o.name == "scores"
    assert o.max_abs_error == 0 and o.relative_l2_error == 0
    assert o.cosine == pytest.approx(1.0)
    assert o.sqnr_db == float("inf")
    assert o.top1_agreement == 1.0


def test_metrics_match_their_definitions(pair, tmp_path):
    x = np.random.default_rng(5).standard_normal((64, 16)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    v = compare_models(pair[0], pair[1], inputs=tmp_path / "in.npz")
    y = (x @ onnx.numpy_helper.to_array(onnx.load_from_string(pair[0]).graph.initializer[0])).astype(
        np.float64
    )
    yq = (x @ onnx.numpy_helper.to_array(onnx.load_from_string(pair[1]).graph.initializer[0])).astype(
        np.float64
    )
    (o,) = v.outputs
    assert v.samples == 1
    assert o.max_abs_error == pytest.approx(np.abs(y - yq).max(), rel=1e-4)
    assert o.relative_l2_error == pytest.approx(np.linalg.norm(y - yq) / np.linalg.norm(y), rel=1e-4)
    assert o.sqnr_db == pytest.approx(10 * np.log10((y**2).sum() / ((y - yq) ** 2).sum()), abs=1e-3)
    assert o.cosine == pytest.approx((y * yq).sum() / np.linalg.norm(y) / np.linalg.norm(yq), abs=1e-6)
    assert o.top1_agreement == pytest.approx(np.mean(y.argmax(1) == yq.argmax(1)))


def test_thresholds_make_the_validation_falsy(pair):
    v = compare_models(pair[0], pair[1], min_sqnr=200)
    assert not v
    assert len(v.failures) == 1 and "--min-sqnr 200" in v.failures[0]
    assert v.to_dict()["passed"] is False
    v = compare_models(pair[0], pair[1], min_sqnr=-50, min_agreement=1.01)
    assert not v and "--min-agreement" in v.failures[0]
    v = compare_models(pair[0], pair[1], min_sqnr=5, min_agreement=0.0)
    assert v and v.to_dict()["passed"] is True


def test_random_inputs_are_seeded(pair):
    a = compare_models(pair[0], pair[1], seed=1)
    b = compare_models(pair[0], pair[1], seed=1)
    c = compare_models(pair[0], pair[1], seed=2)
    assert a.outputs == b.outputs
    assert a.outputs != c.outputs


def test_symbolic_dims_come_from_dims(pair):
    feeds = random_feeds(session(pair[0]), {"N": 7}, samples=2, seed=0)
    assert len(feeds) == 2 and feeds[0]["x"].shape == (7, 16)
    assert random_feeds(session(pair[0]), {}, 1, 0)[0]["x"].shape == (1, 16)


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
    feeds = random_feeds(session(model.SerializeToString()), {}, 4, 0)
    assert all(f["ids"].dtype == np.int64 and f["ids"].min() >= 0 for f in feeds)
    assert all(f["flag"].dtype == np.bool_ for f in feeds)
    assert compare_models(model.SerializeToString(), model.SerializeToString())


def test_one_unnamed_array_feeds_a_one_input_model(pair, tmp_path):
    np.savez(tmp_path / "in.npz", np.ones((2, 16), np.float64))
    v = compare_models(pair[0], pair[1], inputs=tmp_path / "in.npz")
    assert v.inputs == str(tmp_path / "in.npz")
    assert v.outputs[0].top1_agreement is not None


def test_npz_lacking_an_input_is_an_error(pair, tmp_path):
    np.savez(tmp_path / "in.npz", a=np.ones((2, 16)), b=np.ones((2, 16)))
    with pytest.raises(
        onnxq.OnnxqError, match=r"lacks inputs \['x'\]; the model expects \['x'\], the file has \['a', 'b'\]"
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
        (np.ones((2, 17)), r"x has shape \(2, 17\), the model's input is \(N, 16\)"),
        (np.ones(16), r"x has shape \(16,\)"),
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
