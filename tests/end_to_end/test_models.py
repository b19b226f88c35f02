"""End to end on the real models in ../shared/models: size, onnxruntime, and real images."""

from __future__ import annotations

import sys

import conftest
import numpy as np
import onnx
import pytest
from conftest import IMAGES, MODELS, TOOLS, float_tensor_names, session

import onnxq

if not MODELS.is_dir():
    pytest.skip(f"the real models are not here: {MODELS} is absent", allow_module_level=True)

MODEL_FILES = sorted(MODELS.glob("*.onnx"))
SMALLEST = MODELS / "mobilenet_v1_0.25_128.onnx"
MIN_RATIO = 5.5
IMAGE_COUNT = 20
# Top-1 agreement with the float model on IMAGE_COUNT sample images at 5 bits: the
# lowest measured so far minus a margin of 0.15 (the run prints what it measures).
# Measured: 0.85-0.90, 0.90-0.95, 0.30-0.45, 0.65-0.75, 0.65-0.70.
MIN_AGREEMENT = {
    "efficientnet_lite0.onnx": 0.70,
    "efficientnet_lite2.onnx": 0.75,
    "mobilenet_v1_0.25_128.onnx": 0.15,
    "mobilenet_v1_0.5_160.onnx": 0.50,
    "mobilenet_v2_1.0_224.onnx": 0.50,
}
MIN_LOGIT_COSINE = 0.65  # measured 0.81-0.92
DEFAULT_MIN_AGREEMENT = 0.2


def random_feed(sess) -> dict[str, np.ndarray]:
    (inp,) = sess.get_inputs()
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    return {inp.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


@pytest.fixture(scope="module", params=MODEL_FILES, ids=lambda p: p.name)
def compressed(request, tmp_path_factory):
    """(float model path, compressed path, report) at 5 bits with the defaults."""
    src = request.param
    dst = tmp_path_factory.mktemp("models") / src.name
    report = onnxq.compress(src, dst, bits=5)
    return src, dst, report


def test_file_ratio(compressed):
    src, dst, report = compressed
    ratio = src.stat().st_size / dst.stat().st_size
    assert report.ratio == pytest.approx(ratio)
    assert ratio >= MIN_RATIO, f"{src.name}: {ratio:.2f}x"
    assert report.bits_per_weight < 5.5


def test_inspect_predicts_the_output_and_reads_it_back(compressed):
    src, dst, report = compressed
    before = onnxq.inspect(src, bits=5)
    p = before.prediction
    assert [w.name for w in before.weights] == [w.name for w in report.weights]
    assert p.bits_per_weight == pytest.approx(report.bits_per_weight)
    # only the decoder nodes are not counted: a few KB, and a few hundred bytes per weight
    assert 0 < report.output.total - p.output_bytes < 8000 + 300 * len(report.weights)
    after = onnxq.inspect(dst)
    assert after.compressed and after.written_by == onnxq.__version__ and after.settings["bits"] == 5
    summary = after.stored_summary()
    assert (
        summary["index_bytes"] + summary["codebook_bytes"] == report.output.indices + report.output.codebooks
    )
    assert {s.name: s.bits for s in after.stored} == {w.name: w.bits for w in report.weights}


def test_random_validation_passes_and_the_model_runs(compressed):
    _, dst, report = compressed
    assert report.validation is not None and report.validation
    # Random normal inputs are far from images (README): only a sanity bound here.
    assert all(o.cosine > 0.3 for o in report.validation.outputs)
    sess = session(dst)
    (y,) = sess.run(None, random_feed(sess))
    assert np.all(np.isfinite(y))


def test_no_float_copy_of_a_compressed_weight(compressed):
    _, dst, report = compressed
    out = onnx.load(dst)
    names = {w.name for w in report.weights}
    assert len(names) > 20
    assert not float_tensor_names(out) & names
    # What stays in float (biases, small tensors) is a small part of the file.
    assert report.output.float_tensors < 0.05 * report.output.total
    assert report.output.indices > 0.8 * report.output.total


@pytest.fixture(scope="module")
def imagenet():
    pytest.importorskip("PIL", reason="Pillow is needed to read the sample images")
    if not IMAGES.is_dir():
        pytest.skip(f"no sample images at {IMAGES}")
    sys.path.insert(0, str(TOOLS))
    try:
        import imagenet
    finally:
        sys.path.remove(str(TOOLS))
    images = imagenet.list_images(IMAGES)
    step = max(1, len(images) // IMAGE_COUNT)
    return imagenet, [p for p, _ in images[::step][:IMAGE_COUNT]]


def test_top1_agreement_on_real_images(compressed, imagenet):
    src, dst, _ = compressed
    module, paths = imagenet
    try:
        prep = module.preset_for(src.name)
    except SystemExit:
        pytest.skip(f"no preprocessing preset for {src.name}")
    x = module.load_batch(paths, prep)
    ref, got = session(src), session(dst)
    name = ref.get_inputs()[0].name
    y = np.concatenate([ref.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
    yq = np.concatenate([got.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
    agreement = float(np.mean(y.argmax(1) == yq.argmax(1)))
    cosine = float(np.sum(y * yq) / np.sqrt(np.sum(y * y) * np.sum(yq * yq)))
    conftest.MEASUREMENTS[f"5 bits, {len(x)} images, {src.name}"] = (
        f"top-1 agreement {agreement:.2f}, logit cosine {cosine:.4f}"
    )
    assert agreement >= MIN_AGREEMENT.get(src.name, DEFAULT_MIN_AGREEMENT)
    assert cosine > MIN_LOGIT_COSINE


@pytest.mark.skipif(not SMALLEST.exists(), reason=f"{SMALLEST.name} is absent")
@pytest.mark.parametrize("bits", range(1, 9))
def test_every_bit_width_on_the_smallest_model(bits, tmp_path):
    dst = tmp_path / "out.onnx"
    report = onnxq.compress(
        SMALLEST, dst, bits=bits, validate=False, search="grid"
    )  # exact: slowest at 7-8 bits
    assert {w.bits for w in report.weights} == {bits}
    assert report.bits_per_weight == pytest.approx(bits, abs=0.35)
    sess = session(dst)
    (y,) = sess.run(None, random_feed(sess))
    assert y.shape == (1, 1001) and np.all(np.isfinite(y))
