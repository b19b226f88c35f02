"""tools/make_calibration.py and the project's split: calibration classes 0, K, 2K, ...; evaluation the rest."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from conftest import TOOLS, make_model, value
from onnx import helper, numpy_helper

pytest.importorskip("PIL", reason="Pillow is needed to write and read the test images")
sys.path.insert(0, str(TOOLS))
try:
    import imagenet
    import imagenet_eval
    import make_calibration
finally:
    sys.path.remove(str(TOOLS))


@pytest.fixture
def images(tmp_path):
    """Six small JPEGs of six classes, in a folder of their own."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"n{i:08d}_class{i}.JPEG")
    return folder


def classifier(tmp_path, input_name="pixels"):
    """(N, 3, 32, 32) -> mean over space -> 10 scores."""
    w = np.random.default_rng(1).standard_normal((3, 10)).astype(np.float32)
    model = make_model(
        [
            helper.make_node("GlobalAveragePool", [input_name], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("MatMul", ["f", "w"], ["scores"]),
        ],
        [value(input_name, ["N", 3, 32, 32])],
        [value("scores", ["N", 10])],
        [numpy_helper.from_array(w, "w")],
    )
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


def test_every_k_keeps_the_calibration_classes(images, tmp_path):
    out = tmp_path / "calib.npz"
    model = classifier(tmp_path)
    make_calibration.main(
        [
            str(out),
            "--model",
            str(model),
            "--images",
            str(images),
            "--every",
            "2",
            "--crop",
            "32",
            "--normalization",
            "inception",
        ]
    )
    with np.load(out) as npz:
        data = dict(npz)
    prep = imagenet.Preprocess(32, "inception")
    expected = imagenet.load_batch([images / f"n{i:08d}_class{i}.JPEG" for i in (0, 2, 4)], prep)
    np.testing.assert_array_equal(data["pixels"], expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "images", "model.onnx"]  # no temp file


def test_limit_and_the_default_input_name(images, tmp_path):
    out = tmp_path / "calib.npz"
    make_calibration.main(
        [str(out), "--images", str(images), "--limit", "2", "--crop", "16", "--normalization", "efficientnet"]
    )
    with np.load(out) as npz:
        assert {k: npz[k].shape for k in npz} == {"input": (2, 3, 16, 16)}


def test_a_preprocessing_choice_is_required(images, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        make_calibration.main([str(tmp_path / "c.npz"), "--images", str(images)])
    assert info.value.code == 2 and "--preset" in capsys.readouterr().err


def test_select_images_splits_the_classes():
    items = [(f"img{c}", c) for c in range(25)]
    calibration = imagenet.select_images(items, every=10)
    evaluation = imagenet.select_images(items, exclude_every=10)
    assert [c for _, c in calibration] == [0, 10, 20]
    assert len(evaluation) == 22 and not {c for _, c in evaluation} & {0, 10, 20}
    assert imagenet.select_images(items, exclude_every=10, limit=3) == [("img1", 1), ("img2", 2), ("img3", 3)]


def test_imagenet_eval_excludes_the_calibration_split(images, tmp_path):
    model = classifier(tmp_path, "input")
    flags = ["--images", str(images), "--crop", "32", "--normalization", "inception"]
    imagenet_eval.main([str(model), *flags, "--exclude-every", "3", "--json", str(tmp_path / "r.json")])
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["images"] == 4 and result["exclude_every"] == 3  # classes 1, 2, 4, 5
    imagenet_eval.main([str(model), *flags, "--json", str(tmp_path / "all.json")])
    assert json.loads((tmp_path / "all.json").read_text())["images"] == 6
