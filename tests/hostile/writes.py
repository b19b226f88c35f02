"""Cause 3: writes that fail (a full disk, names too long, folders where files go), which must
end in one error line with no temporary or partial file left.

A full disk is a file size limit (RLIMIT_FSIZE): every write past it fails with EFBIG, as
writes to a full file system fail with ENOSPC. (The corpus runs as root in CI, where
permissions do not stop writes, so read-only folders are not among the cases.)
"""

from __future__ import annotations

import os
from pathlib import Path

from hostile import models
from hostile.runner import Case

CAUSE = "write failures"
FAST = ["--samples", "2"]
BAD_NAME = os.fsdecode(b"out\xff\xfe.onnx")  # not UTF-8: Python holds it with surrogate escapes
LIMITS = [0, 100, 3000, 5000, 20000]  # bytes; the tiny output is about 5.3 KB
COMMANDS = {
    "fold": [],
    "qdq": ["--format", "qdq"],
    "matmulnbits": ["--format", "matmulnbits", "--bits", "4"],
    "report": ["--report", "report.json"],
}


def _compress(extra: list[str], dst: str = "out.onnx", model=models.mlp):
    def setup(folder: Path) -> list[str]:
        models.save(model(), folder / "m.onnx")
        (folder / "sub").mkdir()
        (folder / "afile").write_text("a file, not a folder\n")
        return ["compress", "m.onnx", dst.replace("ABS", str(folder)), *FAST, *extra]

    return setup


def _full_disk() -> list[Case]:
    out = [
        Case(CAUSE, f"full-disk-{limit}-{name}", _compress(extra), fsize=limit)
        for limit in LIMITS
        for name, extra in COMMANDS.items()
    ]
    out += [Case(CAUSE, f"full-disk-{limit}-decompress", _decompress, fsize=limit) for limit in LIMITS[:3]]
    # A report larger than the model (60 small layers at 1 bit): the disk fills between the two.
    deep = ["--format", "qdq", "--bits", "1", "--min-elements", "16", "--report", "report.json"]
    out += [
        Case(CAUSE, f"full-disk-{limit}-report-after-model", _compress(deep, model=_deep), fsize=limit)
        for limit in (20000, 24000)
    ]
    return out


def _deep():
    return models.mlp(60, 8)


def _decompress(folder: Path) -> list[str]:
    models.save(models.mlp(), folder / "m.onnx")
    return ["decompress", "m.onnx", "float.onnx", "--samples", "2"]


def _names() -> list[Case]:
    out = []
    for size in (200, 236, 237, 240, 245, 250, 254, 255, 256, 5000):
        name = "o" * (size - 5) + ".onnx"
        out.append(Case(CAUSE, f"dst-name-{size}", _compress([], name), outputs=(name,)))
    for size in (250, 256):
        report = "r" * (size - 5) + ".json"
        out.append(
            Case(CAUSE, f"report-name-{size}", _compress(["--report", report]), outputs=("out.onnx", report))
        )
    return out


def _not_files() -> list[Case]:
    refused = [
        ("dst-is-folder", [], "sub"),
        ("dst-is-dot", [], "."),
        ("dst-is-empty", [], ""),
        ("dst-is-root", [], "/"),
        ("dst-missing-folder", [], "nowhere/out.onnx"),
        ("dst-under-a-file", [], "afile/out.onnx"),
        ("report-is-folder", ["--report", "sub"], "out.onnx"),
        ("report-missing-folder", ["--report", "nowhere/r.json"], "out.onnx"),
        ("report-under-a-file", ["--report", "afile/r.json"], "out.onnx"),
        ("report-bad-suffix", ["--report", "r.txt"], "out.onnx"),
        ("report-upper-suffix", ["--report", "r.JSON"], "out.onnx"),
        ("report-empty", ["--report", ""], "out.onnx"),
    ]
    out = [Case(CAUSE, name, _compress(extra, dst), "refused") for name, extra, dst in refused]
    out += [  # a newline in a path must not break the error line in two
        Case(CAUSE, "dst-newline-missing-folder", _compress([], "no\nwhere/out.onnx"), "refused"),
        Case(CAUSE, "dst-newline-name", _compress([], "out\n.onnx"), outputs=("out\n.onnx",)),
        Case(CAUSE, "dst-trailing-slash", _compress([], "out.onnx/")),  # Python reads it as out.onnx
        Case(CAUSE, "dst-non-utf8-name", _compress([], BAD_NAME), outputs=(BAD_NAME,)),
        Case(
            CAUSE,
            "dst-non-utf8-report",
            _compress(["--report", BAD_NAME + ".json"]),
            outputs=("out.onnx", BAD_NAME + ".json"),
        ),
    ]
    out += [
        Case(CAUSE, "dst-is-fifo", _special("fifo"), "refused"),
        Case(CAUSE, "report-is-fifo", _special("fifo", report=True), "refused"),
        Case(CAUSE, "dst-dangling-link", _special("dangling")),
        Case(CAUSE, "dst-link-outside", _special("outside")),
        Case(CAUSE, "report-folder-with-json-name", _special("dirjson", report=True), "refused"),
    ]
    return out


def _special(kind: str, report: bool = False):
    """dst (or the report) is a FIFO, a dangling link, a link out of the folder, a folder."""

    def setup(folder: Path) -> list[str]:
        models.save(models.mlp(), folder / "m.onnx")
        target = folder / ("r.json" if report else "out.onnx")
        if kind == "fifo":
            os.mkfifo(target)
        elif kind == "dangling":
            os.symlink("nowhere.onnx", target)
        elif kind == "outside":
            os.symlink("../../secret.bin", target)
        else:
            target.mkdir()
        extra = ["--report", target.name] if report else []
        return ["compress", "m.onnx", "out.onnx", *FAST, *extra]

    return setup


def cases() -> list[Case]:
    return _full_disk() + _names() + _not_files()
