"""Cause 4: Ctrl-C (SIGINT to the process group), SIGTERM and SIGKILL at moments from start-up
to the end of the work. SIGINT and SIGTERM end the run within the time limit, in one line, with
exit 130 or 143 and nothing left behind; after a SIGKILL, the workers leave with their parent,
and the next run in the folder removes the temporary files the killed one left.
"""

from __future__ import annotations

import signal
from pathlib import Path

from hostile import models
from hostile.runner import Case

CAUSE = "signals"
DELAYS = [0.2, 0.6, 1.2, 2.0, 3.0, 4.5]
# About 10 s of work on two cores: eight 512x512 weights, blocks of 16, the exact search.
SLOW = ["--search", "exact", "--group-size", "16", "--samples", "2"]
MODES = {"processes": ["--jobs", "2"], "threads": ["--jobs", "1"]}


def _slow(extra: list[str], earlier_output: bool = False):
    def setup(folder: Path) -> list[str]:
        models.save(models.mlp(8, 512), folder / "m.onnx")
        if earlier_output:
            (folder / "out.onnx").write_bytes(b"an earlier output, to be kept whole")
        return ["compress", "m.onnx", "out.onnx", *SLOW, *extra]

    return setup


def cases() -> list[Case]:
    out = [
        Case(CAUSE, f"{sig.name}-{mode}-{delay}s", _slow(extra), signal=sig, delay=delay)
        for sig in (signal.SIGINT, signal.SIGTERM)
        for mode, extra in MODES.items()
        for delay in DELAYS
    ]
    out += [
        Case(
            CAUSE,
            f"{sig.name}-earlier-output-{delay}s",
            _slow(MODES["processes"], True),
            signal=sig,
            delay=delay,
        )
        for sig in (signal.SIGINT, signal.SIGTERM)
        for delay in (1.0, 3.0)
    ]
    out += [
        Case(
            CAUSE,
            f"SIGINT-report-{delay}s",
            _slow(["--report", "report.json"]),
            signal=signal.SIGINT,
            delay=delay,
        )
        for delay in (2.0, 4.0)
    ]
    # After SIGKILL nothing can clean up; the next run (a quick one, in the same folder) must.
    again = ("compress", "m.onnx", "out.onnx", "--samples", "2", "--jobs", "2")
    out += [
        Case(CAUSE, f"SIGKILL-{mode}-{delay}s", _slow(extra), signal=signal.SIGKILL, delay=delay, then=again)
        for mode, extra in MODES.items()
        for delay in (1.0, 2.5)
    ]
    return out
