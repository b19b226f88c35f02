"""The hostile-input corpus of issue 18: every case, by cause, and the default suite's sample."""

from __future__ import annotations

from hostile import external, folder_code, malformed, options, paths, signals, unloadable, writes
from hostile.runner import Case

CAUSES = [
    folder_code.CAUSE,
    paths.CAUSE,
    writes.CAUSE,
    signals.CAUSE,
    malformed.CAUSE,
    options.CAUSE,
    unloadable.CAUSE,
]

# A fixed sample for the default suite, a few per cause (the heavy tests run every case).
SAMPLE = [
    "folder code/pickle-processes",
    "folder code/multiprocessing-processes",
    "inputs destroyed/report-is-src",
    "inputs destroyed/dst-is--inputs",
    "inputs destroyed/rerun-bad-inputs",
    "write failures/full-disk-3000-fold",
    "write failures/dst-name-255",
    "signals/SIGTERM-processes-2.0s",
    "malformed models/truncated-5of12",
    "malformed models/tensor-bfloat16-weight",
    "malformed models/external-symlink-outside-kept-float",
    "malformed models/name-rich-close",
    "options and npz/option-target-nan",
    "options and npz/inputs-bomb-5-GiB",
    "onnxruntime refuses/custom-domain-op-no-validate",
]


def all_cases() -> list[Case]:
    cases = (
        folder_code.cases()
        + paths.cases()
        + writes.cases()
        + signals.cases()
        + malformed.cases()
        + external.cases()
        + options.cases()
        + unloadable.cases()
    )
    ids = [c.id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"cases with the same id: {duplicates}")
    return cases


def sample() -> list[Case]:
    chosen = {c.id: c for c in all_cases() if c.id in SAMPLE}
    missing = sorted(set(SAMPLE) - set(chosen))
    if missing:
        raise ValueError(f"the sample names cases that do not exist: {missing}")
    return [chosen[i] for i in SAMPLE]
