"""Cause 5, external data: references that point outside the model's folder, at things that
are not files, or past the end of their file. Each is one error line, and nothing outside the
folder is ever read (the secret file beside the case folders must not reach an output).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from hostile import models
from hostile.runner import Case

CAUSE = "malformed models"
FAST = ["--samples", "2"]


def _ref(
    name: str,
    prepare: Callable[[Path], None] | None = None,
    expect: str = "refused",
    extra: tuple[str, ...] = (),
    **entries,
) -> Case:
    def setup(folder: Path) -> list[str]:
        if prepare is not None:
            prepare(folder)
        resolved = {
            k: v.replace("ABS", str(folder)).replace("FOLDER", folder.name) for k, v in entries.items()
        }
        return ["compress", models.external_model(folder, **resolved), "out.onnx", *FAST, *extra]

    return Case(CAUSE, f"external-{name}", setup, expect)


def _symlink(name: str, target: str) -> Callable[[Path], None]:
    return lambda folder: os.symlink(target, folder / name)


def _mkdir(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).mkdir()


def _fifo(name: str) -> Callable[[Path], None]:
    return lambda folder: os.mkfifo(folder / name)


def _hardlink_secret(folder: Path) -> None:
    os.link(folder.parents[1] / "secret.bin", folder / "hard.data")


def cases() -> list[Case]:
    secret = "../../secret.bin"
    out = [
        _ref("parent", location=secret),
        _ref("parent-via-own-folder", location="../" + "FOLDER/m.data", expect="any"),
        _ref("absolute-outside", location="ABS/../../secret.bin"),
        _ref("absolute-inside", location="ABS/m.data", expect="any"),
        _ref("etc-passwd", location="/etc/passwd"),
        _ref("nul-byte", location="m.data\x00.txt"),
        _ref("over-long-name", location="d" * 300),
        _ref("over-long-path", location="/".join(["d" * 200] * 30)),
        _ref("empty-location", location=""),
        _ref("dot", location="."),
        _ref("dotdot", location=".."),
        _ref("the-model-itself", location="m.onnx"),
        _ref("url", location="file:///etc/passwd"),
        _ref("backslashes", location="..\\..\\secret.bin"),
        _ref("symlink-outside", _symlink("link.data", secret), location="link.data"),
        _ref("symlink-absolute", _symlink("link.data", "/etc/hostname"), location="link.data"),
        _ref("symlink-dev-zero", _symlink("zero.data", "/dev/zero"), location="zero.data"),
        _ref("symlink-loop", _symlink("loop.data", "loop.data"), location="loop.data"),
        _ref("symlink-dir-outside", _symlink("up", "../.."), location="up/secret.bin"),
        _ref("folder", _mkdir("dir.data"), location="dir.data"),
        _ref("fifo", _fifo("pipe.data"), location="pipe.data"),
        _ref("missing", location="gone.data"),
        _ref("offset-beyond", offset=str(10**6)),
        _ref("offset-negative", offset="-8"),
        _ref("offset-not-a-number", offset="eight"),
        _ref("offset-huge", offset=str(2**63)),
        _ref("length-beyond", length=str(10**7)),
        _ref("length-short", length="8"),
        _ref("length-zero", length="0"),
        _ref("length-negative", length="-4096"),
        _ref("length-not-a-number", length="4k"),
        _ref("unknown-key", expect="any", color="blue"),
        _ref("checksum", expect="any", checksum="0" * 40),
        _ref("hardlink-to-outside-file", _hardlink_secret, expect="any", location="hard.data"),
    ]
    # Weights left in float are copied as they are: the secret's bytes would reach the output.
    out += [
        _ref("parent-kept-float", location=secret, extra=("--min-elements", "99999")),
        _ref(
            "symlink-outside-kept-float",
            _symlink("link.data", secret),
            location="link.data",
            extra=("--min-elements", "99999"),
        ),
        _ref(
            "symlink-dir-kept-float",
            _symlink("up", "../.."),
            location="up/secret.bin",
            extra=("--min-elements", "99999"),
        ),
    ]
    out += [_truncated_data(), _validate_external()]
    return out


def _truncated_data() -> Case:
    def setup(folder: Path) -> list[str]:
        src = models.external_model(folder)
        data = folder / "m.data"
        data.write_bytes(data.read_bytes()[:1000])
        return ["compress", src, "out.onnx", *FAST]

    return Case(CAUSE, "external-data-file-truncated", setup, "refused")


def _validate_external() -> Case:
    def setup(folder: Path) -> list[str]:
        src = models.external_model(folder, location="../../secret.bin")
        models.save(models.mlp(), folder / "good.onnx")
        return ["validate", "good.onnx", src, "--samples", "2"]

    return Case(CAUSE, "external-validate-outside", setup, "refused")
