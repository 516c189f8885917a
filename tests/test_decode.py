"""The decode paths of the pretrain and finetune views (nepa/data/transforms.py, gpu_decode.py, loaders.py):
the same crop boxes and flips as the official PIL pipeline, pixels within rounding of it, on realistic JPEGs
(crops of real photographs, benchmarks/loader_photos.py). The GPU path's code runs here on CPU tensors, with
the CPU decoder standing in for nvJPEG (torchvision's CUDA decoder cannot run without a GPU)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from timm.data import auto_augment, create_transform

from nepa.cli import main as nepa_main
from nepa.data import gpu_decode, transforms
from nepa.data.loaders import make_loader, resolve_decode, seeded

pytest.importorskip("skimage", reason="scikit-image (envs/requirements-dev.txt) makes the test photographs")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from loader_photos import photo_jpeg, photographs, write_imagenet_tree

LEVEL = 1 / 127.5  # one uint8 level after normalising with mean = std = 0.5


def encode(image: Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    rng = np.random.default_rng(0)
    photos = photographs()
    return [photo_jpeg(photos[i % len(photos)], rng) for i in range(24)]


@pytest.fixture(scope="module")
def odd_files(jpegs: list[bytes]) -> dict[str, bytes]:
    """What ImageNet also holds besides colour JPEGs: greyscale and CMYK JPEGs, a PNG."""
    image = Image.open(io.BytesIO(jpegs[0]))
    return {"grey": encode(image.convert("L")), "cmyk": encode(image.convert("CMYK")), "png": encode(image, "PNG")}


def test_decode_gives_pils_pixels_for_every_kind_of_file(jpegs: list[bytes], odd_files: dict[str, bytes]) -> None:
    for data in [*jpegs[:6], *odd_files.values()]:
        expected = np.asarray(transforms.open_rgb(data)).astype(int)
        pixels = transforms.decode_rgb(data)
        assert pixels.shape == (3, *expected.shape[:2]) and pixels.dtype == torch.uint8
        # the same libjpeg-turbo settings: the same pixels, but for CMYK, whose conversion to RGB rounds differently
        tolerance = 1 if data is odd_files["cmyk"] else 0
        assert np.abs(pixels.permute(1, 2, 0).numpy() - expected).max() <= tolerance
        assert transforms.header(data)[:2] == expected.shape[:2]
    assert transforms.header(odd_files["cmyk"])[2] not in transforms.NVJPEG_COLORSPACES


def views(view: str, data: bytes, index: int, **kw: object) -> dict[str, object]:
    """Each decode's output for one sample, seeded as the loader seeds it."""
    out = {}
    for decode in ("pil", "cpu", "gpu") if view == "pretrain" else ("pil", "cpu"):
        with seeded(7, 1, index):
            out[decode] = transforms.VIEWS[view](224, decode=decode, **kw)(data, 0)[0]
    return out


def test_pretrain_cpu_and_gpu_crop_the_official_boxes(jpegs: list[bytes], odd_files: dict[str, bytes]) -> None:
    samples = [*jpegs, *odd_files.values()]
    outputs = [views("pretrain", data, i, crop_scale=(0.08, 1.0)) for i, data in enumerate(samples)]
    cpu = torch.stack([transforms.normalize(o["cpu"]) for o in outputs])
    pil = torch.stack([o["pil"] for o in outputs])
    assert cpu.dtype == pil.dtype == torch.float32
    # the same box and flip: only resampling rounding differs (another box would differ by tens of levels);
    # the CMYK file (second to last) also converts to RGB a level apart (see above)
    worst = (cpu - pil).abs().amax(dim=(1, 2, 3)) / LEVEL
    assert worst[:-2].max() <= 1 + 1e-4 and worst[-2] <= 2 + 1e-4 and worst[-1] <= 1 + 1e-4
    assert (cpu - pil).abs().mean() < 0.5 * LEVEL
    encoded = [o["gpu"] for o in outputs]
    assert [isinstance(e.data, bytes) for e in encoded] == [True] * len(jpegs) + [True, False, False]  # grey, cmyk, png
    for (box, flip), data in zip(((e.box, e.flip) for e in encoded), samples, strict=True):
        height, width, _ = transforms.header(data)
        assert box[0] >= 0 and box[0] + box[2] <= height and box[1] >= 0 and box[1] + box[3] <= width
        assert isinstance(flip, bool)
    assert 0 < sum(e.flip for e in encoded) < len(encoded)
    batch = gpu_decode.collate([(e, k) for k, e in enumerate(encoded)])
    assert batch.targets.tolist() == list(range(len(encoded))) and set(batch.pixels) == {25, 26}
    gpu = gpu_decode.images(batch, 224, torch.device("cpu"), transforms.MEAN, transforms.STD)
    assert gpu.shape == cpu.shape and gpu.dtype == torch.float32
    # a float resize (on the device) against torch's fixed-point uint8 one: rounding apart
    assert (gpu - cpu).abs().max() <= LEVEL + 1e-6 and (gpu - cpu).abs().mean() < 0.5 * LEVEL


def test_normalize_is_to_tensor_and_normalize_bit_for_bit(jpegs: list[bytes]) -> None:
    pixels = transforms.resized_crop(transforms.decode_rgb(jpegs[0]), (10, 20, 200, 150), 224)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    reference = T.Normalize(mean, std)(T.ToTensor()(Image.fromarray(pixels.permute(1, 2, 0).numpy())))
    assert torch.equal(transforms.normalize(pixels, mean, std), reference)
    assert torch.equal(transforms.normalize(pixels[None].float(), mean, std)[0], reference)


def test_finetune_cpu_follows_the_official_draws(jpegs: list[bytes]) -> None:
    """Crop, flip, RandAugment and random erasing draw as under pil; RandAugment then acts on pixels a level
    apart, so outputs match except where an op amplifies that (solarize, posterize thresholds)."""
    close = []
    for i, data in enumerate(jpegs[:12]):
        out = views("finetune", data, i, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25)
        assert out["cpu"].shape == out["pil"].shape == (3, 224, 224)
        close.append(((out["cpu"] - out["pil"]).abs() <= 2 * LEVEL + 1e-6).float().mean().item())
    assert np.median(close) > 0.99


def test_the_posterize_fix_stays_in_nepas_transform() -> None:
    timm_ops = dict(auto_augment.NAME_TO_OP)
    view = transforms.finetune(32, auto_augment="rand-m9-mstd0.5-inc1")
    assert callable(view) and timm_ops == auto_augment.NAME_TO_OP  # timm's table is not patched
    _, augment, _ = create_transform(32, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", separate=True)
    [rand] = transforms._pillow13_safe(augment).transforms
    posterize = next(op for op in rand.ops if op.name == "PosterizeIncreasing")
    image = Image.new("RGB", (8, 8), (200, 100, 50))
    assert posterize.aug_fn(image, 0).getextrema() == ((0, 0),) * 3
    assert posterize.aug_fn(image, 4).getpixel((0, 0)) == (192, 96, 48)


def test_decode_resolution() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_decode("auto", "pretrain", cuda) == "gpu" and resolve_decode("auto", "pretrain", cpu) == "cpu"
    assert resolve_decode("auto", "pretrain", None) == "cpu"
    assert resolve_decode("gpu", "finetune", cuda) == "cpu"  # RandAugment is PIL's: finetune decodes on the CPU
    assert resolve_decode("pil", "finetune", cuda) == "pil"
    with pytest.raises(ValueError, match="not one of"):
        resolve_decode("nvjpeg", "pretrain", cpu)


@pytest.fixture(scope="module")
def photo_split(tmp_path_factory: pytest.TempPathFactory, odd_files: dict[str, bytes]) -> Path:
    """A prepared ImageNet split of 40 photo JPEGs plus a greyscale JPEG, a CMYK JPEG and a PNG."""
    root = tmp_path_factory.mktemp("photos")
    write_imagenet_tree(root / "raw", 40)
    for name, data in odd_files.items():
        (root / "raw/train/n00000000" / f"odd_{name}.{'png' if name == 'png' else 'JPEG'}").write_bytes(data)
    (root / "params.yaml").write_text("seed: 0\n")
    sets = ["--params", str(root / "params.yaml"), "--set", f"data.root={root}", "--set", "data.workers=1"]
    assert nepa_main(["prepare", "imagenet", "--src", str(root / "raw"), *sets]) == 0
    return root / "shards/imagenet/train"


def epoch(split: Path, decode: str, **kw: object) -> list[tuple[torch.Tensor, torch.Tensor]]:
    kw = {"batch_size": 8, "rank": 0, "world": 1, "seed": 3, "epoch": 1, "image_size": 64, **kw}
    return list(make_loader("pretrain", split, decode=decode, device=torch.device("cpu"), **kw))


def test_gpu_batches_match_cpu_batches_with_workers_and_after_resume(photo_split: Path) -> None:
    cpu = epoch(photo_split, "cpu")
    assert len(cpu) == 43 // 8 and cpu[0][0].dtype == torch.float32 and cpu[0][0].shape == (8, 3, 64, 64)
    gpu = epoch(photo_split, "gpu", num_workers=2)
    pil = epoch(photo_split, "pil")
    for (x_cpu, y_cpu), (x_gpu, y_gpu), (x_pil, y_pil) in zip(cpu, gpu, pil, strict=True):
        assert torch.equal(y_cpu, y_gpu) and torch.equal(y_cpu, y_pil)
        assert (x_gpu - x_cpu).abs().max() <= LEVEL + 1e-6 and (x_pil - x_cpu).abs().max() <= 2 * LEVEL + 1e-6
    resumed = epoch(photo_split, "gpu", start_batch=3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(gpu[3:], resumed, strict=True))
    two = [epoch(photo_split, "cpu", world=2, rank=r, batch_size=4)[0][0] for r in (0, 1)]
    assert torch.equal(cpu[0][0][0::2], two[0]) and torch.equal(cpu[0][0][1::2], two[1])  # any world size
