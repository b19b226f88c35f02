"""Realistic inputs for the zoo's models, rendered or synthesized here (tools/zoo.py inputs).

Each recipe returns the arrays of one npz for a split: "calib" (calibration) or "eval"
(validation), never the same images, sentences or audio. Images of text and documents are
drawn with Pillow's own font; photos are the shared ImageNet sample (../shared); speech is a
formant synthesizer (voiced syllables, noise bursts, pauses) and music a sum of decaying
harmonic notes, so that no recording is needed; file bytes come from the wheels in the cache
and from files written here. Models that read other models' outputs (the wake word chain)
run those float models in onnxruntime.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
COUNTS = {"calib": 32, "eval": 32}
SEEDS = {"calib": 0, "eval": 1}

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantization shrinks the weights of a trained network without retraining it.",
    "Please send the invoice to the accounts department by Friday.",
    "A cold front will bring rain and strong winds to the coast tonight.",
    "The museum opens at nine and closes at half past five.",
    "She plays the violin in a string quartet every Sunday.",
    "Our train was delayed by forty minutes because of a signal failure.",
    "Mix the flour, sugar and butter until the dough is smooth.",
    "The committee approved the budget for the new library.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "He forgot his umbrella on the bus again this morning.",
    "Version 2.3 fixes a memory leak in the image decoder.",
    "The hikers reached the summit just before sunset.",
    "Interest rates rose for the third month in a row.",
    "Keep the medicine out of the reach of children.",
    "The goalkeeper saved a penalty in the final minute.",
    "Our office will be closed on the public holiday.",
    "A small bakery on the corner sells fresh bread at dawn.",
    "The algorithm sorts a million numbers in under a second.",
    "Turn left at the second traffic light and park behind the school.",
    "Volcanic ash grounded flights across northern Europe.",
    "The children built a sandcastle with towers and a moat.",
    "Backups run every night at two o'clock.",
    "The novel was translated into more than forty languages.",
    "Wind turbines now supply a fifth of the country's electricity.",
    "Remember to water the tomatoes while I am away.",
    "The orchestra tuned their instruments before the concert.",
    "Scientists found ice beneath the surface of the crater.",
    "Could you recommend a good restaurant near the station?",
    "The new bridge reduced the commute by twenty minutes.",
    "Press the red button twice to reset the device.",
    "Heavy snow closed the mountain pass for three days.",
    "The startup raised twelve million dollars in its first round.",
    "Elephants can recognise themselves in a mirror.",
    "Our flight to Lisbon leaves from gate fourteen.",
    "The recipe calls for two eggs and a pinch of salt.",
    "Traffic on the highway was light this afternoon.",
    "The patient recovered quickly after the operation.",
    "A thunderstorm knocked out power to several villages.",
    "The painting sold at auction for a record price.",
    "Students must submit their essays before the deadline.",
    "The river flooded the fields after a week of rain.",
    "He repaired the old clock with parts from a flea market.",
    "Solar panels on the roof charge the car during the day.",
    "The team celebrated their victory with a parade.",
    "Always read the terms before you sign a contract.",
    "The cat slept in a patch of sunlight by the window.",
    "Engineers tested the rocket engine for ten minutes.",
    "The library lends laptops to students for a week.",
    "Fresh strawberries are in season at the market now.",
    "The documentary follows a family of wolves for a year.",
    "Update your password at least once every three months.",
    "The ferry crosses the bay every hour in summer.",
    "Her presentation explained the results in plain words.",
    "The farmers harvested the wheat before the storm.",
    "A new species of frog was found in the rainforest.",
    "The server returned an error code of 503.",
    "Grandmother knitted a scarf for each of her grandchildren.",
    "The stadium holds sixty thousand spectators.",
    "Drink plenty of water during hot weather.",
    "The court postponed the hearing until next month.",
    "A lighthouse guided the fishing boats back to the harbour.",
    "The spreadsheet totals the expenses for each quarter.",
    "Birds migrate south when the days grow shorter.",
]


@dataclass
class Context:
    cache: Path
    shared: Path
    fetch: Callable[[str], Path]


def make(recipe: str, split: str, context: Context) -> dict[str, np.ndarray]:
    """The arrays of one npz: RECIPES[recipe] for the split."""
    return RECIPES[recipe](split, context)


def _split_of(items: list, split: str) -> list:
    """Every other item for calibration, the rest for evaluation: the splits never share one."""
    return items[0::2] if split == "calib" else items[1::2]


def _runs(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Samples as one array per run (NAME/i), so that their shapes may differ."""
    return {f"{name}/{i}": a for i, s in enumerate(samples) for name, a in s.items()}


# ---------------------------------------------------------------------------
# Images drawn with Pillow


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _text_image(text: str, height: int, rng: np.random.Generator):
    """One line of dark text on a light, slightly noisy background, as a PIL image."""
    from PIL import Image, ImageDraw

    font = _font(int(height * rng.uniform(0.55, 0.75)))
    left, top, right, bottom = font.getbbox(text)
    width = right - left + int(height * 0.6)
    shade = int(rng.integers(215, 256))
    image = Image.new("RGB", (width, height), (shade, shade, shade - int(rng.integers(0, 20))))
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    ImageDraw.Draw(image).text(
        (int(height * 0.3) - left, (height - (bottom - top)) // 2 - top), text, font=font, fill=ink
    )
    return image


def _normalize_half(image) -> np.ndarray:
    """(3, H, W): (RGB / 255 - 0.5) / 0.5, as PaddleOCR's recognizer and classifier read it."""
    x = np.asarray(image, np.float32) / 255.0
    return ((x - 0.5) / 0.5).transpose(2, 0, 1)


def _normalize_imagenet(image) -> np.ndarray:
    x = np.asarray(image, np.float32) / 255.0
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def _line_to_width(image, height: int, width: int):
    """Resized to the height, keeping its aspect, and padded (or squeezed) to the width."""
    from PIL import Image

    w = min(width, max(1, round(image.width * height / image.height)))
    line = image.resize((w, height), Image.BILINEAR)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    canvas.paste(line, (0, 0))
    return canvas


def text_line(split: str, ctx: Context) -> dict[str, np.ndarray]:
    """Text lines at height 48, each at its own width (a multiple of 8 up to 320)."""
    rng = np.random.default_rng(SEEDS[split])
    samples = []
    for sentence in _split_of(SENTENCES, split)[: COUNTS[split]]:
        words = sentence.split()
        start = int(rng.integers(0, max(1, len(words) - 4)))
        image = _text_image(" ".join(words[start : start + int(rng.integers(2, 6))]), 48, rng)
        width = min(320, 8 * -(-round(image.width * 48 / image.height) // 8))
        samples.append({"x": _normalize_half(_line_to_width(image, 48, width))[None]})
    return _runs(samples)


def text_orientation(split: str, ctx: Context) -> dict[str, np.ndarray]:
    """Text lines at 48 x 192, half of them turned 180 degrees."""
    rng = np.random.default_rng(SEEDS[split] + 10)
    lines = []
    for i, sentence in enumerate(_split_of(SENTENCES, split)[: COUNTS[split]]):
        image = _line_to_width(_text_image(" ".join(sentence.split()[:3]), 48, rng), 48, 192)
        lines.append(_normalize_half(image.rotate(180) if i % 2 else image))
    return {"x": np.stack(lines)}


def _page(size: tuple[int, int], rng: np.random.Generator, sentences: list[str], table: bool = True):
    """A document page: a title, paragraphs, a figure and a ruled table."""
    from PIL import Image, ImageDraw

    width, height = size
    page = Image.new("RGB", (width, height), (250, 250, 247))
    draw = ImageDraw.Draw(page)
    y = int(height * 0.05)
    draw.text(
        (int(width * 0.08), y), sentences[0].upper()[:40], font=_font(int(height * 0.035)), fill=(20, 20, 20)
    )
    y += int(height * 0.08)
    body = _font(int(height * 0.018))
    for sentence in sentences[1:]:
        if y > height * 0.55:
            break
        for k in range(0, len(sentence), 48):
            draw.text((int(width * 0.08), y), sentence[k : k + 48], font=body, fill=(30, 30, 30))
            y += int(height * 0.025)
        y += int(height * 0.015)
    top = int(height * 0.6)
    left = int(width * 0.08)
    draw.rectangle(
        [left, top, left + int(width * 0.35), top + int(height * 0.25)],
        fill=tuple(int(v) for v in rng.integers(60, 200, 3)),
    )
    draw.ellipse(
        [left + 20, top + 20, left + int(width * 0.2), top + int(height * 0.15)], fill=(240, 200, 80)
    )
    if table:
        _table(draw, (int(width * 0.5), top, int(width * 0.92), top + int(height * 0.3)), rng, body)
    return page


def _table(draw, box, rng: np.random.Generator, font) -> None:
    """A ruled grid with short text in its cells."""
    left, top, right, bottom = box
    rows, cols = int(rng.integers(3, 7)), int(rng.integers(2, 5))
    for r in range(rows + 1):
        y = top + (bottom - top) * r // rows
        draw.line([left, y, right, y], fill=(0, 0, 0), width=2)
    for c in range(cols + 1):
        x = left + (right - left) * c // cols
        draw.line([x, top, x, bottom], fill=(0, 0, 0), width=2)
    for r in range(rows):
        for c in range(cols):
            x = left + (right - left) * c // cols + 4
            y = top + (bottom - top) * r // rows + 4
            draw.text((x, y), f"{int(rng.integers(1, 999))}", font=font, fill=(10, 10, 10))


def text_page(split: str, ctx: Context) -> dict[str, np.ndarray]:
    """Document pages at 480 x 480 (multiples of 32), for the text detector."""
    rng = np.random.default_rng(SEEDS[split] + 20)
    pool = _split_of(SENTENCES, split)
    pages = []
    for i in range(COUNTS[split] // 2):
        chosen = [pool[(i + k) % len(pool)] for k in range(6)]
        pages.append(_normalize_imagenet(_page((480, 480), rng, chosen, table=i % 2 == 0)))
    return {"x": np.stack(pages)}


def document_page(split: str, ctx: Context) -> dict[str, np.ndarray]:
    """Document pages at 608 x 800 (width x height), for the layout detector."""
    rng = np.random.default_rng(SEEDS[split] + 30)
    pool = _split_of(SENTENCES, split)
    pages = [
        _normalize_imagenet(_page((608, 800), rng, [pool[(i + k) % len(pool)] for k in range(9)]))
        for i in range(12)
    ]
    return {"image": np.stack(pages)}


def table(split: str, ctx: Context) -> dict[str, np.ndarray]:
    """Tables alone at 488 x 488, for the table structure model."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(SEEDS[split] + 40)
    images = []
    for _ in range(8):
        image = Image.new("RGB", (488, 488), (255, 255, 255))
        _table(ImageDraw.Draw(image), (16, 40, 472, 40 + int(rng.integers(160, 420))), rng, _font(14))
        images.append(_normalize_imagenet(image))
    return {"x": np.stack(images)}


def _photos(split: str, ctx: Context, count: int) -> list[Path]:
    folder = ctx.shared / "data" / "imagenet-sample"
    files = sorted(folder.glob("*.JPEG"))
    if not files:
        raise FileNotFoundError(f"no ImageNet sample images in {folder}: this recipe needs ../shared")
    return _split_of(files[::7], split)[:count]  # spread over the classes


def photo_320(split: str, ctx: Context) -> dict[str, np.ndarray]:
    """Photos letterboxed to 320 x 320, RGB / 255, NCHW."""
    from PIL import Image

    out = []
    for path in _photos(split, ctx, 24):
        image = Image.open(path).convert("RGB")
        scale = 320 / max(image.size)
        image = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR
        )
        canvas = Image.new("RGB", (320, 320), (114, 114, 114))
        canvas.paste(image, ((320 - image.width) // 2, (320 - image.height) // 2))
        out.append((np.asarray(canvas, np.float32) / 255.0).transpose(2, 0, 1))
    return {"images": np.stack(out)}


def photo_bgr_224(split: str, ctx: Context) -> dict[str, np.ndarray]:
    """Photos resized to 256 and center-cropped to 224, BGR minus the Caffe means, NHWC."""
    from PIL import Image

    out = []
    for path in _photos(split, ctx, 24):
        image = Image.open(path).convert("RGB")
        scale = 256 / min(image.size)
        image = image.resize(
            (max(224, round(image.width * scale)), max(224, round(image.height * scale))), Image.BILINEAR
        )
        left, top = (image.width - 224) // 2, (image.height - 224) // 2
        rgb = np.asarray(image.crop((left, top, left + 224, top + 224)), np.float32)
        out.append(rgb[:, :, ::-1] - np.array([104.0, 117.0, 123.0], np.float32))
    return {"input:0": np.stack(out)}


# ---------------------------------------------------------------------------
# Sound, synthesized

FORMANTS = {  # vowel: F1, F2, F3 (Hz)
    "a": (730, 1090, 2440),
    "e": (530, 1840, 2480),
    "i": (270, 2290, 3010),
    "o": (570, 840, 2410),
    "u": (300, 870, 2240),
}


def speech(seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Speech-like audio in [-1, 1]: voiced syllables (harmonics shaped by vowel formants, a
    moving pitch), noise bursts for consonants, and pauses with a little room noise."""
    out = [rng.standard_normal(int(0.1 * rate)) * 0.002]
    total = len(out[0])
    while total < seconds * rate:
        if rng.random() < 0.25:  # a pause
            part = rng.standard_normal(int(rng.uniform(0.05, 0.35) * rate)) * 0.002
        else:
            burst = rng.standard_normal(int(rng.uniform(0.02, 0.06) * rate)) * 0.05
            part = np.concatenate([burst * np.hanning(len(burst)), _syllable(rate, rng)])
        out.append(part)
        total += len(part)
    audio = np.concatenate(out)[: int(seconds * rate)]
    return (audio / max(1e-6, np.abs(audio).max()) * rng.uniform(0.3, 0.8)).astype(np.float32)


def _syllable(rate: int, rng: np.random.Generator) -> np.ndarray:
    n = int(rng.uniform(0.12, 0.3) * rate)
    t = np.arange(n) / rate
    f0 = rng.uniform(95, 220) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(2, 5) * t) - 0.1 * t / t[-1])
    phase = 2 * np.pi * np.cumsum(f0) / rate
    formants = FORMANTS["aeiou"[int(rng.integers(0, 5))]]
    wave = np.zeros(n)
    for k in range(1, int(4000 / f0.max())):
        f = k * f0
        gain = sum(1.0 / (1 + ((f - fk) / 90.0) ** 2) for fk in formants) / k**0.5
        wave += gain * np.sin(k * phase)
    return wave * np.hanning(n) ** 0.5


def music(split: str, ctx: Context) -> dict[str, np.ndarray]:
    """2 s of 22050 Hz notes (decaying harmonics, 1-3 at a time) for the pitch transcriber."""
    rng = np.random.default_rng(SEEDS[split] + 50)
    rate, n = 22050, 43844
    clips = []
    for _ in range(8):
        t = np.arange(n) / rate
        clip = np.zeros(n)
        for onset in np.arange(0, 2.0, 0.25):
            for _ in range(int(rng.integers(1, 4))):
                f0 = 440.0 * 2 ** ((int(rng.integers(45, 85)) - 69) / 12)
                tail = np.clip(t - onset, 0, None)
                envelope = (t >= onset) * np.exp(-tail * rng.uniform(2, 6))
                clip += sum(envelope * np.sin(2 * np.pi * k * f0 * tail) / k**1.5 for k in range(1, 6))
        clips.append((clip / np.abs(clip).max() * 0.5).astype(np.float32)[:, None])
    return {"serving_default_input_2:0": np.stack(clips)}


def speech_int16(split: str, ctx: Context) -> dict[str, np.ndarray]:
    """1.28 s of 16 kHz speech at int16 scale, as openWakeWord feeds its mel spectrogram."""
    rng = np.random.default_rng(SEEDS[split] + 60)
    clips = [speech(1.28, 16000, rng) * 32767 for _ in range(16)]
    return {"input": np.stack(clips).astype(np.float32)}


def _session(ctx: Context, name: str):
    import onnxruntime as ort

    return ort.InferenceSession(str(ctx.fetch(name)), providers=["CPUExecutionProvider"])


def _mel_frames(ctx: Context, audio: np.ndarray) -> np.ndarray:
    """(frames, 32) of openWakeWord's features: melspec's output / 10 + 2."""
    (mel,) = _session(ctx, "melspec").run(None, {"input": audio[None].astype(np.float32)})
    return np.squeeze(mel) / 10.0 + 2.0


def mel_windows(split: str, ctx: Context) -> dict[str, np.ndarray]:
    """Windows of 76 mel frames (hop 8) of synthesized speech, for the embedding model."""
    rng = np.random.default_rng(SEEDS[split] + 70)
    windows = []
    while len(windows) < COUNTS[split]:
        frames = _mel_frames(ctx, speech(2.0, 16000, rng) * 32767)
        windows += [frames[s : s + 76] for s in range(0, len(frames) - 76, 8)]
    return {"input_1": np.stack(windows[: COUNTS[split]])[..., None].astype(np.float32)}


def wake_features(split: str, ctx: Context) -> dict[str, np.ndarray]:
    """16 consecutive embeddings of synthesized speech, as openWakeWord feeds its wake word models."""
    rng = np.random.default_rng(SEEDS[split] + 80)
    embed = _session(ctx, "wakeword_embedding")
    out = []
    for _ in range(16):
        frames = _mel_frames(ctx, speech(2.4, 16000, rng) * 32767)
        windows = np.stack([frames[s : s + 76] for s in range(0, len(frames) - 76 + 1, 8)])[..., None]
        (emb,) = embed.run(None, {"input_1": windows.astype(np.float32)})
        out.append(emb.reshape(len(windows), 96)[-16:])
    return {"x.1": np.stack(out).astype(np.float32)}


def vad_chunks(split: str, ctx: Context) -> dict[str, np.ndarray]:
    """512-sample chunks of 16 kHz speech, each with the state the float model carried into it."""
    rng = np.random.default_rng(SEEDS[split] + 90)
    sess = _session(ctx, "silero_vad")
    samples = []
    for _ in range(4):
        audio = speech(1.0, 16000, rng)
        state = np.zeros((2, 1, 128), np.float32)
        for start in range(0, len(audio) - 512 + 1, 512):
            chunk = audio[start : start + 512][None]
            samples.append({"input": chunk, "state": state})
            _, state = sess.run(None, {"input": chunk, "state": state, "sr": np.array(16000, np.int64)})
    picked = samples[:: max(1, len(samples) // COUNTS[split])][: COUNTS[split]]
    return {**_runs(picked), "sr": np.array(16000, np.int64)}


def vad_windows(split: str, ctx: Context) -> dict[str, np.ndarray]:
    """Utterances as faster-whisper feeds Silero VAD v6: 512-sample chunks with 64 samples of context."""
    rng = np.random.default_rng(SEEDS[split] + 100)
    samples = []
    for _ in range(8):
        audio = np.concatenate([np.zeros(64, np.float32), speech(rng.uniform(0.6, 1.6), 16000, rng)])
        count = (len(audio) - 64) // 512
        windows = np.stack([audio[i * 512 : i * 512 + 576] for i in range(count)])
        zeros = np.zeros((1, 1, 128), np.float32)
        samples.append({"input": windows.astype(np.float32), "h": zeros, "c": zeros})
    return _runs(samples)


# ---------------------------------------------------------------------------
# Bytes and text


def _files(ctx: Context) -> list[bytes]:
    """Real files: the members of the wheels in the cache, and a few formats written here."""
    from PIL import Image

    blobs = []
    for wheel in sorted((ctx.cache / "wheels").glob("*/*.whl")):
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist()[:40]:
                if 8 <= info.file_size <= 1 << 22:
                    blobs.append(z.read(info))
    image = Image.new("RGB", (64, 48), (200, 30, 60))
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        blobs.append(buffer.getvalue())
    blobs.append(("<html><body>" + " ".join(SENTENCES[:5]) + "</body></html>").encode())
    blobs.append("\n".join(",".join(s.split()[:4]) for s in SENTENCES).encode())
    return blobs


def file_bytes(split: str, ctx: Context) -> dict[str, np.ndarray]:
    """Magika's features: a file's first 1024 and last 1024 bytes (whitespace stripped), padded with 256."""
    blobs = _split_of(_files(ctx), split)[:48]
    rows = []
    for blob in blobs:
        data = blob.strip()
        begin = np.full(1024, 256, np.int32)
        end = np.full(1024, 256, np.int32)
        head, tail = np.frombuffer(data[:1024], np.uint8), np.frombuffer(data[-1024:], np.uint8)
        begin[: len(head)] = head
        end[1024 - len(tail) :] = tail
        rows.append(np.concatenate([begin, end]))
    return {"bytes": np.stack(rows)}


def _wordpiece(text: str, vocab: dict[str, int]) -> list[int]:
    """BERT uncased tokenization: lower case, split on spaces and punctuation, longest-match pieces."""
    words, word = [], ""
    for ch in text.lower():
        if ch.isspace() or not ch.isalnum():
            if word:
                words.append(word)
            word = ""
            if not ch.isspace():
                words.append(ch)
        else:
            word += ch
    if word:
        words.append(word)
    ids = [vocab["[CLS]"]]
    for w in words:
        start, pieces = 0, []
        while start < len(w):
            end = len(w)
            while end > start and (("##" if start else "") + w[start:end]) not in vocab:
                end -= 1
            if end == start:
                pieces = [vocab["[UNK]"]]
                break
            pieces.append(vocab[("##" if start else "") + w[start:end]])
            start = end
        ids += pieces
    return ids + [vocab["[SEP]"]]


def sentences(split: str, ctx: Context) -> dict[str, np.ndarray]:
    """English sentences as WordPiece ids, each at its own length, with an all-ones mask."""
    vocab = {line: i for i, line in enumerate(ctx.fetch("bert_vocab").read_text().splitlines())}
    samples = []
    for sentence in _split_of(SENTENCES, split)[: COUNTS[split]]:
        ids = np.array([_wordpiece(sentence, vocab)], np.int64)
        samples.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    return _runs(samples)


# chars2vec's alphabet, in its order (its model.pkl holds the same as a pickle, which onnxq never loads).
ALPHABET = list("!\"#$%&'()*+,-./0123456789:;<=>?@_abcdefghijklmnopqrstuvwxyz")


def words(split: str, ctx: Context) -> dict[str, np.ndarray]:
    """Words as one-hot characters, each at its own length."""
    index = {c: i for i, c in enumerate(ALPHABET)}
    pool = [w.strip(".,?'").lower() for s in _split_of(SENTENCES, split) for w in s.split()]
    samples = []
    for word in list(dict.fromkeys(pool))[: COUNTS[split]]:
        x = np.zeros((1, len(word), len(ALPHABET)), np.float32)
        for t, ch in enumerate(word):
            if ch in index:
                x[0, t, index[ch]] = 1.0
        samples.append({"lstm_input": x})
    return _runs(samples)


RECIPES: dict[str, Callable[[str, Context], dict[str, np.ndarray]]] = {
    "text_line": text_line,
    "text_orientation": text_orientation,
    "text_page": text_page,
    "document_page": document_page,
    "table": table,
    "photo_320": photo_320,
    "photo_bgr_224": photo_bgr_224,
    "music": music,
    "speech_int16": speech_int16,
    "mel_windows": mel_windows,
    "wake_features": wake_features,
    "vad_chunks": vad_chunks,
    "vad_windows": vad_windows,
    "file_bytes": file_bytes,
    "sentences": sentences,
    "words": words,
}
