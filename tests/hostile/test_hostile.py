"""Issue 18's hostile-input corpus: the default suite runs a fixed sample, `pytest -m heavy` every
case; tools/run_hostile.py prints the cause x passed/failed table. The runner's judge is tested
here too, on runs that break each rule, so that a passing corpus means something."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from hostile import corpus, runner
from hostile.runner import Case, _Run

CHECKOUT = Path(__file__).resolve().parents[2]


def _failures(outcomes) -> str:
    return "\n".join(str(o) for o in outcomes if not o)


def test_the_corpus_has_300_cases_over_the_seven_causes():
    cases = corpus.all_cases()
    counts = Counter(c.cause for c in cases)
    assert len(cases) >= 300
    assert set(counts) == set(corpus.CAUSES) and len(corpus.CAUSES) == 7
    assert min(counts.values()) >= 20, counts


def test_the_runner_runs_this_checkout_and_not_from_the_case_folder(tmp_path):
    assert runner.REPO == CHECKOUT
    (tmp_path / "onnxq").mkdir()  # a planted package the runner's onnxq must not pick up
    (tmp_path / "onnxq" / "__init__.py").write_text("raise SystemExit('planted')\n")
    root = runner.prepare(tmp_path / "root")
    done = subprocess.run(
        [sys.executable, str(root / "bin" / "onnxq"), "--version"],
        cwd=tmp_path,
        env=runner.environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.startswith("onnxq "), done.stderr
    probe = "import onnxq, sys; print(onnxq.__file__)"
    where = subprocess.run(
        [sys.executable, "-P", "-c", probe],
        cwd=tmp_path,
        env=runner.environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert Path(where.strip()).is_relative_to(CHECKOUT)


def _case(**fields) -> Case:
    return Case("test", "case", lambda folder: [], **fields)


def _run(code: int, stderr: str = "", **fields) -> _Run:
    return _Run(code, 1.0, 2**20, "", stderr, **fields)


BEFORE = {"m.onnx": "aaa"}


@pytest.mark.parametrize(
    ("case", "run", "after", "rule"),
    [
        (_case(), _run(1, "Traceback (most recent call last):\nerror: x\n"), BEFORE, "traceback"),
        (_case(), _run(1, "Exception ignored in: <x>\nerror: x\n"), BEFORE, "traceback"),
        (_case(), _run(1, "error: one\nerror: two\n"), BEFORE, "error line"),
        (_case(), _run(2, "Usage: onnxq\n\nError: bad value\n"), BEFORE, "error line"),
        (_case(), _run(1, "error: x\nmore\n"), BEFORE, "error line"),
        (_case(), _run(7, "error: x\n"), BEFORE, "exit"),
        (_case(expect="refused"), _run(0), BEFORE, "exit"),
        (_case(expect="ok"), _run(1, "error: x\n"), BEFORE, "exit"),
        (_case(signal=signal.SIGTERM), _run(-15, signalled=True), BEFORE, "exit"),
        (_case(signal=signal.SIGTERM), _run(130, "interrupted\n", signalled=True), BEFORE, "exit"),
        (_case(signal=signal.SIGINT), _run(130, "error: x\n", signalled=True), BEFORE, "error line"),
        (_case(), _run(0), {"m.onnx": "bbb"}, "input changed"),
        (_case(), _run(1, "error: x\n"), {**BEFORE, "out.onnx": "c"}, "left behind"),
        (_case(), _run(0), {**BEFORE, "out.onnx": "c", ".out.onnx.1a2b.tmp": "d"}, "left behind"),
        (_case(), _run(0), {**BEFORE, "stray.bin": "d"}, "left behind"),
        (_case(), _run(0), {**BEFORE, "CANARY-pickle": "e"}, "folder code"),
        (_case(), _run(1, "error: x\n", timed_out=True), BEFORE, "time"),
        (_case(), _run(0, orphans=[12345]), BEFORE, "processes"),
    ],
)
def test_the_judge_finds_each_broken_rule(case, run, after, rule, tmp_path):
    assert rule in runner.judge(case, run, tmp_path, BEFORE, after)


def test_the_judge_passes_good_runs(tmp_path):
    ok = {**BEFORE, "out.onnx": "c", "report.json": "r"}
    assert runner.judge(_case(), _run(0), tmp_path, BEFORE, ok) == []
    assert (
        runner.judge(_case(), _run(1, "[ 0 s] reading\nerror: bad; fix it\n"), tmp_path, BEFORE, BEFORE) == []
    )
    assert runner.judge(_case(), _run(3, "error: failed its gate\n"), tmp_path, BEFORE, ok) == []
    interrupted = _run(143, "interrupted: out.onnx was not written\n", signalled=True)
    assert runner.judge(_case(signal=signal.SIGTERM), interrupted, tmp_path, BEFORE, BEFORE) == []


def test_the_judge_finds_the_secret_in_an_output(tmp_path):
    (tmp_path / "out.onnx").write_bytes(b"header" + runner.SECRET[:100])
    after = {**BEFORE, "out.onnx": "c"}
    assert "read outside" in runner.judge(_case(), _run(0), tmp_path, BEFORE, after)


def test_the_judge_measures_memory(tmp_path):
    run = _Run(0, 1.0, runner.MEMORY_LIMIT + 1, "", "")
    assert "memory" in runner.judge(_case(), run, tmp_path, BEFORE, BEFORE)


def test_a_sample_of_the_corpus(tmp_path):
    done = run_tool(tmp_path, "--sample")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "| **total** | 15 | 15 | 0 |" in done.stdout


def run_tool(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """tools/run_hostile.py in a process of its own: a case's peak memory comes from wait4, and
    Linux counts in it the memory of the process it was forked from. Forked from a pytest process
    that had held the heavy tests' large models, every case read as over 4 GB."""
    tool = Path(__file__).resolve().parents[2] / "tools" / "run_hostile.py"
    argv = [sys.executable, str(tool), "--keep", str(tmp_path / "run"), *args]
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=3600)


@pytest.mark.heavy
def test_the_whole_corpus(tmp_path):
    done = run_tool(tmp_path)
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    total = next(line for line in done.stdout.splitlines() if line.startswith("| **total** |"))
    assert total.endswith("| 0 |") and int(total.split("|")[2]) >= 300, total


def test_a_planted_module_leaves_its_canary_when_the_folder_is_on_the_path(tmp_path):
    from hostile import folder_code

    folder_code.plant(tmp_path, "pickle")
    folder_code.plant(tmp_path, "multiprocessing/")
    probe = "import pickle, multiprocessing"  # -c puts the working folder first on the path
    subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=runner.environment(), timeout=60, check=False
    )
    assert sorted(p.name for p in tmp_path.glob(f"{runner.CANARY}*")) == [
        f"{runner.CANARY}multiprocessing",
        f"{runner.CANARY}pickle",
    ]
