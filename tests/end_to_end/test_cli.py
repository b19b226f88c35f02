"""The onnxq command line: exit codes 0/1/2/3, one `error: ...` line, no traceback, no leftovers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import (
    make_model,
    no_weights_model,
    relocate,
    rename_weight,
    run,
    save_external,
    sha256,
    small_cnn,
    tiny_model,
    value,
    without_progress,
)
from onnx import helper, numpy_helper
from typer.testing import CliRunner

import onnxq
from onnxq import cli
from onnxq.cli import app

ENTRY_POINT = Path(sys.executable).with_name("onnxq")


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Text with rich's line wrapping undone."""
    return " ".join(text.split())


def no_traceback(result) -> None:
    text = result.stdout + result.stderr
    assert "Traceback" not in text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def error_message(result) -> str:
    """The one `error: ...` line on stderr, and nothing else."""
    no_traceback(result)
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr.startswith("error: "), repr(result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), "not one line"
    assert result.stdout == ""
    return result.stderr.strip()


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------------------
# Success paths


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"onnxq {onnxq.__version__}"


def test_no_arguments_shows_usage():
    result = invoke()
    assert result.exit_code in (0, 2)
    assert "compress" in result.stdout + result.stderr and "validate" in result.stdout + result.stderr
    text = flat(result.stdout + result.stderr)
    assert "Shrink the weights of trained ONNX models" in text and "Nothing else" not in text


def test_compress(tiny_path, tmp_path):
    before = sha256(tiny_path)
    result = invoke("compress", tiny_path, tmp_path / "out.onnx", "--bits", "4", "--samples", "2")
    no_traceback(result)
    assert result.exit_code == 0, result.stderr
    assert sha256(tiny_path) == before
    assert files(tmp_path) == ["out.onnx", "tiny.onnx"]
    stdout = flat(result.stdout)
    assert "compressed 6 tensors" in stdout
    assert "x smaller" in stdout
    lines = result.stdout.splitlines()
    assert f"input: {tiny_path}" in lines and f"output: {tmp_path / 'out.onnx'}" in lines
    assert "validation against the float model (2 samples): not checked against real data" in stdout
    assert "hint: pass real inputs with --inputs" in stdout and "passed" not in stdout
    assert result.stdout.splitlines()[-1] == f"wrote {tmp_path / 'out.onnx'}"
    onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"), full_check=True)


def test_options_reach_the_library(tiny_path, tmp_path, monkeypatch):
    seen = {}

    def fake_compress(src, dst, config, progress=None, pictures=False, force=False, before_commit=None):
        seen.update(src=src, dst=dst, config=config, force=force)
        return onnxq.Report(config={})

    monkeypatch.setattr(cli, "compress", fake_compress)
    result = invoke(
        "compress",
        tiny_path,
        tmp_path / "out.onnx",
        "--bits",
        "3",
        "--codebook",
        "linear",
        "--granularity",
        "tensor",
        "--scale",
        "variance",
        "--search",
        "fast",
        "--jobs",
        "3",
        "--min-elements",
        "10",
        "--exclude",
        "^emb",
        "--exclude",
        "conv",
        "--dim",
        "batch=4",
        "--samples",
        "2",
        "--seed",
        "7",
        "--min-sqnr",
        "12.5",
        "--min-agreement",
        "0.9",
        "--no-validate",
    )
    assert result.exit_code == 0, result.stderr
    c = seen["config"]
    assert seen["src"] == tiny_path and seen["dst"] == tmp_path / "out.onnx"
    assert (c.bits, c.codebook, c.granularity, c.scale, c.search, c.format) == (
        3,
        "linear",
        "tensor",
        "variance",
        "fast",
        "fold",
    )
    assert c.jobs == 3
    assert c.min_elements == 10 and c.exclude == ("^emb", "conv")
    assert c.dims == {"batch": 4} and c.samples == 2 and c.seed == 7
    assert c.min_sqnr == 12.5 and c.min_agreement == 0.9 and c.validate is False
    assert seen["force"] is False


def test_defaults_reach_the_library(tiny_path, tmp_path, monkeypatch):
    seen = []

    def fake_compress(src, dst, config, progress=None, pictures=False, force=False, before_commit=None):
        seen.append((config, pictures))
        return onnxq.Report(config={})

    monkeypatch.setattr(cli, "compress", fake_compress)
    assert invoke("compress", tiny_path, tmp_path / "out.onnx").exit_code == 0
    # Only the worker processes differ: the library runs in its caller's process unless asked.
    assert seen == [(onnxq.Config(jobs=min(os.cpu_count() or 1, 8)), False)]
    # An HTML report asks the library to keep what it draws.
    assert (
        invoke("compress", tiny_path, tmp_path / "out.onnx", "--report", tmp_path / "r.html").exit_code == 0
    )
    assert seen[-1][1] is True


def test_report_json(tiny_path, tmp_path):
    result = invoke(
        "compress", tiny_path, tmp_path / "out.onnx", "--report", tmp_path / "r.json", "--samples", "1"
    )
    assert result.exit_code == 0, result.stderr
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["schema_version"] == 2
    assert d["summary"]["compressed_tensors"] == 6
    assert d["summary"]["output_bytes"] == (tmp_path / "out.onnx").stat().st_size


def test_report_markdown(tiny_path, tmp_path):
    result = invoke(
        "compress", tiny_path, tmp_path / "out.onnx", "--report", tmp_path / "r.md", "--no-validate"
    )
    assert result.exit_code == 0, result.stderr
    md = (tmp_path / "r.md").read_text()
    assert md.startswith("# onnxq compression report\n")
    assert "| mm.b | [400, 24] |" in md
    assert "validation: skipped" in flat(result.stdout)


def test_no_compressible_weights_exits_0_with_a_warning(tmp_path, rng):
    src = no_weights_model(tmp_path, rng)
    result = invoke("compress", src, tmp_path / "out.onnx")
    no_traceback(result)
    assert result.exit_code == 0
    assert "no compressible weights" in flat(result.stdout + result.stderr)
    assert (tmp_path / "out.onnx").read_bytes() == src.read_bytes()


def test_min_sqnr_not_met_exits_3(tiny_path, tmp_path):
    result = invoke("compress", tiny_path, tmp_path / "out.onnx", "--min-sqnr", "200", "--samples", "1")
    no_traceback(result)
    assert result.exit_code == 3
    assert "FAILED" in result.stdout and "< 200 (--min-sqnr)" in flat(result.stdout)
    assert (tmp_path / "out.onnx").is_file()
    assert (
        flat(without_progress(result.stderr))
        == f"error: {tmp_path / 'out.onnx'} was written, but it failed its validation gate (see above)"
    )


def test_the_default_gate_on_real_inputs_exits_3(tiny, tiny_path, tmp_path):
    np.savez(tmp_path / "in.npz", x=tiny[1]["x"], ids=tiny[1]["ids"])
    args = ("compress", tiny_path, tmp_path / "out.onnx", "--bits", "1", "--inputs", tmp_path / "in.npz")
    result = invoke(*args)
    assert result.exit_code == 3 and "(default)" in flat(result.stdout)
    assert invoke(*args, "--min-cosine", "-1").exit_code == 0


def test_min_agreement_not_met_exits_3(tiny, tiny_path, tmp_path):
    np.savez(tmp_path / "in.npz", x=tiny[1]["x"], ids=tiny[1]["ids"])
    result = invoke(
        "compress",
        tiny_path,
        tmp_path / "out.onnx",
        "--bits",
        "1",
        "--min-agreement",
        "1",
        "--min-cosine",
        "0",
        "--inputs",
        tmp_path / "in.npz",
    )
    assert result.exit_code == 3
    assert "(--min-agreement)" in flat(result.stdout)


# ---------------------------------------------------------------------------
# Usage errors: exit 2


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--bits", "0"], "--bits"),
        (["--bits", "9"], "--bits"),
        (["--bits", "five"], "--bits"),
        (["--codebook", "lloyd"], "kmeans, auto"),
        (["--granularity", "row"], "tensor, channel"),
        (["--scale", "max"], "variance, lsq"),
        (["--search", "bisect"], "auto, grid, fast"),
        (["--format", "zip"], "fold"),
        (["--min-elements", "0"], "--min-elements"),
        (["--samples", "0"], "--samples"),
        (["--dim", "batch"], "NAME=SIZE"),
        (["--dim", "batch=0"], "NAME=SIZE"),
        (["--dim", "batch=1000000000"], "NAME=SIZE"),
        (["--min-agreement", "1.01"], "--min-agreement"),
        (["--min-agreement", "-0.1"], "--min-agreement"),
        (["--min-cosine", "2"], "--min-cosine"),
        (["--min-sqnr", "nan"], "--min-sqnr"),
        (["--batch", "0"], "--batch"),
        (["--target-bits", "9"], "'--target-bits': must be between 2 and 8; got 9"),
        (["--target-bits", "nan"], "'--target-bits': must be a number, not nan"),
        (["--target-bits", "inf"], "'--target-bits': must be between 2 and 8; got inf"),
        (["--min-cosine", "nan"], "'--min-cosine': must be a number, not nan"),
        (["--report", "r.txt"], ".json, .md or .html"),
        (["--no-such-option"], "No such option"),
    ],
)
def test_usage_errors_exit_2(args, expected, tiny_path, tmp_path):
    before = files(tmp_path)
    result = invoke("compress", tiny_path, tmp_path / "out.onnx", *args)
    no_traceback(result)
    assert result.exit_code == 2
    assert expected in flat(result.stderr)
    assert files(tmp_path) == before


# ---------------------------------------------------------------------------
# Bad input: exit 1, one error message, nothing left behind


def bad_inputs(kind: str, tmp_path: Path, tiny) -> tuple[Path, Path, str]:
    """(src, dst, expected words in the message) for one kind of bad input."""
    dst = tmp_path / "out.onnx"
    good = tmp_path / "good.onnx"
    onnx.save(tiny[0], good)
    if kind == "not-onnx":
        src = tmp_path / "notes.onnx"
        src.write_text("these are my notes, not a model\n" * 20)
        return src, dst, "not a readable ONNX model"
    if kind == "truncated":
        src = tmp_path / "half.onnx"
        data = good.read_bytes()
        src.write_bytes(data[: len(data) // 2])
        return src, dst, "ONNX"
    if kind == "missing":
        return tmp_path / "missing.onnx", dst, "does not exist"
    if kind == "external-missing":
        src = save_external(tiny[0], tmp_path / "ext")
        (tmp_path / "ext" / "model.bin").unlink()
        return src, dst, "is missing"
    if kind == "external-outside":
        src = save_external(tiny[0], tmp_path / "ext")
        shutil.move(tmp_path / "ext" / "model.bin", tmp_path / "x.bin")
        relocate(src, "../x.bin")
        return src, dst, "outside the model's folder"
    if kind == "no-output-folder":
        return good, tmp_path / "nowhere" / "out.onnx", "does not exist"
    if kind == "output-is-input":
        return good, good, "is a file of the input model"
    if kind == "output-is-folder":
        return good, tmp_path, "is a folder"
    raise AssertionError(kind)


BAD_INPUTS = [
    "not-onnx",
    "truncated",
    "missing",
    "external-missing",
    "external-outside",
    "no-output-folder",
    "output-is-input",
    "output-is-folder",
]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_gives_one_error_and_leaves_nothing(kind, tmp_path, tiny):
    src, dst, words = bad_inputs(kind, tmp_path, tiny)
    before = files(tmp_path)
    hashes = {p: sha256(tmp_path / p) for p in before if (tmp_path / p).is_file()}
    result = invoke("compress", src, dst)
    message = error_message(result)
    assert words in message
    assert files(tmp_path) == before, "an output or temporary file was left behind"
    assert {p: sha256(tmp_path / p) for p in hashes} == hashes, "an input file changed"


def test_a_long_error_message_stays_on_one_line(tmp_path):
    src = tmp_path / ("a_rather_long_folder_name_" * 3) / "model_with_a_long_name.onnx"
    result = invoke("compress", src, tmp_path / "out.onnx")
    assert len(str(src)) > 100
    assert "does not exist" in error_message(result)


def test_report_in_a_missing_folder_is_a_clean_error(tiny_path, tmp_path):
    result = invoke(
        "compress",
        tiny_path,
        tmp_path / "out.onnx",
        "--no-validate",
        "--report",
        tmp_path / "nowhere" / "r.json",
    )
    error_message(result)
    assert files(tmp_path) == ["tiny.onnx"]


def test_unreadable_inputs_npz_leaves_nothing(tiny_path, tmp_path):
    result = invoke("compress", tiny_path, tmp_path / "out.onnx", "--inputs", tmp_path / "missing.npz")
    assert "does not exist" in error_message(result)
    assert files(tmp_path) == ["tiny.onnx"]


# ---------------------------------------------------------------------------
# validate


@pytest.fixture
def compressed(tiny_path, tmp_path) -> Path:
    dst = tmp_path / "out.onnx"
    onnxq.compress(tiny_path, dst, bits=6, validate=False)
    return dst


def test_validate(tiny_path, compressed):
    result = invoke("validate", tiny_path, compressed, "--samples", "2")
    no_traceback(result)
    assert result.exit_code == 0
    assert "(2 samples): not checked against real data" in flat(result.stdout)
    assert "SQNR" in result.stdout


def test_validate_with_inputs(tiny, tiny_path, compressed, tmp_path):
    np.savez(tmp_path / "in.npz", x=tiny[1]["x"], ids=tiny[1]["ids"])
    result = invoke("validate", tiny_path, compressed, "--inputs", tmp_path / "in.npz", "--min-sqnr", "10")
    assert result.exit_code == 0, result.stdout
    assert "(1 samples): passed" in flat(result.stdout)
    assert "cosine >= 0.98 on every output (default)" in flat(result.stdout)


def test_validate_below_threshold_exits_3(tiny_path, compressed):
    result = invoke("validate", tiny_path, compressed, "--min-sqnr", "200")
    assert result.exit_code == 3
    assert "FAILED" in result.stdout


@pytest.mark.parametrize("args", [["--min-sqnr", "nan"], ["--min-cosine", "1.5"], ["--samples", "0"]])
def test_validate_range_errors_are_usage_errors(args, tiny_path, compressed):
    result = invoke("validate", tiny_path, compressed, *args)
    no_traceback(result)
    assert result.exit_code == 2 and args[0] in flat(result.stderr)


def test_validate_missing_model(tiny_path, tmp_path):
    result = invoke("validate", tiny_path, tmp_path / "missing.onnx")
    assert "does not exist" in error_message(result)


def test_validate_not_onnx(tiny_path, tmp_path):
    (tmp_path / "bad.onnx").write_text("not a model")
    result = invoke("validate", tiny_path, tmp_path / "bad.onnx")
    assert "onnxruntime cannot load the model" in error_message(result)


# ---------------------------------------------------------------------------
# The installed entry point, for real


@pytest.mark.skipif(not ENTRY_POINT.exists(), reason=f"no onnxq entry point at {ENTRY_POINT}")
def test_entry_point_version():
    done = subprocess.run(
        [str(ENTRY_POINT), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"onnxq {onnxq.__version__}"


@pytest.mark.skipif(not ENTRY_POINT.exists(), reason=f"no onnxq entry point at {ENTRY_POINT}")
@pytest.mark.parametrize("command", ["help", "inspect", "compress --json"])
def test_a_closed_stdout_ends_in_one_error_line(command, tiny_path, tmp_path):
    """A reader that stops early (`onnxq ... | head`): click and rich would exit 1 in silence."""
    args = {
        "help": ["compress", "--help"],
        "inspect": ["inspect", str(tiny_path)],
        "compress --json": [
            "compress",
            str(tiny_path),
            str(tmp_path / "out.onnx"),
            "--samples",
            "1",
            "--json",
        ],
    }[command]
    proc = subprocess.Popen(
        [str(ENTRY_POINT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    proc.stdout.close()  # before onnxq has written anything: it takes a second to start
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 1
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1] == f"error: {cli.STDOUT_CLOSED}", stderr
    assert "Traceback" not in stderr and sum(line.startswith("error:") for line in lines) == 1
    if command.startswith("compress"):  # written before the summary
        onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"))


@pytest.mark.skipif(not ENTRY_POINT.exists(), reason=f"no onnxq entry point at {ENTRY_POINT}")
def test_entry_point_compress_and_bad_input(tiny_path, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # a narrow, non-terminal stderr
    ok = subprocess.run(
        [str(ENTRY_POINT), "compress", str(tiny_path), str(tmp_path / "out.onnx"), "--samples", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out.onnx").is_file()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00" * 100)
    done = subprocess.run(
        [str(ENTRY_POINT), "compress", str(bad), str(tmp_path / "out2.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, repr(done.stderr)
    assert not (tmp_path / "out2.onnx").exists()


@pytest.mark.parametrize("fmt", ["fold", "qdq"])
def test_compressing_an_onnxq_output_exits_1_unless_forced(fmt, tiny, tiny_path, tmp_path):
    once, twice = tmp_path / "once.onnx", tmp_path / "twice.onnx"
    first = invoke(
        "compress", tiny_path, once, "--format", fmt, "--exclude", "conv", "--report", tmp_path / "1.json"
    )
    assert first.exit_code == 0
    refused = error_message(invoke("compress", once, twice))
    assert "written by onnxq compress already" in refused and "--force" in refused
    assert not twice.exists()
    result = invoke("compress", once, twice, "--force", "--format", fmt, "--report", tmp_path / "2.json")
    assert result.exit_code == 0, result.output
    skipped = json.loads((tmp_path / "1.json").read_text())["skipped"]
    excluded = {x["name"] for x in skipped if x["reason"].startswith("excluded")}
    assert (
        excluded and {w["name"] for w in json.loads((tmp_path / "2.json").read_text())["weights"]} == excluded
    )
    assert run(twice, tiny[1])


def test_a_bad_exclude_regex_is_a_usage_error(tiny_path, tmp_path):
    result = invoke("compress", tiny_path, tmp_path / "out.onnx", "--exclude", "(")
    assert result.exit_code == 2
    assert "not a valid regular expression" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert files(tmp_path) == ["tiny.onnx"]


def test_an_old_opset_is_upgraded_and_said_so(tmp_path):
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [value("x", [1, 32])],
        [value("y", [1, 32])],
        [numpy_helper.from_array(np.ones((32, 32), np.float32), "W")],
        opset=10,
    )
    src = tmp_path / "old.onnx"
    onnx.save(model, src)
    result = invoke("compress", src, tmp_path / "out.onnx", "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    notes = json.loads((tmp_path / "r.json").read_text())["notes"]
    assert any("upgraded the default opset from 10 to 11" in n for n in notes)
    out = onnx.load(tmp_path / "out.onnx")
    assert [i.version for i in out.opset_import if i.domain == ""] == [11]


def test_worker_processes_import_nothing_from_the_folder_onnxq_runs_in(tiny_path, tmp_path):
    """A multiprocessing/ package, pickle.py or socket.py planted where the user runs onnxq is
    never imported: spawned workers would put that folder first on sys.path."""
    script = Path(sys.executable).parent / "onnxq"
    if not script.is_file():
        pytest.skip(f"no onnxq console script beside {sys.executable}: install the package to run this")
    planted = tmp_path / "cwd"
    (planted / "multiprocessing").mkdir(parents=True)
    for module in ("multiprocessing/__init__.py", "pickle.py", "socket.py"):
        marker = tmp_path / f"ran-{module.replace('/', '-')}"
        (planted / module).write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('planted')\n")
    done = subprocess.run(
        [str(script), "compress", str(tiny_path), str(tmp_path / "out.onnx"), "--jobs", "2", "--no-validate"]
        + ["--search", "exact"],  # worker processes run the exact search
        cwd=planted,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.glob("ran-*")), "a planted module ran"
    assert (tmp_path / "out.onnx").is_file()


COLLISIONS = [
    "output-is-input-data",
    "output-data-is-input-data",
    "report-is-input",
    "report-is-output",
    "report-is-folder",
]


def collision(kind: str, tmp_path: Path) -> tuple[list, Path, str]:
    """(compress arguments, the input's file that must survive, the error's words) for a kind of
    output or report path that names a file of the input or of the output."""
    src = save_external(small_cnn(), tmp_path / "in")
    data = src.parent / "model.bin"
    if kind == "output-is-input-data":
        return [src, data], data, "is a file of the input model"
    if kind == "output-data-is-input-data":
        relocate(src, "out.onnx.data")
        data.rename(src.parent / "out.onnx.data")
        return [src, src.parent / "out.onnx"], src.parent / "out.onnx.data", "external data would go to"
    if kind == "report-is-input":
        named = src.parent / "model.json"  # an ONNX file with another suffix is still the input
        src.rename(named)
        return [named, tmp_path / "out.onnx", "--report", named], named, "is a file of the input model"
    if kind == "report-is-output":
        out = tmp_path / "out.json"
        return [src, out, "--report", out], src, "is where the output goes"
    (tmp_path / "r.json").mkdir()
    return [src, tmp_path / "out.onnx", "--report", tmp_path / "r.json"], src, "is a folder"


@pytest.mark.parametrize("kind", COLLISIONS)
def test_an_output_or_report_path_that_names_a_file_of_the_input_or_output_is_refused(kind, tmp_path):
    args, kept, words = collision(kind, tmp_path)
    before = sha256(kept)
    listed = files(tmp_path)
    result = invoke("compress", *args, "--min-elements", "1")
    no_traceback(result)
    assert result.exit_code == 1
    assert words in flat(result.stderr)
    assert sha256(kept) == before
    assert files(tmp_path) == listed


def test_an_output_name_too_long_for_the_temporary_file_is_refused_before_the_work(tiny_path, tmp_path):
    from onnxq.graph.io import TEMP_EXTRA

    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    fits = tmp_path / ("a" * (limit - TEMP_EXTRA - len(".onnx")) + ".onnx")
    too_long = tmp_path / ("a" * (limit - TEMP_EXTRA + 1 - len(".onnx")) + ".onnx")
    before = files(tmp_path)
    result = invoke("compress", tiny_path, too_long, "--no-validate")
    no_traceback(result)
    assert result.exit_code == 1 and "choose a name of at most" in flat(result.stderr)
    assert files(tmp_path) == before
    assert invoke("compress", tiny_path, fits, "--no-validate").exit_code == 0
    assert fits.is_file() and files(tmp_path) == sorted([*before, fits.name])


def test_names_that_look_like_rich_markup_are_printed_as_they_are(tmp_path):
    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    model = make_model(
        [helper.make_node("MatMul", ["x", "[/]"], ["[bold]y"], name="[red]mm")],
        [value("x", [1, 64])],
        [value("[bold]y", [1, 32])],
        [numpy_helper.from_array(w, "[/]")],
    )
    src = tmp_path / "markup.onnx"
    onnx.save(model, src)
    result = invoke("compress", src, tmp_path / "out.onnx", "--min-elements", "1")
    no_traceback(result)
    assert result.exit_code == 0
    assert "[/]" in result.stdout and "[bold]y" in result.stdout


def test_long_names_wrap_in_the_terminal_tables_and_are_never_cut(tmp_path):
    model, _ = tiny_model()
    long = "encoder.layers.0.attention.self.query_projection.weight_" + "x" * 60
    rename_weight(model, "mm.b", long)
    src = tmp_path / "long.onnx"
    onnx.save(model, src)
    result = invoke("compress", src, tmp_path / "out.onnx", "--samples", "1")
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    # Longer than the line: the name, on lines of its own, is folded, never cut.
    assert long in "".join(line.strip() for line in result.stdout.splitlines())
    assert all(len(line) <= 100 for line in result.stdout.splitlines())


def test_compress_help_fits_80_columns_without_cutting_words():
    result = CliRunner().invoke(app, ["compress", "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "…" not in result.output
    assert "the weights GPTQ rounds" in flat(result.output)
    assert len(lines) < 120  # 221 lines in rich's boxes, with most words cut
    assert not any(line.rstrip().endswith("-") for line in lines), "a word cut at its hyphen"


def test_summary_lists_the_worst_tensors_of_a_large_model(tmp_path):
    """Over cli.ALL_ROWS tensors, the terminal shows the worst few by SQNR; the report has all."""
    rng = np.random.default_rng(0)
    count = cli.ALL_ROWS + 4
    nodes, inits = [], []
    for i in range(count):
        # Heavier tails give lower SQNR: the worst are the last ones.
        w = rng.standard_t(2 + 30 / (i + 1), (16, 16)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"h{i}" if i else "x", f"w{i}"], [f"h{i + 1}"]))
    src = tmp_path / "deep.onnx"
    onnx.save(make_model(nodes, [value("x", [1, 16])], [value(f"h{count}", [1, 16])], inits), src)
    result = invoke("compress", src, tmp_path / "out.onnx", "--bits", "3", "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    sqnr = {w["name"]: w["sqnr_db"] for w in json.loads((tmp_path / "r.json").read_text())["weights"]}
    worst = sorted(sqnr, key=sqnr.get)[: cli.WORST_ROWS]
    rows = [line.split("│")[1].strip() for line in result.stdout.splitlines() if line.count("│") > 7]
    tensor_rows = [r for r in rows if r in sqnr]
    assert sorted(tensor_rows) == sorted(worst)
    assert f"compressed {count} tensors; the worst {cli.WORST_ROWS} by SQNR" in flat(result.stdout)
    assert "widths (tensors): 3 bits: 12 (100%)" in flat(result.stdout)


def test_quiet_and_json_are_for_scripts(tiny_path, tmp_path):
    quiet = invoke("compress", tiny_path, tmp_path / "q.onnx", "--quiet", "--samples", "1")
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""
    assert (tmp_path / "q.onnx").is_file()
    as_json = invoke("compress", tiny_path, tmp_path / "j.onnx", "--json", "--samples", "1")
    assert as_json.exit_code == 0, as_json.output
    d = json.loads(as_json.stdout)  # stdout is the report and nothing else
    assert d["summary"]["compressed_tensors"] == 6 and d["paths"]["output"] == str(tmp_path / "j.onnx")
    both = invoke("compress", tiny_path, tmp_path / "b.onnx", "--quiet", "--json")
    assert both.exit_code == 2 and not (tmp_path / "b.onnx").exists()
    failed = invoke("compress", tiny_path, tmp_path / "f.onnx", "-q", "--samples", "1", "--min-sqnr", "200")
    assert failed.exit_code == 3 and failed.stdout == ""
    assert failed.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'f.onnx'} was written, but it failed its validation gate"
    ]


@pytest.mark.parametrize("command", ["compress", "decompress", "validate", "inspect", "sweep"])
def test_help_shows_the_choices_of_an_option_not_its_type(command):
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert not any(t in result.output for t in ("<str>", "<bool>", "<list[str]>"))
    assert all(len(line) <= 80 for line in result.output.splitlines())
    if command in ("compress", "inspect"):
        assert "--format [fold|qdq|matmulnbits]" in result.output
        assert "--codebook [linear|exponential|kmeans|auto]" in result.output
    if command == "compress":
        assert "--search [auto|grid|fast|exact]" in result.output
        assert "--rounding [nearest|gptq]" in result.output


# ---------------------------------------------------------------------------
# inspect


def test_inspect_a_float_model_and_its_output_at_80_columns(tmp_path):
    model, _ = tiny_model()
    long = "encoder.layers.0.attention.self.query_projection.weight_" + "x" * 60
    rename_weight(model, "mm.b", long)
    src, dst = tmp_path / "long.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    for path, words in [(src, "predicted at --format fold"), (dst, f"written by onnxq {onnxq.__version__}")]:
        if path == dst:
            assert invoke("compress", src, dst, "--no-validate").exit_code == 0
        result = CliRunner().invoke(app, ["inspect", str(path)], terminal_width=80, env={"COLUMNS": "80"})
        no_traceback(result)
        assert result.exit_code == 0, result.output
        assert words in flat(result.stdout) and "bias of Conv" in flat(result.stdout)
        assert all(len(line) <= 80 for line in result.stdout.splitlines())
        cells = "".join(
            line.split("│")[1].strip() for line in result.stdout.splitlines() if line.count("│") > 2
        )
        assert long in cells and "…" not in result.stdout


def test_inspect_json_is_the_librarys_inspection(tiny_path):
    result = invoke("inspect", tiny_path, "--json", "--format", "qdq", "--bits", "4")
    assert result.exit_code == 0 and result.stderr == ""
    d = json.loads(result.stdout)
    assert d == onnxq.inspect(tiny_path, format="qdq", bits=4).to_dict()
    assert d["kind"] == "float model" and d["prediction"]["settings"]["codebook"] == "linear"


@pytest.mark.parametrize("kind", ["not-onnx", "truncated", "missing", "external-missing", "external-outside"])
def test_inspect_bad_input_is_one_error_line(kind, tmp_path, tiny):
    src, _, words = bad_inputs(kind, tmp_path, tiny)
    assert words in error_message(invoke("inspect", src))


@pytest.mark.parametrize(
    ("args", "expected"), [(["--bits", "9"], "--bits"), (["--format", "zip"], "fold, qdq")]
)
def test_inspect_bad_options_are_usage_errors(args, expected, tiny_path):
    result = invoke("inspect", tiny_path, *args)
    no_traceback(result)
    assert result.exit_code == 2 and expected in flat(result.stderr)


def test_summary_prints_long_tensor_names_whole_on_their_own_lines(tmp_path):
    """At 80 columns a table leaves a name about 10 characters, and rich folded
    'model.layers.0.mlp.down_proj.weight' over five lines; names too long for the table get a
    line each, above their numbers."""
    rng = np.random.default_rng(0)
    names = [f"model.layers.{i}.mlp.down_proj.weight" for i in range(2)]
    inits = [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), n) for n in names]
    nodes = [
        helper.make_node("MatMul", ["x", names[0]], ["h"]),
        helper.make_node("MatMul", ["h", names[1]], ["y"]),
    ]
    src = tmp_path / "long.onnx"
    onnx.save(make_model(nodes, [value("x", [1, 16])], [value("y", [1, 16])], inits), src)
    result = invoke("compress", src, tmp_path / "out.onnx", "--bits", "4")
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.stdout.splitlines()]
    for name in names:
        assert name in lines, result.stdout
        numbers = lines[lines.index(name) + 1]
        assert numbers.startswith("16x16, 16 groups, 4-bit, ") and " dB, " in numbers, numbers
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
