"""tools/paper_tables.py: the Tables 1-2 computation, the results file, and its Markdown."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pytest
from conftest import IMAGES, TOOLS

from onnxq.quant.codebooks import CODEBOOKS

sys.path.insert(0, str(TOOLS))
try:
    import imagenet
    import paper_tables
finally:
    sys.path.remove(str(TOOLS))


@pytest.mark.parametrize("distribution", list(paper_tables.DISTRIBUTIONS))
@pytest.mark.parametrize("codebook", ["linear", "exponential"])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6])
def test_search_reaches_the_brute_force_maximum(distribution, codebook, bits):
    w = paper_tables.draw(distribution, 2000, seed=0)
    found = paper_tables.search_maximum(w, CODEBOOKS[codebook], bits)
    brute = paper_tables.brute_force_maximum(w, CODEBOOKS[codebook], bits, points=4001)
    assert found.correlation >= brute.correlation - 1e-3
    assert 0 < found.x0 <= 1 and 0 < brute.x0 <= 1
    # Both scores are C as the paper defines it: round every signed number explicitly.
    for best in (found, brute):
        direct = paper_tables.direct_correlation(w, CODEBOOKS[codebook], bits, best.x0)
        assert direct == pytest.approx(best.correlation, abs=1e-9)


def test_two_bits_is_the_same_for_both_codebooks():
    w = paper_tables.draw("Laplace", 2000, seed=1)
    linear = paper_tables.search_maximum(w, CODEBOOKS["linear"], 2)
    exponential = paper_tables.search_maximum(w, CODEBOOKS["exponential"], 2)
    assert linear == exponential  # one nonzero level: both families are {0, x0}


def test_tables_markdown_lists_every_bits_and_codebook():
    rows = paper_tables.table_rows(n=500, seed=0, points=201, bits=[2, 3], seeds=2)
    text = paper_tables.render_tables(rows, "python tools/paper_tables.py tables", "abc1234", 1.0, 2)
    assert "onnxq at commit abc1234" in text and "python tools/paper_tables.py tables" in text
    header = (
        "| bits | codebook | C search | x0 search | C brute | x0 brute | search - brute | ALGORITHM.md "
        "| C search, seeds 0-1 |"
    )
    assert text.count(header) == 2  # one table per distribution
    assert sum(line.startswith("| 3 | exponential |") for line in text.splitlines()) == 2


def test_replace_section_appends_then_replaces_only_its_block():
    text = "# Results\n\nkept\n"
    once = paper_tables.replace_section(text, "sweep", "first")
    assert once.startswith(text.rstrip()) and "first" in once
    twice = paper_tables.replace_section(once + "\ntail\n", "sweep", "second")
    assert "first" not in twice and "second" in twice and twice.endswith("tail\n")
    assert twice.count("<!-- paper_tables:sweep:begin -->") == 1


def fake_row(method, drop, ratio, **extra):
    row = {
        "model": "tiny",
        "bits": 4,
        "codebook": "exponential",
        "granularity": "channel",
        "method": method,
        "commit": "abc1234",
        "command": "python tools/paper_tables.py sweep --models tiny",
        "top1": 0.8 - drop / 100,
        "float_top1": 0.8,
        "drop_points": drop,
        "agreement": 0.9,
        "ratio": ratio,
        "bits_per_weight": 4.1,
        "seconds": 12.0,
        "rounding": "nearest",
        "bias_correction": False,
        "data": None,
    }
    return row | extra


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "sweep.jsonl"
    rows = [
        fake_row("plain", 30.0, 7.3),
        fake_row("mixed", 9.0, 7.0),  # replaced by the later line below
        fake_row("mixed", 2.5, 6.9),
        {**fake_row("gptq", 0, 0), "error": "OnnxqError: boom"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_report_renders_one_table_per_model_and_the_levers(results):
    rows = paper_tables.read_rows(results)
    text = paper_tables.render_report(rows, "python tools/paper_tables.py report")
    lines = text.splitlines()
    assert "| bits | codebook | granularity | plain | gptq | mixed | ratio | ratio mixed |" in lines
    assert "| 4 | exponential | channel | 30.0 | failed | 2.5 | 7.30 | 6.90 |" in lines
    levers = [line for line in lines if line.startswith("| gptq+bias |")]
    assert levers and levers[0].endswith("| - | - |")  # not measured at 4 or 5 bits
    assert next(line for line in lines if line.startswith("| plain |")).endswith("| 30.0 | - |")
    assert "python tools/paper_tables.py sweep --models tiny" in text and "abc1234" in text
    detail = [line for line in lines if line.startswith("| 4 | exponential | channel | plain |")]
    expected = (
        "| 4 | exponential | channel | plain | nearest, no data | 0.5000 | 0.8000 | 30.0 "
        "| 0.900 | 7.30 | 4.10 | 12 | abc1234 |"
    )
    assert detail == [expected]
    assert "- 4 bits exponential channel gptq: `OnnxqError: boom`" in lines


def test_drop_interval_is_the_paired_normal_interval():
    # 30 images only the float model gets right, 12 only the compressed one, of 900:
    # mean 18/900 = 0.02, variance 42/900 - 0.02^2 = 0.046267, half-width 1.96 * sqrt(v / 900).
    row = fake_row("mixed", 2.0, 7.7, images=900, float_only=30, compressed_only=12)
    lo, hi = paper_tables.drop_interval(row)
    half = 1.96 * np.sqrt((42 / 900 - 0.02**2) / 900) * 100
    assert lo == pytest.approx(2.0 - half) and hi == pytest.approx(2.0 + half)
    assert (round(lo, 1), round(hi, 1)) == (0.6, 3.4)
    # Both models right or wrong on the same images: no spread at all.
    same = fake_row("mixed", 0.0, 7.7, images=900, float_only=0, compressed_only=0)
    assert paper_tables.drop_interval(same) == (0.0, 0.0)
    assert paper_tables.drop_interval(fake_row("mixed", 2.0, 7.7)) is None  # measured before the counts


def test_paired_counts_take_the_label_offset():
    prep = imagenet.Preprocess(224, "efficientnet", label_offset=1)
    labels = np.array([0, 1, 2, 3])  # targets 1, 2, 3, 4 with the background class first
    float_top5 = np.array([[1], [2], [9], [9]])  # right on images 0 and 1
    top5 = np.array([[1], [9], [3], [9]])  # right on images 0 and 2
    base = paper_tables.Baseline(prep, np.zeros(4), labels, float_top5, {})
    assert paper_tables.paired_counts(top5, base) == {"float_only": 1, "compressed_only": 1}


def test_done_table_shows_the_interval_and_judges_the_drop_itself():
    rows = {
        paper_tables.sweep_key(r): r
        for r in [
            fake_row("mixed", 2.1, 7.71, images=900, float_only=30, compressed_only=11),
            fake_row("mixed", 0.6, 6.2, bits=5, images=900, float_only=10, compressed_only=5),
        ]
    }
    lines = paper_tables.render_report(rows, "report").splitlines()
    tb4 = next(line for line in lines if "`--target-bits 4 --calibration`" in line)
    assert "| 2.1 | 0.7 .. 3.5 | <= 2.0 |" in tb4 and tb4.endswith("| **missed** (drop) |")
    tb5 = next(line for line in lines if "`--target-bits 5 --calibration`" in line)
    assert "| 0.6 | -0.3 .. 1.4 | <= 1.0 |" in tb5 and tb5.endswith("| met |")  # 5/900 +- 0.84 points
    datafree = next(line for line in lines if "`--target-bits 5, no calibration`" in line)
    assert datafree.startswith("| tiny | `--target-bits 5, no calibration` | - | - |")


def test_sweep_skips_configs_already_in_the_results(results, tmp_path, capsys):
    args = argparse.Namespace(
        results=results, bits=[4], codebooks=["exponential"], granularities=["channel"], methods=["plain"]
    )
    # The model file is never opened: every config is done.
    paper_tables.sweep_model(tmp_path / "tiny.onnx", args, "cmd", "abc1234", tmp_path)
    assert "every config already" in capsys.readouterr().err


def test_each_method_maps_to_its_config(tmp_path):
    calib = tmp_path / "c.npz"
    configs = {
        name: paper_tables.method_config(m, 4, "exponential", "channel", calib)
        for name, m in paper_tables.METHODS.items()
    }
    resolved = {
        n: (c.calibration is not None, c.resolved_rounding(), c.resolved_bias_correction(), c.target_bits)
        for n, c in configs.items()
    }
    assert resolved == {
        "plain": (False, "nearest", False, None),
        "bias": (True, "nearest", True, None),
        "gptq": (True, "gptq", False, None),
        "gptq+bias": (True, "gptq", True, None),
        "mixed": (True, "gptq", True, 4.0),
        "mixed-datafree": (False, "nearest", False, 4.0),
        "mixed-blocks": (True, "gptq", True, 4.0),
        "mixed-datafree-blocks": (False, "nearest", False, 4.0),
    }
    assert not any(c.validate for c in configs.values())
    assert {n for n, c in configs.items() if c.sensitivity == "blocks"} == {
        "mixed-blocks",
        "mixed-datafree-blocks",
    }


@pytest.mark.skipif(not IMAGES.is_dir(), reason=f"needs the shared ImageNet sample at {IMAGES}")
def test_the_shared_sample_splits_100_and_900():
    items = imagenet.list_images(IMAGES)
    calibration = imagenet.select_images(items, every=paper_tables.SPLIT)
    evaluation = imagenet.select_images(items, exclude_every=paper_tables.SPLIT)
    assert (len(calibration), len(evaluation)) == (100, 900)
    assert not {p for p, _ in calibration} & {p for p, _ in evaluation}
    assert np.all(np.array([c for _, c in calibration]) % 10 == 0)


def test_seed_0_reproduces_the_algorithm_md_table():
    """10,000 numbers per distribution, seed 0: ALGORITHM.md's table within one unit of its last digit."""
    samples = paper_tables.draw_all(10_000, seed=0)
    for (distribution, codebook), by_bits in paper_tables.REFERENCE.items():
        for bits, expected in by_bits.items():
            found = paper_tables.search_maximum(samples[distribution], CODEBOOKS[codebook], bits)
            unit = 10.0 ** -len(str(expected).split(".")[1])
            assert abs(found.correlation - expected) <= unit, (distribution, codebook, bits)
