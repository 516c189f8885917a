"""Realistic JPEGs for the loader benchmarks: crops of real photographs at ImageNet's sizes and qualities.

Made at run time from the colour photographs scikit-image ships in its wheel (`skimage.data`: astronaut,
chelsea, coffee, rocket, hubble_deep_field, stereo_motorcycle left and right; nothing is downloaded and no
image is committed). Each image: a random photo, a random crop of it at the target aspect ratio, shrunk
(Lanczos, never enlarged where the photo allows) to an ImageNet-like size, randomly mirrored, saved as
baseline JPEG with 4:2:0 chroma (Pillow's default, as most ImageNet files) at a random quality.

Sizes: the long side is 500 px for 70% of images (ImageNet's most common), else log-uniform in 200-800 px;
aspect 4:3 for 70%, else log-uniform in 1:2-2:1; 75% landscape. Qualities: uniform in 94-99, where these
smooth studio-grade photos reach ~95 KB per image (ImageNet train: ~110 KB at ~400 x 350 on average; its
photos carry more fine texture). What a run made (mean size, KB) is recorded in its result.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

QUALITY = (94, 99)
CLASSES = 10


def photographs() -> list[Image.Image]:
    import skimage.data  # a benchmark dependency (envs/requirements-dev.txt), imported where it is used

    left, right, _ = skimage.data.stereo_motorcycle()
    photos = [
        skimage.data.astronaut(),
        skimage.data.chelsea(),
        skimage.data.coffee(),
        skimage.data.rocket(),
        skimage.data.hubble_deep_field(),
        left,
        right,
    ]
    return [Image.fromarray(p) for p in photos]


def target_size(rng: np.random.Generator) -> tuple[int, int]:
    long = 500 if rng.random() < 0.7 else int(np.exp(rng.uniform(np.log(200), np.log(800))))
    aspect = 4 / 3 if rng.random() < 0.7 else float(np.exp(rng.uniform(np.log(1 / 2), np.log(2))))
    short = max(1, round(long / aspect))
    return (long, short) if rng.random() < 0.75 else (short, long)


def photo_jpeg(photo: Image.Image, rng: np.random.Generator) -> bytes:
    w, h = target_size(rng)
    fit = min(photo.width / w, photo.height / h)  # the largest crop of this aspect is fit * (w, h)
    shrink = rng.uniform(1 / fit, 1.0) if fit > 1 else 1.0
    cw, ch = max(1, round(w * fit * shrink)), max(1, round(h * fit * shrink))
    x, y = rng.integers(0, photo.width - cw + 1), rng.integers(0, photo.height - ch + 1)
    image = photo.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.LANCZOS)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=int(rng.integers(QUALITY[0], QUALITY[1] + 1)))
    return out.getvalue()


def write_imagenet_tree(root: Path, count: int, seed: int = 0) -> dict[str, float]:
    """root/{train,val}/<wnid>/*.JPEG: `count` train images in CLASSES classes (+ one val image per class,
    which the ImageNet layout needs); returns what was made."""
    rng = np.random.default_rng(seed)
    photos = photographs()
    sizes, pixels = [], []
    for i in range(count + CLASSES):
        split, label = ("train", i % CLASSES) if i < count else ("val", i - count)
        folder = root / split / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        data = photo_jpeg(photos[rng.integers(len(photos))], rng)
        (folder / f"n{label:08d}_{i}.JPEG").write_bytes(data)
        if split == "train":
            with Image.open(io.BytesIO(data)) as image:
                sizes.append(len(data))
                pixels.append(image.width * image.height)
    return {"images": count, "mean_kb": float(np.mean(sizes)) / 1024, "mean_megapixels": float(np.mean(pixels)) / 1e6}
