"""Run issue 18's hostile-input corpus (tests/hostile) and print cause x passed/failed.

    PYTHONPATH=. python tools/run_hostile.py [--jobs 2] [--only SUBSTRING] [--keep DIR]

Each case runs `onnxq` in its own folder under a temporary root (or DIR, kept for reading);
failing cases are listed with the rules they broke and the end of their stderr. Exit 1 when
any case fails.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hostile import corpus, runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once")
    parser.add_argument("--only", default="", help="run the cases whose id contains this")
    parser.add_argument("--sample", action="store_true", help="run the default suite's sample only")
    parser.add_argument("--keep", type=Path, help="run under this folder and keep it")
    args = parser.parse_args(argv)
    cases = corpus.sample() if args.sample else corpus.all_cases()
    cases = [c for c in cases if args.only in c.id]
    root = args.keep or Path(tempfile.mkdtemp(prefix="onnxq-hostile-"))
    start = time.monotonic()
    try:
        outcomes = runner.run_all(cases, root, args.jobs, _show)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    slowest = max(outcomes, key=lambda o: o.seconds, default=None)
    biggest = max(outcomes, key=lambda o: o.peak_bytes, default=None)
    print(runner.table(outcomes, corpus.CAUSES))
    if slowest and biggest:
        print(
            f"{len(outcomes)} cases in {time.monotonic() - start:.0f} s with {args.jobs} at once; "
            f"slowest {slowest.case.id} {slowest.seconds:.1f} s; "
            f"largest peak {biggest.case.id} {biggest.peak_bytes / 2**20:.0f} MiB"
        )
    return 0 if all(outcomes) else 1


def _show(outcome: runner.Outcome) -> None:
    if not outcome:
        print(f"FAILED {outcome}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
