"""What the CLI shows while compress works: a bar on a terminal, plain timestamped lines in a log."""

from __future__ import annotations

import io as stdio
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from onnxq import progress
from onnxq.cli import app


def console(terminal: bool) -> tuple[Console, stdio.StringIO]:
    buffer = stdio.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=80), buffer


def test_a_log_gets_a_line_per_stage_start_and_end_and_few_between(monkeypatch):
    monkeypatch.setattr(progress, "QUIET", 0.0)  # the model is read at t=0
    clock = iter([0.0, 0.0, 1.0, 2.0, 40.0, 41.0, 42.0, 43.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out, buffer = console(terminal=False)
    with progress.shown(out) as update:
        update(0, 0, "reading the model")  # t=0
        update(0, 4, "quantizing")  # t=1: a new stage
        update(1, 4, "quantizing: a")  # t=2: too soon after the last line
        update(2, 4, "quantizing: b")  # t=40: LOG_EVERY passed
        update(3, 4, "quantizing: c")  # t=41: too soon
        update(4, 4, "quantizing: d")  # t=42: the stage's end
        update(0, 0, "writing the output")  # t=43
    lines = buffer.getvalue().splitlines()
    assert lines == [
        "[     0 s] reading the model",
        "[     1 s] quantizing 0/4",
        "[    40 s] quantizing 2/4, about 39 s left",
        "[    42 s] quantizing 4/4",
        "[    43 s] writing the output",
    ]


def test_a_terminal_gets_a_bar_with_the_stage_and_the_item():
    out, buffer = console(terminal=True)
    with progress.shown(out) as update:
        update(0, 3, "quantizing")
        update(1, 3, "quantizing: [bold]w[/bold]")  # names are not markup
        out.file.flush()
    text = buffer.getvalue()
    assert "quantizing" in text and "[bold]w[/bold]" in text and "1/3" in text


@pytest.mark.parametrize("text", ["stage", "stage: item: with colon"])
def test_split_keeps_the_item_whole(text):
    stage, item = progress.split(text)
    assert stage == "stage" and item == text[len("stage: ") :]


def test_a_log_is_quiet_while_the_input_is_checked_unless_that_takes_long(monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 3.0, 7.0, 8.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out, buffer = console(terminal=False)
    with progress.shown(out) as update:
        update(0, 0, "reading the model")  # t=1: quiet
        update(0, 0, "finding inputs the model runs on")  # t=2: quiet
        update(0, 9, "quantizing")  # t=3: the work starts
        update(0, 0, "finding inputs the model runs on")  # t=7: QUIET has passed
        update(0, 0, "reading the model")  # t=8
    assert buffer.getvalue().splitlines() == [
        "[     3 s] quantizing 0/9",
        "[     7 s] finding inputs the model runs on",
        "[     8 s] reading the model",
    ]


def test_the_cli_logs_its_stages_when_stderr_is_not_a_terminal(tiny_path, tmp_path):
    result = CliRunner().invoke(app, ["compress", str(tiny_path), str(tmp_path / "out.onnx"), "--jobs", "1"])
    assert result.exit_code == 0, result.output
    stages = re.findall(r"^\[ *\d+ s\] ([a-z ]+?)(?: \d+/\d+.*)?$", result.stderr, re.MULTILINE)
    assert list(dict.fromkeys(stages)) == [
        "quantizing",
        "rewriting the graph",
        "writing the output",
        "validating",
    ]
    assert all(len(line) <= 100 for line in result.stderr.splitlines())
