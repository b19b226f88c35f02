"""Synthetic inputs: sizes from --dim, the model's hints or a search, and values by each input's role."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import make_model, randn, session, value
from onnx import TensorProto, helper, numpy_helper

from onnxq.check.validate import synthetic_plan
from onnxq.data import samples as data
from onnxq.data import synthetic
from onnxq.errors import OnnxqError


def plan_of(model: onnx.ModelProto, dims=None, seed=0) -> synthetic.Plan:
    return synthetic_plan(model, session(model), data.input_specs(model), dims or {}, seed)


def const(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def fixed_length_model(length: int) -> onnx.ModelProto:
    """x (1, T) runs only when T == length: a Reshape to (1, 3, length / 3)."""
    return make_model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [value("x", [1, "T"])],
        [value("y", [1, 3, length // 3])],
        [const("shape", np.array([1, 3, length // 3], np.int64))],
    )


def test_a_search_finds_sizes_the_model_runs_on():
    """An image input whose spatial size must match a constant: 224 fails, 320 runs."""
    model = make_model(
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        [value("x", ["N", 3, "H", "W"])],
        [value("y", ["N", 3, 320, 320])],
        [const("bias", np.zeros((1, 3, 320, 320), np.float32))],
    )
    plan = plan_of(model)
    assert plan.shapes() == {"x": [1, 3, 320, 320]}
    assert plan.sources == {"N": "search", "H": "search", "W": "search"} and plan.tries == 2
    assert "H=320 (search)" in plan.describe()


def test_a_busy_machine_searches_as_far_as_an_idle_one(monkeypatch):
    """The 30 s cap stops no search before MIN_TRIES runs: with a clock that jumps 4 s per
    reading (30 s after 8 runs), 96x96 (the 12th image size) is still found, and a model that
    never runs is tried at every candidate size, as on an idle machine."""
    with pytest.raises(OnnxqError) as idle:
        plan_of(fixed_length_model(300))
    clock = iter(range(0, 10**6, 4))
    monkeypatch.setattr(synthetic.time, "monotonic", lambda: float(next(clock)))
    model = make_model(
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        [value("x", [1, 3, "H", "W"])],
        [value("y", [1, 3, 96, 96])],
        [const("bias", np.zeros((1, 3, 96, 96), np.float32))],
    )
    plan = plan_of(model)
    assert plan.shapes() == {"x": [1, 3, 96, 96]} and plan.tries == 12 < synthetic.MIN_TRIES
    with pytest.raises(OnnxqError) as busy:
        plan_of(fixed_length_model(300))
    assert str(busy.value) == str(idle.value) and "(14 tries" in str(idle.value)


def test_the_search_stops_at_its_caps():
    assert not synthetic._stop(synthetic.MIN_TRIES - 1, synthetic.MAX_SECONDS + 1)
    assert synthetic._stop(synthetic.MIN_TRIES, synthetic.MAX_SECONDS + 1)
    assert synthetic._stop(1, synthetic.HARD_SECONDS + 1)
    assert synthetic._stop(synthetic.MAX_TRIES, 0.0) and not synthetic._stop(synthetic.MAX_TRIES - 1, 0.0)


def test_dim_beats_metadata_beats_the_graph_beats_the_search():
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [value("x", ["B", "S", "F"])],
        [value("y", ["B", "S", 4])],
        [const("w", randn(np.random.default_rng(0), 12, 4))],
    )
    onnx.helper.set_model_props(model, {"S": "24", "B": "3"})
    plan = plan_of(model, dims={"B": 2})
    assert plan.sizes == {"B": 2, "S": 24, "F": 12}
    assert plan.sources == {"B": "--dim", "S": "metadata", "F": "graph"}


def test_sizes_that_metadata_mentions_are_tried_first():
    model = make_model(
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        [value("x", [1, 3, "h", "w"])],
        [value("y", [1, 3, 96, 96])],
        [const("bias", np.zeros((1, 3, 96, 96), np.float32))],
    )
    onnx.helper.set_model_props(model, {"imgsz": "[96, 96]"})
    plan = plan_of(model)
    assert plan.shapes() == {"x": [1, 3, 96, 96]} and plan.tries == 1


def test_when_nothing_runs_the_error_names_the_input_and_the_dim_to_pass():
    model = fixed_length_model(300)
    with pytest.raises(OnnxqError) as info:
        plan_of(model)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("onnxruntime could not run the float model on synthetic inputs (")
    assert "give the sizes of input x: --dim 'T=SIZE'" in message
    assert plan_of(model, dims={"T": 300}).shapes() == {"x": [1, 300]}


def test_unnamed_free_axes_are_named_input_and_axis():
    model = fixed_length_model(300)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = ""
    with pytest.raises(OnnxqError, match=r"--dim 'x\[1\]=SIZE'"):
        plan_of(model)
    assert plan_of(model, dims={"x[1]": 300}).shapes() == {"x": [1, 300]}


def test_an_unknown_dim_is_an_error_listing_the_free_ones():
    with pytest.raises(OnnxqError, match=r"--dim Q: the model has no free dimension of that name; .*: T"):
        plan_of(fixed_length_model(300), dims={"Q": 4})


def test_a_huge_size_is_an_error_not_a_memory_failure():
    with pytest.raises(OnnxqError, match="more than .* give smaller sizes with --dim"):
        plan_of(fixed_length_model(300), dims={"T": 1 << 29})


def transformer_like() -> onnx.ModelProto:
    """input_ids -> word table (30, 4); position_ids -> position table (64, 4); token_type_ids -> (2, 4);
    attention_mask multiplies the sum."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Gather", ["words", "input_ids"], ["w"]),
        helper.make_node("Gather", ["positions", "position_ids"], ["p"]),
        helper.make_node("Gather", ["types", "token_type_ids"], ["t"]),
        helper.make_node("Add", ["w", "p"], ["wp"]),
        helper.make_node("Add", ["wp", "t"], ["e"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axes"], ["m3"]),
        helper.make_node("Mul", ["e", "m3"], ["y"]),
    ]
    ints = ["input_ids", "position_ids", "token_type_ids", "attention_mask"]
    return make_model(
        nodes,
        [value(n, ["batch", "sequence"], TensorProto.INT64) for n in ints],
        [value("y", ["batch", "sequence", 4])],
        [
            const("words", randn(rng, 30, 4)),
            const("positions", randn(rng, 64, 4)),
            const("types", randn(rng, 2, 4)),
            const("axes", np.array([2], np.int64)),
        ],
    )


def test_token_inputs_get_ids_in_the_vocabulary_and_sequences_of_16_or_more():
    plan = plan_of(transformer_like())
    kinds = {n: r.kind for n, r in plan.roles.items()}
    assert kinds == {
        "input_ids": "tokens",
        "position_ids": "positions",
        "token_type_ids": "segments",
        "attention_mask": "mask",
    }
    assert plan.roles["input_ids"].high == 30 and plan.sizes["sequence"] >= synthetic.MIN_SEQUENCE
    feed = plan.feeds(3, seed=4)[1]
    assert (
        feed["input_ids"].min() >= 0
        and feed["input_ids"].max() < 30
        and len(np.unique(feed["input_ids"])) > 2
    )
    assert (feed["attention_mask"] == 1).all() and (feed["token_type_ids"] == 0).all()
    np.testing.assert_array_equal(feed["position_ids"][0], np.arange(plan.sizes["sequence"]))


def test_recurrent_state_is_zero_and_a_compared_integer_takes_the_constant():
    rng = np.random.default_rng(2)
    hidden = 3
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R", "", "", "h0", "c0"], ["y", "hn", "cn"], hidden_size=hidden),
        helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
        helper.make_node("Cast", ["is16k"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["y", "f"], ["out"]),
    ]
    model = make_model(
        nodes,
        [
            value("x", ["T", 1, 5]),
            value("h0", [1, 1, hidden]),
            value("c0", [1, 1, hidden]),
            value("sr", [], TensorProto.INT64),
        ],
        [value("out", ["T", 1, 1, hidden])],
        [
            const("W", randn(rng, 1, 4 * hidden, 5)),
            const("R", randn(rng, 1, 4 * hidden, hidden)),
            const("rate", np.array(16000, np.int64)),
        ],
    )
    plan = plan_of(model)
    feed = plan.feeds(1, 0)[0]
    assert plan.roles["h0"].kind == "state" and not feed["h0"].any() and not feed["c0"].any()
    assert plan.roles["sr"] == synthetic.Role("choice", choices=(16000,)) and feed["sr"] == 16000
    assert plan.sizes["T"] >= synthetic.MIN_SEQUENCE


def test_feeds_are_seeded():
    plan = plan_of(transformer_like())
    a, b, c = plan.feeds(2, 7), plan.feeds(2, 7), plan.feeds(2, 8)
    np.testing.assert_array_equal(a[1]["input_ids"], b[1]["input_ids"])
    assert not np.array_equal(a[1]["input_ids"], c[1]["input_ids"])


@pytest.mark.parametrize(
    "elem", [TensorProto.BOOL, TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32, TensorProto.DOUBLE]
)
def test_a_scalar_input_is_fed_as_an_array(elem):
    """numpy gives a scalar for a shape of (), and onnxruntime refused it ('Unable to handle
    object of type numpy.bool'): a model with a scalar flag could not be validated."""
    model = make_model(
        [helper.make_node("Identity", ["s"], ["y"])], [value("s", [], elem)], [value("y", [], elem)], []
    )
    plan = plan_of(model)
    (feed,) = plan.feeds(1, 0)
    assert isinstance(feed["s"], np.ndarray) and feed["s"].shape == ()
    assert session(model).run(None, feed)[0].shape == ()
