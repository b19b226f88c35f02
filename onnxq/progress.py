"""What the CLI shows while compress works: the stage, k of N, the elapsed time and an estimate
of the time left.

The library reports progress(done, total, "stage" or "stage: item"), total 0 when a stage's
length is unknown. On a terminal that drives a bar that rich redraws in place; elsewhere (a CI
log, a pipe) it prints plain timestamped lines, a few per stage: when the stage starts, then at
most every LOG_EVERY seconds, and when its last item is done; none while the input is read
and checked, unless that takes QUIET seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from onnxq.api import Progress as Callback

LOG_EVERY = 30.0  # seconds between two plain lines of one stage
QUIET = 5.0  # seconds without plain lines while the input is read and checked
# The stages that read and check the input: a refused input prints its error line alone.
CHECKING = ("reading the model", "finding inputs the model runs on")


def split(text: str) -> tuple[str, str]:
    """("stage", "item") of a progress text."""
    stage, _, item = text.partition(": ")
    return stage, item


@contextmanager
def shown(console: Console) -> Iterator[Callback]:
    """A progress callback that draws on the console: a bar on a terminal, else plain lines."""
    if console.is_terminal:
        with _bar(console) as callback:
            yield callback
    else:
        yield _Lines(console, time.monotonic()).update


@contextmanager
def _bar(console: Console) -> Iterator[Callback]:
    start = time.monotonic()
    with Progress(
        TextColumn("{task.fields[stage]}", markup=False),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[item]}", markup=False),  # tensor names are not markup
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=None, stage="", item="")
        current = ""

        def update(done: int, total: int, text: str) -> None:
            nonlocal current
            stage, item = split(text)
            if stage != current:  # a new stage: its own clock, so the estimate is its own
                current = stage
                bar.reset(
                    task, total=total or None, stage=f"{time.monotonic() - start:6.0f}s {stage}", item=""
                )
            bar.update(task, completed=done, total=total or None, item=item)

        yield update


class _Lines:
    """Plain lines for a log: '[  12 s] quantizing 40/159, about 30 s left'. Nothing while the
    input is checked (CHECKING) in the first QUIET seconds, so that a refused input prints only
    its error."""

    def __init__(self, console: Console, start: float):
        self.console, self.start = console, start
        self.stage, self.stage_start = "", start
        self.shown, self.last = "", -LOG_EVERY  # the stage of the last line printed, and when

    def update(self, done: int, total: int, text: str) -> None:
        stage, _ = split(text)
        now = time.monotonic()
        if stage != self.stage:
            self.stage, self.stage_start = stage, now
        finished = total > 0 and done >= total
        due = stage != self.shown or finished or now - self.last >= LOG_EVERY
        if not due or (stage in CHECKING and now - self.start < QUIET):
            return
        self.shown, self.last = stage, now
        line = f"[{now - self.start:6.0f} s] {stage}"
        if total:
            line += f" {done}/{total}"
            if 0 < done < total:
                left = (now - self.stage_start) / done * (total - done)
                line += f", about {left:.0f} s left"
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)
