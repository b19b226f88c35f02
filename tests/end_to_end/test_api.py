"""The public API: Config, compress_model, compress, and the README's examples."""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import pytest
from conftest import WEIGHT_NAMES, no_weights_model, run, sha256

import onnxq


def test_public_names():
    assert set(onnxq.__all__) == {
        "CODEBOOKS",
        "FORMATS",
        "Config",
        "OnnxqError",
        "Report",
        "Validation",
        "__version__",
        "compare_models",
        "compress",
        "compress_model",
        "inspect",
    }
    for name in onnxq.__all__:
        assert hasattr(onnxq, name)


def test_readme_examples(tiny, tiny_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = onnxq.compress(tiny_path, "out.onnx", bits=5)
    assert isinstance(report, onnxq.Report)
    assert report.ratio > 3 and 5 <= report.bits_per_weight < 6.5
    assert bool(report.validation) is True
    model, report = onnxq.compress_model(tiny[0], onnxq.Config(bits=4, codebook="linear"))
    assert isinstance(model, onnx.ModelProto)
    assert {w.codebook for w in report.weights} == {"linear"}
    assert {w.bits for w in report.weights} == {4}


def test_the_readme_python_example_runs_as_written(tiny_path, tmp_path, monkeypatch, capsys):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (block,) = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_path, "in.onnx")
    rng = np.random.default_rng(0)
    np.savez("calib.npz", x=rng.standard_normal((4, 3, 8, 8)).astype(np.float32), ids=rng.integers(0, 41, 24))
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    assert isinstance(namespace["report"], onnxq.Report) and namespace["report"].weights
    assert namespace["compressed"].graph.node
    assert "x smaller" not in capsys.readouterr().out  # the library prints nothing itself


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"codebook": "lloyd"}, "--codebook must be one of linear, exponential, kmeans, auto; got 'lloyd'"),
        ({"granularity": "row"}, "--granularity must be one of tensor, channel"),
        ({"scale": "max"}, "--scale must be one of variance, lsq"),
        ({"search": "slow"}, "--search must be one of auto, grid, fast, exact"),
        ({"format": "zip"}, "--format must be one of fold"),
        ({"bits": 0}, "--bits must be between 1 and 8; got 0"),
        ({"bits": 9}, "--bits must be between 1 and 8; got 9"),
        ({"min_elements": 0}, "--min-elements must be at least 1"),
        ({"samples": 0}, "--samples must be at least 1"),
        ({"exclude": ("(",)}, "--exclude '\\(' is not a valid regular expression"),
    ],
)
def test_bad_config_names_the_valid_values(options, message, tiny):
    with pytest.raises(onnxq.OnnxqError, match=message):
        onnxq.Config(**options).check()
    with pytest.raises(onnxq.OnnxqError, match=message):
        onnxq.compress_model(tiny[0], onnxq.Config(**options))


def test_unknown_option_is_an_onnxq_error(tiny_path, tmp_path):
    with pytest.raises(onnxq.OnnxqError, match="unknown option"):
        onnxq.compress(tiny_path, tmp_path / "out.onnx", nbits=5)
    assert not (tmp_path / "out.onnx").exists()


def test_default_config():
    c = onnxq.Config()
    assert (c.bits, c.codebook, c.granularity, c.scale, c.format) == (
        5,
        "exponential",
        "channel",
        "lsq",
        "fold",
    )
    assert c.min_elements == 128 and c.validate is True
    c.check()


def test_compress_writes_the_output_and_leaves_the_input(tiny_path, tmp_path):
    before = sha256(tiny_path)
    dst = tmp_path / "out.onnx"
    report = onnxq.compress(tiny_path, dst, bits=3, samples=2)
    assert sha256(tiny_path) == before
    assert dst.is_file()
    assert report.output.total == dst.stat().st_size
    assert report.input_bytes == tiny_path.stat().st_size
    assert report.validation is not None and report.validation.samples == 2
    assert set(report.seconds) >= {"load", "quantize", "rewrite", "save", "validate"}
    assert sorted(os.listdir(tmp_path)) == ["out.onnx", "tiny.onnx"]
    onnx.checker.check_model(onnx.load(dst), full_check=True)


def test_compress_is_deterministic(tiny_path, tmp_path):
    onnxq.compress(tiny_path, tmp_path / "a.onnx", validate=False)
    onnxq.compress(tiny_path, tmp_path / "b.onnx", validate=False)
    assert sha256(tmp_path / "a.onnx") == sha256(tmp_path / "b.onnx")


def test_worker_processes_write_the_same_file_as_threads(tiny_path, tmp_path):
    # The exact search runs in worker processes when jobs > 1 (the grid, in threads).
    onnxq.compress(tiny_path, tmp_path / "threads.onnx", validate=False, search="exact")
    report = onnxq.compress(tiny_path, tmp_path / "processes.onnx", validate=False, jobs=2, search="exact")
    assert report.config["jobs"] == 2
    assert sha256(tmp_path / "threads.onnx") == sha256(tmp_path / "processes.onnx")


@pytest.mark.parametrize(
    ("search", "processes"), [("auto", False), ("grid", False), ("exact", True), ("fast", True)]
)
def test_only_the_continuous_searches_start_worker_processes(
    tiny_path, tmp_path, monkeypatch, search, processes
):
    from onnxq import jobs

    used = []
    real_pool = jobs._pool
    monkeypatch.setattr(jobs, "_pool", lambda p, workers: used.append(p) or real_pool(False, workers))
    onnxq.compress(tiny_path, tmp_path / "out.onnx", validate=False, jobs=2, search=search)
    assert used == [processes]


def test_jobs_below_one_is_an_error(tiny_path, tmp_path):
    with pytest.raises(onnxq.OnnxqError, match="--jobs must be at least 1"):
        onnxq.compress(tiny_path, tmp_path / "out.onnx", jobs=0)
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("codebook", ["exponential", "linear", "auto"])
def test_exact_search_compresses_like_the_fast_one(codebook, tiny_path, tmp_path):
    fast_report = onnxq.compress(
        tiny_path, tmp_path / "fast.onnx", bits=4, codebook=codebook, samples=2, search="fast"
    )
    report = onnxq.compress(
        tiny_path, tmp_path / "exact.onnx", bits=4, codebook=codebook, samples=2, search="exact"
    )
    assert report.config["search"] == "exact" and fast_report.config["search"] == "fast"
    assert report.validation is not None and bool(report.validation)
    assert report.validation.outputs[0].sqnr_db > 5.0
    assert [w.name for w in report.weights] == [w.name for w in fast_report.weights]
    # The exact search finds each group's x0 at least as good; the stored x0 grid then moves both a little.
    for e, f in zip(report.weights, fast_report.weights):
        assert e.correlation >= f.correlation - 1e-3, (e.name, e.correlation, f.correlation)
    onnx.checker.check_model(onnx.load(tmp_path / "exact.onnx"), full_check=True)


def test_no_validation_when_asked(tiny_path, tmp_path):
    report = onnxq.compress(tiny_path, tmp_path / "out.onnx", validate=False)
    assert report.validation is None and report
    assert "validate" not in report.seconds


def test_config_object_and_options_are_the_same(tiny_path, tmp_path):
    onnxq.compress(tiny_path, tmp_path / "a.onnx", bits=6, codebook="linear", validate=False)
    onnxq.compress(tiny_path, tmp_path / "b.onnx", onnxq.Config(bits=6, codebook="linear", validate=False))
    assert sha256(tmp_path / "a.onnx") == sha256(tmp_path / "b.onnx")


def test_progress_reports_every_weight(tiny):
    calls = []
    onnxq.compress_model(tiny[0], onnxq.Config(), progress=lambda *a: calls.append(a))
    n = len(WEIGHT_NAMES)
    quantizing = [c for c in calls if c[2].startswith("quantizing")]
    assert quantizing[0] == (0, n, "quantizing")
    assert [c[0] for c in quantizing] == list(range(n + 1))
    assert all(c[1] == n for c in quantizing)
    assert {c[2] for c in quantizing[1:]} == {f"quantizing: {name}" for name in WEIGHT_NAMES}
    assert calls[-1] == (0, 0, "rewriting the graph")  # compress_model writes and validates nothing


def test_compress_model_leaves_its_input_alone(tiny):
    before = tiny[0].SerializeToString()
    out, _ = onnxq.compress_model(tiny[0])
    assert tiny[0].SerializeToString() == before
    assert out.SerializeToString() != before


def test_model_without_compressible_weights_is_written_unchanged(tmp_path, rng):
    src = no_weights_model(tmp_path, rng)
    report = onnxq.compress(src, tmp_path / "out.onnx")
    assert report.weights == []
    assert any("no compressible weights" in n for n in report.notes)
    assert report.validation is None
    assert onnx.load(tmp_path / "out.onnx").SerializeToString() == onnx.load(src).SerializeToString()


def test_errors_before_loading_leave_nothing_behind(tiny_path, tmp_path):
    before = sha256(tiny_path)
    with pytest.raises(onnxq.OnnxqError, match="is a file of the input model"):
        onnxq.compress(tiny_path, tiny_path)
    with pytest.raises(onnxq.OnnxqError, match="does not exist"):
        onnxq.compress(tiny_path, tmp_path / "missing" / "out.onnx")
    with pytest.raises(onnxq.OnnxqError, match="does not exist"):
        onnxq.compress(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    assert sha256(tiny_path) == before
    assert sorted(os.listdir(tmp_path)) == ["tiny.onnx"]


def test_a_validation_error_leaves_no_output(tiny_path, tmp_path):
    with pytest.raises(onnxq.OnnxqError, match="inputs file .* does not exist"):
        onnxq.compress(tiny_path, tmp_path / "out.onnx", inputs=str(tmp_path / "missing.npz"))
    assert sorted(os.listdir(tmp_path)) == ["tiny.onnx"]


def test_validation_inputs_from_npz(tiny, tiny_path, tmp_path):
    np.savez(tmp_path / "in.npz", x=tiny[1]["x"], ids=tiny[1]["ids"])
    report = onnxq.compress(tiny_path, tmp_path / "out.onnx", inputs=str(tmp_path / "in.npz"), bits=6)
    assert report.validation.inputs == f"{tmp_path / 'in.npz'} (1 samples)" and report.validation.samples == 1
    assert report.validation.real and report.validation.verdict in ("passed", "FAILED")
    out = run(onnx.load(tmp_path / "out.onnx"), tiny[1])
    ref = run(tiny[0], tiny[1])
    y = ref[0].astype(np.float64)
    sqnr = 10 * np.log10((y**2).sum() / ((y - out[0]) ** 2).sum())
    assert report.validation.outputs[0].sqnr_db == pytest.approx(sqnr, abs=0.01)


def test_a_wrong_inputs_file_fails_before_any_weight_is_quantized(tiny_path, tmp_path, monkeypatch):
    np.savez(tmp_path / "in.npz", x=np.zeros((1, 3, 9, 9), np.float32), ids=np.zeros(6, np.int64))

    def no_work(*args, **kwargs):
        raise AssertionError("quantization started")

    monkeypatch.setattr(onnxq.api.jobs, "run", no_work)
    with pytest.raises(onnxq.OnnxqError, match=r"x has shape \(1, 3, 9, 9\) in a run"):
        onnxq.compress(tiny_path, tmp_path / "out.onnx", inputs=str(tmp_path / "in.npz"))
    assert sorted(os.listdir(tmp_path)) == ["in.npz", "tiny.onnx"]


def test_with_calibration_and_no_inputs_it_validates_on_the_calibration_data(tiny, tiny_path, tmp_path):
    rng = np.random.default_rng(2)
    np.savez(
        tmp_path / "cal.npz",
        x=rng.standard_normal((4, 3, 8, 8)).astype(np.float32),
        ids=rng.integers(0, 41, 24),
    )
    report = onnxq.compress(tiny_path, tmp_path / "out.onnx", bits=6, calibration=str(tmp_path / "cal.npz"))
    v = report.validation
    assert v.real and v.samples == 4
    assert v.inputs == f"calibration data {tmp_path / 'cal.npz'} (4 samples, the ones it was calibrated on)"
    assert v.gates and "(default)" in v.gates[0]


def test_a_failed_gate_keeps_the_output_and_makes_the_report_falsy(tiny, tiny_path, tmp_path):
    np.savez(tmp_path / "in.npz", x=tiny[1]["x"], ids=tiny[1]["ids"])
    report = onnxq.compress(
        tiny_path, tmp_path / "out.onnx", bits=2, inputs=str(tmp_path / "in.npz"), min_cosine=0.9999
    )
    assert not report and report.validation.verdict == "FAILED"
    assert (tmp_path / "out.onnx").is_file()


def test_thresholds_set_the_report_truthiness(tiny_path, tmp_path):
    assert onnxq.compress(tiny_path, tmp_path / "a.onnx", bits=6, min_sqnr=5, samples=2)
    assert not onnxq.compress(tiny_path, tmp_path / "b.onnx", bits=6, min_sqnr=200, samples=2)


@pytest.mark.parametrize("fmt", ["fold", "qdq"])
def test_compressing_a_compressed_model_is_refused_and_its_decompressed_model_is_not(
    tiny_path, tmp_path, fmt
):
    once = tmp_path / "once.onnx"
    onnxq.compress(tiny_path, once, validate=False, format=fmt, bits=4)
    with pytest.raises(onnxq.OnnxqError, match="was written by onnxq compress already"):
        onnxq.compress(once, tmp_path / "twice.onnx", validate=False)
    assert not (tmp_path / "twice.onnx").exists()
    from onnxq.check.decompress import decompress

    decompress(once, tmp_path / "float.onnx")
    assert onnxq.compress(tmp_path / "float.onnx", tmp_path / "again.onnx", validate=False).weights


@pytest.mark.parametrize(
    ("options", "weights", "search"),
    [
        ({}, 1000, "auto"),
        ({"rounding": "gptq"}, 1000, "exact"),
        ({"rounding": "gptq"}, 1 << 25, "exact"),
        ({"rounding": "gptq"}, (1 << 25) + 1, "auto"),
        ({"rounding": "gptq", "search": "grid"}, 1000, "grid"),
        ({"rounding": "gptq", "search": "exact"}, 1 << 30, "exact"),
    ],
)
def test_auto_search_keeps_the_exact_search_under_gptq_on_models_up_to_a_size(options, weights, search):
    from onnxq.api import resolved_search

    assert resolved_search(onnxq.Config(**options), weights) == search


@pytest.mark.parametrize("read", ["mm.b", "emb"])  # mm.b's groups of 400: there exact and auto differ
def test_under_gptq_only_the_weights_it_rounds_take_the_exact_search(tiny, read):
    """A weight without input statistics (an embedding, a weight inside an If) rounds to nearest as
    in plain --bits, so it is quantized as there: on the grid's x0, not the exact search's."""
    from dataclasses import replace

    from onnxq import jobs
    from onnxq.api import _settings
    from onnxq.graph.select import find_weights
    from onnxq.refine.widths import Choice

    weights = [w for w in find_weights(tiny[0], 1)[0] if w.name in ("mm.b", "emb")]
    layers = {w.name: ["its layer's statistics"] if w.name == read else [] for w in weights}
    settings = _settings(onnxq.Config(rounding="gptq"), weights, layers)
    assert settings.search == "auto" and settings.exact_for == {read}
    got = jobs.run([(w, Choice(5)) for w in weights], settings, {}, None, "quantizing")
    for w, q in zip(weights, got):
        alone = replace(settings, search="exact" if w.name == read else "auto", exact_for=frozenset())
        (expected,) = jobs.run([(w, Choice(5))], alone, {}, None, "quantizing")
        assert np.array_equal(q.dequantized, expected.dequantized), w.name
    assert not _settings(onnxq.Config(), weights, layers).exact_for


def test_the_output_records_the_onnxq_version_and_settings_and_keeps_the_models_own(tiny, tmp_path):
    import json

    from onnxq.check.decompress import decompress_model

    model = tiny[0]
    onnx.helper.set_model_props(model, {"author": "someone", "onnxq.version": "0.0.1"})
    out, _ = onnxq.compress_model(model, onnxq.Config(bits=4, format="qdq", inputs=str(tmp_path / "x.npz")))
    props = {p.key: p.value for p in out.metadata_props}
    assert props["author"] == "someone" and props["onnxq.version"] == onnxq.__version__
    settings = json.loads(props["onnxq.config"])
    assert settings["bits"] == 4 and settings["format"] == "qdq" and settings["codebook"] == "linear"
    assert "inputs" not in settings and settings["calibrated"] is False  # no path of the user's data
    assert len(out.metadata_props) == 3  # replaced, not added twice
    plain, _ = decompress_model(out)
    assert {p.key: p.value for p in plain.metadata_props} == {"author": "someone"}
