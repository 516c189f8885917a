"""The views: what a sample looks like to each stage. Each maps (PIL image, target) -> (tensor, target).

  pretrain       RandomResizedCrop(image_size, scale=crop_scale, bilinear) + horizontal flip, mean = std = 0.5:
                 the official NEPA pretraining pipeline (torchvision transforms, as there)
  finetune       timm's ImageNet training transform: RandomResizedCrop (bicubic), flip, RandAugment
                 (auto_augment), random erasing (reprob, per-pixel noise as DeiT/MAE); Mixup/CutMix are
                 batch-level and applied by the caller (timm.data.Mixup)
  eval           timm's eval transform: resize to image_size / crop_ratio, centre crop, bicubic
  segment_train  image and mask together: random scale 0.5-2.0 (short side = crop * scale), random crop to
                 `crop` (padded first where smaller), horizontal flip; bilinear for images, nearest for masks
  segment_eval   the whole image, padded (bottom/right) to a multiple of patch_size
Masks stay in ADE20K's labels: 0 = ignore ("other"), 1..150 classes; padding is 0 so it is ignored too.

Randomness comes from the global torch, `random` and numpy generators (torchvision, timm and the segmentation
views draw from them); the loader seeds them per sample (nepa/data/loaders.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image, ImageOps
from timm.data import auto_augment, create_transform


def _posterize(image: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize op, where RandAugment's "inc" levels reach 0 bits (magnitude 10, e.g. m9 + mstd0.5
    noise): a black image, as Pillow < 13 made it; Pillow 13 raises there."""
    if bits_to_keep >= 8:
        return image
    return ImageOps.posterize(image, bits_to_keep) if bits_to_keep > 0 else Image.new(image.mode, image.size)


auto_augment.NAME_TO_OP.update(Posterize=_posterize, PosterizeIncreasing=_posterize, PosterizeOriginal=_posterize)

MEAN = STD = (0.5, 0.5, 0.5)  # the official NEPA normalisation, pretraining and fine-tuning alike
Mean = tuple[float, float, float]
View = Callable[[Image.Image, Any], tuple[torch.Tensor, Any]]


def _image_only(transform: Callable[[Image.Image], torch.Tensor]) -> View:
    return lambda image, target: (transform(image.convert("RGB")), target)


def pretrain(
    image_size: int, crop_scale: tuple[float, float] = (0.08, 1.0), mean: Mean = MEAN, std: Mean = STD
) -> View:
    return _image_only(T.Compose([
        T.RandomResizedCrop(image_size, scale=crop_scale, interpolation=T.InterpolationMode.BILINEAR),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ]))  # fmt: skip


def finetune(image_size: int, auto_augment: str | None = "rand-m9-mstd0.5-inc1", reprob: float = 0.25,
             mean: Mean = MEAN, std: Mean = STD) -> View:  # fmt: skip
    return _image_only(create_transform(
        image_size, is_training=True, auto_augment=auto_augment, re_prob=reprob, re_mode="pixel", re_count=1,
        interpolation="bicubic", mean=mean, std=std,
    ))  # fmt: skip


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
    def view(image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        image = image.convert("RGB")
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
    def view(image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        up = lambda n: -(-n // patch_size) * patch_size  # noqa: E731
        return _pad(*_tensors(image.convert("RGB"), mask, mean, std), up(image.height), up(image.width))

    return view


VIEWS: dict[str, Callable[..., View]] = {
    "pretrain": pretrain,
    "finetune": finetune,
    "eval": evaluate,
    "segment_train": segment_train,
    "segment_eval": segment_eval,
}
SEGMENT_VIEWS = ("segment_train", "segment_eval")


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Segmentation batches: pad every image and mask to the largest in the batch (eval images differ in size)."""
    h = max(mask.shape[0] for _, mask in batch)
    w = max(mask.shape[1] for _, mask in batch)
    images, masks = zip(*(_pad(image, mask, h, w) for image, mask in batch), strict=True)
    return torch.stack(images), torch.stack(masks)
