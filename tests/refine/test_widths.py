"""--target-bits: a choice per tensor (a width per channel or per tensor, or float), checked as a whole."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import make_model, small_cnn, value
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import onnxq
from onnxq.api import KEPT_FLOAT
from onnxq.refine import widths
from onnxq.refine.widths import FLOAT, Choice


@pytest.fixture
def cnn_path(tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(), path)
    return path


def compress(cnn_path, tmp_path, **options):
    dst = tmp_path / "out.onnx"
    options = {"target_bits": 4.0, "min_elements": 1, "validate": False, **options}
    return onnxq.compress(cnn_path, dst, **options), dst


def test_choices_order_and_print():
    assert sorted([Choice(5), FLOAT, Choice(4, True), Choice(4)]) == [
        FLOAT,
        Choice(4),
        Choice(4, True),
        Choice(5),
    ]
    assert [str(c) for c in (Choice(3), Choice(3, True), FLOAT)] == ["3 bits", "3 bits per tensor", "float"]


def fragile_model() -> onnx.ModelProto:
    """y1 = x @ big (64 x 512); y2 = 1000 * (x @ small) (64 x 2): the small weight's error
    dominates the outputs' noise, the big one's hardly counts."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "big"], ["y1"], name="big.mm"),
        helper.make_node("MatMul", ["x", "small"], ["s"], name="small.mm"),
        helper.make_node("Mul", ["s", "k"], ["y2"]),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((64, 512)).astype(np.float32), "big"),
        numpy_helper.from_array(rng.standard_normal((64, 2)).astype(np.float32), "small"),
        numpy_helper.from_array(np.array(1000.0, np.float32), "k"),
    ]
    return make_model(nodes, [value("x", ["N", 64])], [value("y1", ["N", 512]), value("y2", ["N", 2])], inits)


def tiny_channels_model() -> onnx.ModelProto:
    """A 1x1 Conv from one input channel to 256 (a weight per channel, their scales spread over
    e^+-4: one codebook per tensor loses the small ones, and per channel the parameters cost
    more than the weights), whose output is 1000 times the rest's; then a 256 -> 64 1x1 Conv."""
    rng = np.random.default_rng(0)
    first = (rng.standard_normal((256, 1, 1, 1)) * np.exp(rng.uniform(-4, 4, (256, 1, 1, 1)))).astype(
        np.float32
    )
    nodes = [
        helper.make_node("Conv", ["x", "first"], ["a"], name="first"),
        helper.make_node("Mul", ["a", "k"], ["y1"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "second"], ["y2"], name="second"),
    ]
    inits = [
        numpy_helper.from_array(first, "first"),
        numpy_helper.from_array((rng.standard_normal((64, 256, 1, 1)) * 0.1).astype(np.float32), "second"),
        numpy_helper.from_array(np.array(1000.0, np.float32), "k"),
    ]
    outputs = [value("y1", ["N", 256, 4, 4]), value("y2", ["N", 64, 4, 4])]
    return make_model(nodes, [value("x", ["N", 1, 4, 4])], outputs, inits)


@pytest.fixture
def fragile(tmp_path):
    path = tmp_path / "fragile.onnx"
    onnx.save(fragile_model(), path)
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((32, 64)).astype(np.float32))
    return path, str(tmp_path / "cal.npz")


def test_float_is_a_choice_where_quantizing_hardly_shrinks_a_tensor(tmp_path):
    """The 256 one-weight channels: 4-bit indices and a 16-bit parameter each cost more than half
    their float bytes, and their error dominates the outputs: with calibration they stay float."""
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_channels_model(), path)
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((16, 1, 4, 4)).astype(np.float32))
    report, dst = compress(path, tmp_path, calibration=str(tmp_path / "cal.npz"))
    assert [w.name for w in report.weights] == ["second"]
    assert {s.name: s.reason for s in report.skipped}["first"] == KEPT_FLOAT
    assert report.widths()["float"] == 1
    assert any(t.name == "first" for t in onnx.load(dst).graph.initializer)  # as it was
    spent = sum(w.index_bytes + w.codebook_bytes for w in report.weights) + 256 * 4
    assert spent <= 4.0 * (256 + 64 * 256) / 8


def test_float_is_no_choice_where_quantizing_saves_most_bytes(fragile, tmp_path):
    """The small weight of the fragile model is as dominant, but 4 bits save 84% of its bytes."""
    path, cal = fragile
    report, _ = compress(path, tmp_path, calibration=cal)
    assert "float" not in report.widths() and {w.name for w in report.weights} == {"big", "small"}


def test_an_allocation_that_measures_worse_than_near_uniform_widths_is_not_kept(
    fragile, tmp_path, monkeypatch
):
    """A measurement that misjudged the fragile weight and put it at the narrowest width: the
    whole-model check catches it and keeps the near-uniform widths."""
    path, cal = fragile
    real, calls = widths._solve_with_decoders, []

    def misjudged(*args):  # the near-uniform widths are solved first, then the measured allocation
        calls.append(real(*args))
        return {"big": Choice(3), "small": Choice(3)} if len(calls) == 2 else calls[-1]

    monkeypatch.setattr(widths, "_solve_with_decoders", misjudged)
    report, _ = compress(path, tmp_path, calibration=cal)
    assert any(n.startswith("output noise") and n.endswith("kept near-uniform widths") for n in report.notes)
    assert "float" not in report.widths()  # the near-uniform fallback keeps nothing in float


def test_the_width_histogram_counts_every_tensor(cnn_path, tmp_path):
    report, _ = compress(cnn_path, tmp_path, target_bits=4.5)
    counts = report.widths()
    assert sum(counts.values()) == len(report.weights)
    assert report.to_dict()["summary"]["widths"] == counts
    assert all(k.endswith(("bits", "per tensor")) for k in counts)


def test_offering_one_codebook_per_tensor_follows_the_parameter_cost():
    from onnxq.quant.codebooks import CODEBOOKS
    from onnxq.quant.quantize import quantize
    from onnxq.storage import fold

    rng = np.random.default_rng(0)
    depthwise = quantize(rng.standard_normal((64, 9)), CODEBOOKS["exponential"], 4, "lsq")  # 16 bits per 9
    dense = quantize(rng.standard_normal((64, 512)), CODEBOOKS["exponential"], 4, "lsq")  # 16 bits per 512
    assert widths.offers_per_tensor(depthwise, fold) and not widths.offers_per_tensor(dense, fold)


def test_without_data_no_tensor_is_left_in_float(fragile, tmp_path):
    """On synthetic inputs the small weight looks as fragile, but that says little about real inputs."""
    path, _ = fragile
    report, _ = compress(path, tmp_path)
    assert "float" not in report.widths() and {w.name for w in report.weights} == {"big", "small"}


def test_uniform_widths_are_a_candidate_when_they_fit(fragile, tmp_path):
    path, cal = fragile
    report, _ = compress(path, tmp_path, calibration=cal, target_bits=4.4)  # 4 bits and scales fit
    (note,) = [n for n in report.notes if n.startswith("output noise")]
    assert "with uniform 4 bits" in note and "with the measured allocation" in note
    report, _ = compress(path, tmp_path, calibration=cal, target_bits=4.0)  # 4 bits and scales do not fit
    (note,) = [n for n in report.notes if n.startswith("output noise")]
    assert "uniform" not in note.replace("near-uniform", "")


@pytest.mark.parametrize(
    ("noise", "mode", "kept"),
    [
        (
            {"the measured allocation": 0.095, "near-uniform widths": 0.099},
            "synthetic",
            "near-uniform widths",
        ),
        (
            {"the measured allocation": 0.04, "near-uniform widths": 0.1},
            "synthetic",
            "the measured allocation",
        ),
        (  # EfficientNet-Lite0 at --target-bits 5: a clear win, right on real images
            {"the measured allocation": 0.0409, "near-uniform widths": 0.0658},
            "synthetic",
            "the measured allocation",
        ),
        (
            {"the measured allocation": 0.08, "near-uniform widths": 0.1},
            "synthetic",
            "near-uniform widths",
        ),
        (
            {"the measured allocation": 0.2, "near-uniform widths": 0.1, "uniform 4 bits": 0.05},
            "synthetic",
            "uniform 4 bits",
        ),
        (
            {"the measured allocation": 0.01, "near-uniform widths": 0.3, "uniform 4 bits": 0.15},
            "synthetic",
            "uniform 4 bits",
        ),
    ],
)
def test_on_synthetic_inputs_uniform_widths_win_when_they_fit_and_the_measured_must_win_clearly(
    noise, mode, kept
):
    assert widths._keep({label: np.array([v]) for label, v in noise.items()}, mode) == kept


SPREAD = np.linspace(0.8, 1.2, 16)  # 16 samples' shares of an option's noise, alike


@pytest.mark.parametrize(
    ("parts", "kept"),
    [
        (  # less on every sample: a real difference
            {"the measured allocation": 0.004 * SPREAD, "uniform 4 bits": 0.005 * SPREAD},
            "the measured allocation",
        ),
        (  # less in total only because uniform widths miss one sample badly: chance
            {
                "the measured allocation": np.full(16, 0.001),
                "uniform 4 bits": np.r_[np.full(15, 0.0012), 0.05],
            },
            "uniform 4 bits",
        ),
        (  # without uniform widths the near-uniform ones are the baseline
            {"the measured allocation": 0.0095 * SPREAD, "near-uniform widths": 0.0099 * SPREAD[::-1]},
            "near-uniform widths",
        ),
        (
            {"the measured allocation": 0.005 * SPREAD, "near-uniform widths": 0.0099 * SPREAD},
            "the measured allocation",
        ),
        (  # a baseline that is clearly better is kept
            {
                "the measured allocation": 0.02 * SPREAD,
                "near-uniform widths": 0.03 * SPREAD,
                "uniform 4 bits": 0.01 * SPREAD,
            },
            "uniform 4 bits",
        ),
        (  # one sample proves nothing
            {"the measured allocation": np.array([0.001]), "uniform 4 bits": np.array([0.1])},
            "uniform 4 bits",
        ),
    ],
)
def test_with_calibration_the_least_noise_must_beat_the_baseline_on_the_samples_not_only_in_total(
    parts, kept
):
    assert widths._keep(parts, "calibration") == kept


def test_the_probe_size_follows_the_model_not_the_clock(cnn_path, tmp_path, monkeypatch):
    """The same widths on any machine: the probe's sample count comes from the layers' counted
    multiply-adds, so a clock that runs 1000x slower changes nothing, and a model whose work
    exceeds PROBE_MACS gets fewer samples, and says why."""
    first, out = compress(cnn_path, tmp_path)
    probe_note = next(n for n in first.notes if n.startswith("widths chosen by measured sensitivity"))
    import time as time_module

    real = time_module.perf_counter
    monkeypatch.setattr(time_module, "perf_counter", lambda: real() * 1000)
    (tmp_path / "slow").mkdir()
    again, out2 = compress(cnn_path, tmp_path / "slow")
    assert next(n for n in again.notes if n.startswith("widths chosen")) == probe_note
    assert out.read_bytes() == out2.read_bytes()
    monkeypatch.setattr(time_module, "perf_counter", real)
    monkeypatch.setattr(widths, "PROBE_MACS", 1.0)  # every sample is over budget: the floor
    (tmp_path / "tight").mkdir()
    tight, _ = compress(cnn_path, tmp_path / "tight")
    note = next(n for n in tight.notes if n.startswith("widths chosen"))
    assert f"{widths.MIN_PROBE_SAMPLES} rather than {widths.PROBE_SAMPLES}" in note, note


def test_macs_per_sample_counts_output_positions():
    from onnxq.refine.calibrate import LayerStats
    from onnxq.refine.steps import Layer

    w = onnxq.api.Weight(
        name="w", array=np.zeros((8, 3, 3, 3), np.float32), axis=0, graph=None, constant_node=None, uses=[]
    )
    stats = LayerStats(mean=np.zeros((1, 27)), hessian=np.zeros((1, 27, 27)), count=4 * 100, samples=4)
    layers = {"w": [Layer(spec=None, stats=stats), Layer(spec=None, stats=stats)]}
    assert widths._macs_per_sample([w], layers) == 216 * 100 * 2  # two layers read it
    assert widths._macs_per_sample([w], {}) == 216  # no statistics: one position


@settings(max_examples=60, deadline=None)
@given(
    tensors=st.integers(1, 6),
    graphs=st.integers(1, 2),
    decoder=st.floats(1.0, 400.0),
    slack=st.floats(1.0, 2.0),
    seed=st.integers(0, 2**16),
)
def test_a_mix_of_widths_pays_its_decoders_from_the_budget(tensors, graphs, decoder, slack, seed):
    """Whatever widths the solution mixes, its bytes plus the decoders it adds per graph fit the
    budget (which always admits the narrowest width alone), and it is at least as quiet as the
    best single width."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(8, 200, tensors)
    costs = {f"t{i}": {Choice(b): n * b / 8 + 4.0 for b in (2, 3, 4, 5)} for i, n in enumerate(sizes)}
    curves = {n: {c: float(rng.uniform(0.5, 2)) * 4.0**-c.bits for c in per} for n, per in costs.items()}
    decoders = {b: decoder * (1 + b / 8) for b in (2, 3, 4, 5)}
    graph_of = {n: i % graphs for i, n in enumerate(costs)}
    budget = slack * sum(per[Choice(2)] for per in costs.values())
    pool = {c for per in costs.values() for c in per}
    chosen = widths._solve_with_decoders(
        costs, curves, [pool], budget, None, int(sizes.sum()), decoders, graph_of
    )
    spent = sum(costs[n][c] for n, c in chosen.items())
    assert spent + widths.extra_decoders(chosen, decoders, graph_of) <= budget * (1 + 1e-9)
    single = [
        sum(curves[n][Choice(b)] for n in costs)
        for b in (2, 3, 4, 5)
        if sum(costs[n][Choice(b)] for n in costs) <= budget
    ]
    assert sum(curves[n][c] for n, c in chosen.items()) <= min(single) * (1 + 1e-9)


@settings(max_examples=60, deadline=None)
@given(
    tensors=st.integers(1, 6),
    decoder=st.sampled_from([0.0, 40.0, 300.0]),
    slack=st.floats(1.0, 2.5),
    seed=st.integers(0, 2**16),
)
def test_without_data_the_measured_allocation_rounds_no_tensor_coarser_than_near_uniform_widths(
    tensors, decoder, slack, seed
):
    """However wrong the synthetic ranking (random noise curves here), the measured allocation
    solved within _capped exists, fits the budget, and leaves no tensor with a larger relative
    error than the coarsest tensor of the near-uniform widths."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(8, 200, tensors)
    choices = [Choice(b, t) for b in (2, 3, 4, 5, 6) for t in (False, True)]
    priced = widths._Priced({}, {}, {})
    for i, n in enumerate(sizes):
        scale = float(rng.uniform(0.2, 5))
        priced.costs[f"t{i}"] = {c: n * c.bits / 8 + (1.0 if c.per_tensor else 16.0) for c in choices}
        priced.relative[f"t{i}"] = {c: scale * (3 if c.per_tensor else 1) * 4.0**-c.bits for c in choices}
    curves = {n: {c: float(rng.uniform(0, 2)) * 4.0**-c.bits for c in per} for n, per in priced.costs.items()}
    decoders = {b: decoder for b in (2, 3, 4, 5, 6)} if decoder else {}
    graph_of = {n: 0 for n in priced.costs}
    budget = slack * sum(per[Choice(2, True)] for per in priced.costs.values()) + 6 * decoder
    pools = [{c for per in priced.costs.values() for c in per}]
    args = (pools, budget, None, int(sizes.sum()), decoders, graph_of)
    near = widths._solve_with_decoders(priced.costs, widths._blind(priced.relative), *args)
    capped = widths._capped(priced, near)
    chosen = widths._solve_with_decoders(capped, curves, *args)
    cap = max(priced.relative[n][c] for n, c in near.items())
    assert all(priced.relative[n][c] <= cap * (1 + 1e-9) for n, c in chosen.items())
    spent = sum(priced.costs[n][c] for n, c in chosen.items())
    assert spent + widths.extra_decoders(chosen, decoders, graph_of) <= budget * (1 + 1e-9)


def test_extra_decoders_count_each_width_beyond_the_first_in_each_graph():
    decoders = {2: 10.0, 3: 20.0, 4: 40.0}
    chosen = {"a": Choice(2), "b": Choice(4, True), "c": Choice(3), "d": FLOAT, "e": Choice(4)}
    assert widths.extra_decoders(chosen, decoders, {"a": 0, "b": 0, "c": 1, "d": 1, "e": 1}) == 10.0 + 20.0
    assert widths.extra_decoders({"a": Choice(3), "b": Choice(3)}, decoders, {"a": 0, "b": 1}) == 0.0


@pytest.mark.parametrize("ir_version", [7, 9])
def test_target_bits_on_a_small_model_is_no_larger_than_uniform_widths(tmp_path, ir_version):
    """small_cnn's per-channel parameters make uniform 4 bits cost more than 4 bits per weight; a
    mix of widths within --target-bits 4, its decoders (inlined at IR 7) paid, must come out
    smaller, and the report says what the decoders took."""
    model = small_cnn()
    model.ir_version = ir_version
    path = tmp_path / "cnn.onnx"
    onnx.save(model, path)
    uniform = tmp_path / "uniform.onnx"
    onnxq.compress(path, uniform, bits=4, min_elements=1, validate=False)
    report, dst = compress(path, tmp_path)
    assert dst.stat().st_size <= uniform.stat().st_size
    mixed = {w.bits for w in report.weights}
    assert (len(mixed) > 1) == any("pay the decoders" in n for n in report.notes)


@pytest.mark.parametrize("axis", [0, 1])
def test_pricing_a_few_rows_at_a_time_gives_the_whole_tensors_numbers(axis, monkeypatch):
    """The 134M decoder's embedding took 1.2 GB priced at once; in parts the numbers stay."""
    from onnxq.graph.select import Weight
    from onnxq.quant.codebooks import CODEBOOKS
    from onnxq.quant.layout import float_rows, to_rows
    from onnxq.quant.quantize import quantize
    from onnxq.refine.calibrate import LayerSpec, LayerStats
    from onnxq.refine.steps import Layer
    from onnxq.storage import fold

    rng = np.random.default_rng(0)
    w = Weight("w", rng.standard_normal((24, 40)).astype(np.float32), axis, onnx.GraphProto(), None)
    rows = float_rows(w)
    computed = {"w": {Choice(b): quantize(rows, CODEBOOKS["exponential"], b, "lsq") for b in (3, 4)}}
    x = rng.standard_normal((200, rows.shape[1]))
    stats = LayerStats(x.mean(axis=0)[None], (x.T @ x / len(x))[None], len(x))
    layers = {"w": [Layer(LayerSpec("mm", "MatMul", "x", "w", 1, rows.shape[1]), stats)]}
    for hs in (layers, {}):  # with the layer's H, and without (|dW|^2)
        whole = widths._price([w], computed, hs, fold)
        monkeypatch.setattr(widths, "PRICE_WEIGHTS", 3 * rows.shape[1])  # three rows at a time
        parts = widths._price([w], computed, hs, fold)
        assert len(list(widths._row_parts(w, [], computed["w"][Choice(3)]))) == -(-len(rows) // 3)
        monkeypatch.undo()
        assert parts.costs == whole.costs and parts.relative == whole.relative
        for c, e in whole.errors["w"].items():
            assert parts.errors["w"][c] == pytest.approx(e, rel=1e-12) and e > 0
    # Without exact (_measured_alone): |dW|^2 whatever the layer's H, CACHED_WEIGHTS at a time.
    plain = widths._price([w], computed, layers, fold, exact=False)
    monkeypatch.setattr(widths, "CACHED_WEIGHTS", 3 * rows.shape[1])
    few = widths._price([w], computed, layers, fold, exact=False)
    bare = widths._price([w], computed, {}, fold)
    assert plain.relative == few.relative == bare.relative and plain.costs == bare.costs
    for b in (3, 4):
        squares = float(
            np.sum((to_rows(w, computed["w"][Choice(b)].dequantized) - rows.astype(np.float64)) ** 2)
        )
        assert plain.errors["w"][Choice(b)] == pytest.approx(squares, rel=1e-12)
        assert few.errors["w"][Choice(b)] == pytest.approx(squares, rel=1e-12)


def test_measured_alone_the_curves_need_no_layer_error():
    """When every computed width is measured and none lies between two measured ones, each curve
    is the measurements (6 dB per bit beyond them) with tr(dW H dW^T) or with |dW|^2 alike; with a
    width between them, H moves the curve, and _measured_alone says no."""
    from onnxq.graph.select import Weight
    from onnxq.quant.codebooks import CODEBOOKS
    from onnxq.quant.layout import float_rows
    from onnxq.quant.quantize import quantize
    from onnxq.refine.calibrate import LayerSpec, LayerStats
    from onnxq.refine.steps import Layer
    from onnxq.storage import fold

    rng = np.random.default_rng(3)
    w = Weight("w", rng.standard_normal((16, 32)).astype(np.float32), 0, onnx.GraphProto(), None)
    rows = float_rows(w)
    x = rng.standard_normal((100, 32)) * np.linspace(0.1, 3, 32)  # an H far from the identity
    stats = LayerStats(x.mean(axis=0)[None], (x.T @ x / len(x))[None], len(x))
    layers = {"w": [Layer(LayerSpec("mm", "MatMul", "x", "w", 1, 32), stats)]}
    for bits, alone in (((4, 5), True), ((3, 4, 5), False), ((3, 5), False)):
        computed = {"w": {Choice(b): quantize(rows, CODEBOOKS["exponential"], b, "lsq") for b in bits}}
        probed = widths._probed(computed, 5)
        assert widths._measured_alone(computed, probed) == alone
        measured = {"w": {b: 0.5 / 4**b for b in probed}}
        exact = widths._curves([w], widths._price([w], computed, layers, fold), measured)["w"]
        plain = widths._curves([w], widths._price([w], computed, layers, fold, exact=False), measured)["w"]
        for b in probed:
            assert exact[Choice(b)] == pytest.approx(measured["w"][b], rel=1e-9)
        same = all(plain[c] == pytest.approx(v, rel=1e-9) for c, v in exact.items())
        assert same == alone


def test_two_measured_widths_price_without_h_unless_a_weight_goes_unmeasured(cnn_path, tmp_path, monkeypatch):
    """A model counted as large (two computed widths, both measured): no tr(dW H dW^T) is computed;
    a weight that onnxruntime could not take as an input takes the others' median gain, which
    needs every weight's layer error, and then they are computed."""
    from onnxq.refine import sensitivity

    monkeypatch.setattr(onnxq.api, "ALL_WIDTHS_UP_TO", 0)
    monkeypatch.setattr(widths, "PER_TENSOR_OFFER", np.inf)  # no choice per tensor
    calls = []
    real = sensitivity.layer_error
    monkeypatch.setattr(sensitivity, "layer_error", lambda d, hs: calls.append(len(hs)) or real(d, hs))
    first, _ = compress(cnn_path, tmp_path, target_bits=4.5)
    assert not calls and first.bits_per_weight <= 4.5
    noises = sensitivity.Probe.noises

    def one_short(self, values, progress=None):
        out = noises(self, values, progress)
        del out[min(out)]
        return out

    monkeypatch.setattr(sensitivity.Probe, "noises", one_short)
    (tmp_path / "short").mkdir()
    second, _ = compress(cnn_path, tmp_path / "short", target_bits=4.5)
    assert calls and all(calls) and second.bits_per_weight <= 4.5  # with each layer's H


def test_at_two_measured_widths_a_few_samples_give_the_statistics_and_the_same_output(
    cnn_path, tmp_path, monkeypatch
):
    """Where --target-bits reads only each layer's positions per sample from the statistics, they
    are collected on MIN_PROBE_SAMPLES samples, and say so; the output is the one that every
    sample's statistics give."""
    from onnxq.refine import calibrate

    monkeypatch.setattr(onnxq.api, "ALL_WIDTHS_UP_TO", 0)
    monkeypatch.setattr(widths, "PER_TENSOR_OFFER", np.inf)
    seen = []
    real = calibrate.collect_layer_stats
    monkeypatch.setattr(
        calibrate,
        "collect_layer_stats",
        lambda m, s, samples, *a, **k: seen.append(len(samples)) or real(m, s, samples, *a, **k),
    )
    few, out = compress(cnn_path, tmp_path, target_bits=4.5)
    assert seen == [widths.MIN_PROBE_SAMPLES]
    assert any(n.startswith(f"layer statistics on {widths.MIN_PROBE_SAMPLES} of the") for n in few.notes)
    monkeypatch.setattr(onnxq.api, "_positions_only", lambda config, weights: None)
    (tmp_path / "all").mkdir()
    _, out2 = compress(cnn_path, tmp_path / "all", target_bits=4.5)
    assert seen[-1] > widths.MIN_PROBE_SAMPLES
    assert out.read_bytes() == out2.read_bytes()
    (tmp_path / "gptq").mkdir()
    monkeypatch.undo()
    monkeypatch.setattr(onnxq.api, "ALL_WIDTHS_UP_TO", 0)
    monkeypatch.setattr(
        calibrate,
        "collect_layer_stats",
        lambda m, s, samples, *a, **k: seen.append(len(samples)) or real(m, s, samples, *a, **k),
    )
    compress(cnn_path, tmp_path / "gptq", target_bits=4.5, rounding="gptq")
    assert seen[-1] > widths.MIN_PROBE_SAMPLES  # GPTQ reads H: every sample
