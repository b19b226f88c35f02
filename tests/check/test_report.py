"""Report: JSON (schema_version 2) and Markdown, and a byte breakdown that adds up."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import WEIGHT_NAMES, matmul_model

import onnxq
from onnxq.check.report import SCHEMA_VERSION, Bytes, Report
from onnxq.check.validate import OutputComparison, Validation

SUMMARY_KEYS = {
    "input_bytes",
    "output_bytes",
    "ratio",
    "compressed_tensors",
    "compressed_weights",
    "skipped_tensors",
    "bits_per_weight",
    "widths",
    "passed",
}
WEIGHT_KEYS = {
    "name",
    "shape",
    "uses",
    "groups",
    "bits",
    "codebook",
    "elements",
    "index_bytes",
    "codebook_bytes",
    "correlation",
    "sqnr_db",
    "granularity",
    "rounding",
    "bias_correction",
}


def strict_json(text: str) -> dict:
    """json.loads that refuses NaN and Infinity, which are not JSON."""

    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def report(tiny_path, tmp_path) -> Report:
    return onnxq.compress(tiny_path, tmp_path / "out.onnx", bits=4, samples=2)


def test_json_round_trip(report, tiny_path, tmp_path):
    d = strict_json(report.to_json())
    assert d["schema_version"] == SCHEMA_VERSION == 2
    assert set(d["summary"]) == SUMMARY_KEYS
    assert set(d) >= {"config", "summary", "bytes", "weights", "skipped", "validation", "notes", "seconds"}
    assert d["calibration"] is None  # plain --bits needs no data
    s = d["summary"]
    assert s["input_bytes"] == tiny_path.stat().st_size
    assert s["output_bytes"] == (tmp_path / "out.onnx").stat().st_size
    assert s["ratio"] == pytest.approx(s["input_bytes"] / s["output_bytes"])
    assert s["compressed_tensors"] == len(WEIGHT_NAMES)
    assert s["skipped_tensors"] == 2
    assert s["passed"] is True
    assert d["config"]["bits"] == 4 and d["config"]["codebook"] == "exponential"
    assert json.loads(json.dumps(d)) == d


def test_bytes_breakdown_sums_to_the_total(report, tmp_path):
    b = strict_json(report.to_json())["bytes"]
    assert set(b) == {"indices", "codebooks", "float_tensors", "graph", "total"}
    assert b["indices"] + b["codebooks"] + b["float_tensors"] + b["graph"] == b["total"]
    assert b["total"] == (tmp_path / "out.onnx").stat().st_size
    assert all(b[k] > 0 for k in b)
    # The biases are the only float tensors: 8 + 13 floats.
    assert b["float_tensors"] == 4 * (8 + 13)


def test_weight_entries(report):
    d = strict_json(report.to_json())
    assert {w["name"] for w in d["weights"]} == set(WEIGHT_NAMES)
    for w in d["weights"]:
        assert set(w) == WEIGHT_KEYS
        assert w["elements"] == math.prod(w["shape"])
        assert w["index_bytes"] == -(-w["elements"] // 8) * 4
        assert 0.9 < w["correlation"] <= 1.0
        assert w["sqnr_db"] > 10
    assert sum(w["index_bytes"] for w in d["weights"]) == d["bytes"]["indices"]
    assert d["summary"]["compressed_weights"] == sum(w["elements"] for w in d["weights"])
    bpw = 8 * (d["bytes"]["indices"] + d["bytes"]["codebooks"]) / d["summary"]["compressed_weights"]
    assert d["summary"]["bits_per_weight"] == pytest.approx(bpw)
    assert 4 <= bpw < 5


def test_skipped_entries_carry_reasons(report):
    d = strict_json(report.to_json())
    assert {(s["name"], tuple(s["shape"])) for s in d["skipped"]} == {("conv.b", (8,)), ("gemm.c", (13,))}
    assert all("bias" in s["reason"] for s in d["skipped"])


def test_validation_in_json(report):
    v = strict_json(report.to_json())["validation"]
    assert v["passed"] is True and v["verdict"] == "not checked against real data" and v["samples"] == 2
    assert v["inputs"].startswith("random inputs: x 1x3x8x8") and v["real"] is False and v["gates"] == []
    assert v["shapes"] == {"x": [[1, 3, 8, 8]], "ids": [[6]]}
    assert {o["name"] for o in v["outputs"]} == {"y", "e"}
    assert v["failures"] == []


def test_infinite_and_nan_values_become_null():
    r = Report(config={}, input_bytes=10, output=Bytes(total=0))
    r.validation = Validation("random", 1, outputs=[OutputComparison("y", 0.0, 0.0, 1.0, float("inf"), None)])
    d = strict_json(r.to_json())
    assert d["summary"]["ratio"] is None  # nan: no output bytes
    assert d["summary"]["bits_per_weight"] is None
    assert d["validation"]["outputs"][0]["sqnr_db"] is None


def test_markdown(report):
    md = report.to_markdown()
    lines = md.splitlines()
    assert lines[0] == "# onnxq compression report"
    assert "## Validation: not checked against real data" in md
    assert "- inputs: random inputs: x 1x3x8x8" in md and "- gates: none" in md
    assert "## Compressed weights" in md and "## Skipped float tensors" in md
    for name in WEIGHT_NAMES:
        assert any(line.startswith(f"| {name} |") for line in lines)
    # Biases are one count line per reason, not a row each; the version, paths and settings are there.
    assert "- 1 tensor: bias of Conv (biases stay in float)" in lines
    assert not any(line.startswith("| conv.b |") for line in lines)
    assert f"- onnxq {onnxq.__version__}" in lines
    assert any(line.startswith("- input: `") and line.endswith("tiny.onnx`") for line in lines), lines[:8]
    assert "| bits | `4` |" in lines
    # Every table row has as many cells as its header.
    header_cells = None
    for line in lines:
        if line.startswith("|"):
            cells = line.count("|")
            if header_cells is None:
                header_cells = cells
            assert cells == header_cells, line
        else:
            header_cells = None


@pytest.fixture
def failed(tiny_path, tmp_path) -> Report:
    r = onnxq.compress(tiny_path, tmp_path / "out.onnx", bits=2, min_sqnr=200, samples=1)
    assert not r and not r.validation
    assert r.validation.failures and "< 200 (--min-sqnr)" in r.validation.failures[0]
    return r


def test_failed_validation_sets_passed_false(failed):
    assert strict_json(failed.to_json())["summary"]["passed"] is False


def test_failed_validation_is_kept_in_json(failed):
    v = strict_json(failed.to_json())["validation"]
    assert v is not None
    assert v["passed"] is False and v["verdict"] == "FAILED" and "< 200 (--min-sqnr)" in v["failures"][0]


def test_failed_validation_is_shown_in_markdown(failed):
    md = failed.to_markdown()
    assert "## Validation: FAILED" in md and "< 200 (--min-sqnr)" in md


def test_truthiness():
    r = Report(config={})
    assert r  # validation did not run
    r.validation = Validation("random", 1, failures=["y: SQNR 3.0 dB < --min-sqnr 10"])
    assert not r
    assert strict_json(r.to_json())["summary"]["passed"] is False


def test_compress_model_report_adds_up_without_a_file(rng):
    model, _ = matmul_model(rng.standard_normal((256, 128)).astype(np.float32))
    out, r = onnxq.compress_model(model, onnxq.Config(bits=3))
    b = r.output
    assert b.total == out.ByteSize()
    assert b.indices + b.codebooks + b.float_tensors + b.graph == b.total
    assert b.indices == 256 * 128 * 3 // 8
    assert r.input_bytes == model.ByteSize()
    assert r.ratio > 7
    assert set(r.seconds) >= {"quantize", "rewrite"}
