"""The views: what a sample looks like to each stage. Each maps (encoded image bytes, target) -> (image, target).

  pretrain       RandomResizedCrop(image_size, scale=crop_scale, bilinear) + horizontal flip, mean = std = 0.5:
                 the official NEPA pretraining pipeline
  finetune       timm's ImageNet training transform: RandomResizedCrop (bicubic, crop_scale), flip, RandAugment
                 (auto_augment), random erasing (reprob, per-pixel noise as DeiT/MAE); Mixup/CutMix are
                 batch-level and applied by the caller (timm.data.Mixup)
  eval           timm's eval transform: resize to image_size / crop_ratio, centre crop, bicubic
  segment_train  image and mask together: random scale 0.5-2.0 (short side = crop * scale), random crop to
                 `crop` (padded first where smaller), horizontal flip; bilinear for images, nearest for masks
  segment_eval   the whole image, padded (bottom/right) to a multiple of patch_size
Masks stay in ADE20K's labels: 0 = ignore ("other"), 1..150 classes; padding is 0 so it is ignored too.

How pretrain and finetune decode (`decode`, data.decode; eval and segmentation always take the "pil" way):
  pil  torchvision/timm on PIL images, as the official code: PIL decodes, PIL resizes the crop, float32 out.
  cpu  the same random draws in the same order (torchvision's RandomResizedCrop.get_params and the flip's
       torch.rand, timm's crop params for finetune), so every sample gets the same crop box and flip as
       under pil; libjpeg-turbo decodes through simplejpeg (no PIL image, no file object), the crop is
       resized as uint8 by torch's antialiased bilinear (bicubic for finetune), the algorithm PIL's resize
       implements, so pixels differ from pil's by rounding only (pretrain: 1 level of 255, 2 for CMYK
       JPEGs, whose conversion to RGB rounds differently). pretrain returns uint8 [3,S,S]: the loader
       normalises a whole batch at once, on the training device (nepa/data/loaders.py). finetune hands
       the resized crop to timm's RandAugment and random erasing as a PIL image, as under pil.
  gpu  pretrain only: the draws as under cpu, but no decode; the JPEG bytes, box and flip go to the
       training device, which decodes and crops whole batches (nepa/data/gpu_decode.py).

Randomness comes from the global torch, `random` and numpy generators (torchvision, timm and the segmentation
views draw from them); the loader seeds them per sample (nepa/data/loaders.py).
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import numpy as np
import simplejpeg
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image, ImageOps
from timm.data import create_transform
from timm.data.auto_augment import RandAugment

MEAN = STD = (0.5, 0.5, 0.5)  # the official NEPA normalisation, pretraining and fine-tuning alike
Mean = tuple[float, float, float]
View = Callable[[bytes, Any], tuple[Any, Any]]
Decode = Literal["pil", "cpu", "gpu"]
Box = tuple[int, int, int, int]  # top, left, height, width: torchvision's crop parameters
NVJPEG_COLORSPACES = ("YCbCr", "Gray")  # what the GPU path's decoder takes; the rest is decoded on the CPU


def open_rgb(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def decode_rgb(data: bytes) -> torch.Tensor:
    """(3, H, W) uint8 RGB, a view of the decoder's HWC array (channels-last, which torch's uint8 resize
    wants): libjpeg-turbo through simplejpeg; what it does not take (PNG, CMYK JPEG, ...) through PIL."""
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ValueError:
        pixels = np.array(open_rgb(data))
    return torch.from_numpy(pixels).permute(2, 0, 1)


def header(data: bytes) -> tuple[int, int, str]:
    """(height, width, colour space) without decoding: the JPEG header, or PIL's for other formats."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        image = Image.open(io.BytesIO(data))
        return image.height, image.width, image.format or "unknown"
    return height, width, colorspace


def crop_box(height: int, width: int, scale: tuple[float, float]) -> Box:
    """torchvision's RandomResizedCrop box (same draws from torch's generator) for an image of this size,
    before it is decoded: get_params reads only the shape, so a shape-only (0, H, W) tensor stands in."""
    return tuple(T.RandomResizedCrop.get_params(torch.empty(0, height, width), list(scale), [3 / 4, 4 / 3]))


def flip_draw() -> bool:
    """RandomHorizontalFlip(0.5)'s draw."""
    return bool(torch.rand(1) < 0.5)


def resized_crop(pixels: torch.Tensor, box: Box, size: int, mode: str = "bilinear", flip: bool = False) -> torch.Tensor:
    """The box of a (3, H, W) image resized to (3, size, size), antialiased as PIL resizes; uint8 stays uint8."""
    top, left, height, width = box
    crop = pixels[None, :, top : top + height, left : left + width]
    out = torch.nn.functional.interpolate(crop, size=(size, size), mode=mode, antialias=True, align_corners=False)[0]
    return out.flip(-1) if flip else out


def normalize(images: torch.Tensor, mean: Mean = MEAN, std: Mean = STD) -> torch.Tensor:
    """[..., 3, H, W] pixels in 0..255 (uint8, or float32, which is normalised in place) -> float32 as
    ToTensor + Normalize compute it (the same operations, so the same bits), on the images' device;
    per-channel Python scalars, so nothing is copied from the host."""
    images = images.float().div_(255)
    for c in range(3):
        images[..., c, :, :].sub_(mean[c]).div_(std[c])
    return images


class EncodedCrop(NamedTuple):
    """A pretraining sample for the GPU path: what to decode and how to crop it."""

    data: bytes | torch.Tensor  # the JPEG, or its (3, H, W) uint8 pixels where the device's decoder cannot
    box: Box
    flip: bool


def pretrain(image_size: int, crop_scale: tuple[float, float] = (0.08, 1.0), mean: Mean = MEAN, std: Mean = STD,
             decode: Decode = "cpu") -> View:  # fmt: skip
    if decode == "pil":
        return _image_only(T.Compose([
            T.RandomResizedCrop(image_size, scale=crop_scale, interpolation=T.InterpolationMode.BILINEAR),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]))  # fmt: skip

    def cpu(data: bytes, target: Any) -> tuple[torch.Tensor, Any]:
        height, width, _ = header(data)
        box = crop_box(height, width, crop_scale)
        return resized_crop(decode_rgb(data), box, image_size, flip=flip_draw()), target

    def gpu(data: bytes, target: Any) -> tuple[EncodedCrop, Any]:
        height, width, colorspace = header(data)
        box = crop_box(height, width, crop_scale)
        flip = flip_draw()
        payload = data if colorspace in NVJPEG_COLORSPACES else decode_rgb(data).contiguous()
        return EncodedCrop(payload, box, flip), target

    return cpu if decode == "cpu" else gpu


def _posterize(image: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize op, where RandAugment's "inc" levels reach 0 bits (magnitude 10, e.g. m9 + mstd0.5
    noise): a black image, as Pillow < 13 made it; Pillow 13 raises there."""
    if bits_to_keep >= 8:
        return image
    return ImageOps.posterize(image, bits_to_keep) if bits_to_keep > 0 else Image.new(image.mode, image.size)


def _pillow13_safe(augment: T.Compose) -> T.Compose:
    """Point this transform's RandAugment posterize ops at _posterize (timm's own module is left alone)."""
    for transform in augment.transforms:
        for op in transform.ops if isinstance(transform, RandAugment) else ():
            if op.name.startswith("Posterize"):
                op.aug_fn = _posterize
    return augment


def finetune(image_size: int, auto_augment: str | None = "rand-m9-mstd0.5-inc1", reprob: float = 0.25,
             crop_scale: tuple[float, float] = (0.08, 1.0), mean: Mean = MEAN, std: Mean = STD,
             decode: Decode = "cpu") -> View:  # fmt: skip
    crop_and_flip, augment, final = create_transform(
        image_size, is_training=True, scale=crop_scale, auto_augment=auto_augment, re_prob=reprob, re_mode="pixel",
        re_count=1, interpolation="bicubic", mean=mean, std=std, separate=True,
    )  # fmt: skip
    augment = _pillow13_safe(augment)
    if decode == "pil":
        return _image_only(T.Compose([crop_and_flip, augment, final]))
    crop, flip = crop_and_flip.transforms  # timm's RandomResizedCropAndInterpolation, torchvision's flip

    def view(data: bytes, target: Any) -> tuple[torch.Tensor, Any]:
        pixels = decode_rgb(data)
        box = crop.get_params(pixels, crop.scale, crop.ratio)
        pixels = flip(resized_crop(pixels, box, image_size, mode="bicubic"))
        return final(augment(Image.fromarray(pixels.permute(1, 2, 0).numpy()))), target  # RandAugment is PIL's

    return view


def _image_only(transform: Callable[[Image.Image], torch.Tensor]) -> View:
    return lambda data, target: (transform(open_rgb(data)), target)


def evaluate(image_size: int, crop_ratio: float = 0.875, mean: Mean = MEAN, std: Mean = STD) -> View:
    return _image_only(create_transform(
        image_size, is_training=False, interpolation="bicubic", crop_pct=crop_ratio, mean=mean, std=std
    ))  # fmt: skip


def _pad(image: torch.Tensor, mask: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad bottom/right to height x width with 0: the mean for the normalised image (as MMSegmentation pads
    after normalising), ignore for the mask."""
    h, w = mask.shape
    return torch.nn.functional.pad(image, (0, width - w, 0, height - h)), torch.nn.functional.pad(
        mask, (0, width - w, 0, height - h)
    )


def _tensors(image: Image.Image, mask: Image.Image, mean: Mean, std: Mean) -> tuple[torch.Tensor, torch.Tensor]:
    return F.normalize(F.to_tensor(image), mean, std), torch.from_numpy(np.array(mask, np.int64))


def segment_train(crop: int, scale_range: tuple[float, float] = (0.5, 2.0), mean: Mean = MEAN,
                  std: Mean = STD) -> View:  # fmt: skip
    def view(data: bytes, mask_data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = open_rgb(data), Image.open(io.BytesIO(mask_data))
        scale = crop * random.uniform(*scale_range) / min(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image, mask = image.resize(size, Image.Resampling.BILINEAR), mask.resize(size, Image.Resampling.NEAREST)
        x, y = random.randint(0, max(0, size[0] - crop)), random.randint(0, max(0, size[1] - crop))
        box = (x, y, min(x + crop, size[0]), min(y + crop, size[1]))
        image, mask = image.crop(box), mask.crop(box)
        if random.random() < 0.5:
            image, mask = F.hflip(image), F.hflip(mask)
        return _pad(*_tensors(image, mask, mean, std), crop, crop)

    return view


def segment_eval(patch_size: int, mean: Mean = MEAN, std: Mean = STD) -> View:
    def view(data: bytes, mask_data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = open_rgb(data), Image.open(io.BytesIO(mask_data))
        up = lambda n: -(-n // patch_size) * patch_size  # noqa: E731
        return _pad(*_tensors(image, mask, mean, std), up(image.height), up(image.width))

    return view


VIEWS: dict[str, Callable[..., View]] = {
    "pretrain": pretrain,
    "finetune": finetune,
    "eval": evaluate,
    "segment_train": segment_train,
    "segment_eval": segment_eval,
}
DECODED_VIEWS = ("pretrain", "finetune")  # the views that take `decode`
SEGMENT_VIEWS = ("segment_train", "segment_eval")


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Segmentation batches: pad every image and mask to the largest in the batch (eval images differ in size)."""
    h = max(mask.shape[0] for _, mask in batch)
    w = max(mask.shape[1] for _, mask in batch)
    images, masks = zip(*(_pad(image, mask, h, w) for image, mask in batch), strict=True)
    return torch.stack(images), torch.stack(masks)
