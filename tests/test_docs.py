"""The README quotes measurements only as docs/RESULTS.md states them: the numbers of each
clause of the README together on one line of RESULTS (a table row, or a sentence)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Decimal numbers in the README that are settings, versions or references, not measurements.
NOT_MEASURED = {
    "3.11",  # the Python version
    "2002.00623",  # the paper's arXiv number
    "0.97",  # example --gate thresholds and the default --min-cosine
    "0.98",
    "0.99",
}
NUMBER = re.compile(r"(?<![\w.])(\d+\.\d+)x?(?![\w.])")  # 6.09 and 6.09x, not v1.2.3 or lite0.5bit


def decimals(text: str) -> set[str]:
    return set(NUMBER.findall(text))


def test_decimals_ignores_names_and_versions():
    assert decimals("6.09x smaller, 9.2 points, lite0.5bit.onnx, v1.2.3, (0.14 GB)") == {
        "6.09",
        "9.2",
        "0.14",
    }


def clauses(text: str) -> list[str]:
    """The README's clauses: its paragraphs, joined across line breaks, cut at , ; and . ."""
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    return [c for p in paragraphs for c in re.split(r"[;,.]\s", p)]


def test_clauses_cut_at_punctuation_across_lines():
    assert clauses("makes it 6.16x\nsmaller and loses 0.6, then 7.61x; and 1.9.\n\nnext 2.5") == [
        "makes it 6.16x smaller and loses 0.6",
        "then 7.61x",
        "and 1.9.",
        "next 2.5",
    ]


def test_every_measurement_in_the_readme_is_on_one_line_of_results():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [
        decimals(line) for line in (ROOT / "docs" / "RESULTS.md").read_text(encoding="utf-8").splitlines()
    ]
    quoted = [(c, decimals(c) - NOT_MEASURED) for c in clauses(readme)]
    quoted = [(c, q) for c, q in quoted if q]
    assert len(quoted) >= 4, "the README quotes almost no measurement: the pattern no longer reads it"
    missing = [c for c, q in quoted if not any(q <= line for line in lines)]
    assert not missing, f"README clauses whose numbers share no line of docs/RESULTS.md: {missing}"


def test_the_readme_stays_under_200_lines():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) < 200
