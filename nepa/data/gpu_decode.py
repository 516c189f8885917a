"""Pretraining batches decoded on the training device: `data.decode: gpu` (and `auto` on CUDA hosts).

The DataLoader workers read each sample's JPEG bytes, read its size from the header and draw its crop box and
flip exactly as the CPU path does (nepa/data/transforms.py: same seeded draws, so the same boxes, and exact
resume is unchanged); they decode nothing. The training process then decodes the whole batch at once on the
device with nvJPEG, through `torchvision.io.decode_jpeg(list, device="cuda")`, and crops, resizes
(antialiased bilinear, in float32, not rounded to uint8 as on the CPU), flips and normalises there.

Why torchvision's nvJPEG and not NVIDIA DALI (no GPU was available to measure either): torchvision is
already pinned with torch, its batched CUDA decode needs nothing else, and it leaves the sample order and
every random draw to nepa's own loader; DALI would add a second pipeline with its own readers and its own
random generators, so keeping per-sample seeded crops and exact resume would mean feeding it boxes through
an external source. DALI's ROI decode and the A100/H100 hardware JPEG engines may decode faster; measure
that before switching. torchvision 0.29 deprecates its decoders for TorchCodec: revisit on upgrading.

What nvJPEG does not take (PNG bytes, CMYK JPEGs: rare in ImageNet) the worker decodes on the CPU and sends
as pixels; they are cropped here with the rest. On a CPU device the same code runs with the CPU decoder:
that is how the tests check it, and how a GPU-less host runs `data.decode: gpu` (no faster than `cpu`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from nepa.data.transforms import EncodedCrop, Mean, decode_rgb, normalize, resized_crop


class EncodedBatch(NamedTuple):
    """A batch of EncodedCrops as the workers send it: one tensor of all the JPEG bytes (one shared-memory
    block per batch, not one per sample), their lengths, boxes and flips; CPU-decoded pixels by position."""

    jpeg: Tensor  # uint8, the JPEGs concatenated
    lengths: list[int]  # 0 for a sample in `pixels`
    boxes: list[tuple[int, int, int, int]]
    flips: list[bool]
    pixels: dict[int, Tensor]  # position in the batch -> (3, H, W) uint8
    targets: Tensor


def collate(batch: list[tuple[EncodedCrop, Any]]) -> EncodedBatch:
    jpegs = [s.data if isinstance(s.data, bytes) else b"" for s, _ in batch]
    joined = bytearray(b"".join(jpegs))  # writable, as torch.frombuffer wants
    return EncodedBatch(
        jpeg=torch.frombuffer(joined, dtype=torch.uint8) if joined else torch.empty(0, dtype=torch.uint8),
        lengths=[len(j) for j in jpegs],
        boxes=[s.box for s, _ in batch],
        flips=[s.flip for s, _ in batch],
        pixels={k: s.data for k, (s, _) in enumerate(batch) if isinstance(s.data, Tensor)},
        targets=torch.tensor([t for _, t in batch]),
    )


def decode_jpegs(jpegs: list[Tensor], device: torch.device) -> list[Tensor]:
    """(3, H, W) uint8 images on `device`: nvJPEG in one batched call on CUDA, libjpeg-turbo elsewhere."""
    if not jpegs:  # a batch of PNGs and CMYK files only
        return []
    if device.type == "cuda":
        from torchvision.io import ImageReadMode, decode_jpeg  # CUDA hosts only: CPU torchvision has no codecs

        return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
    return [decode_rgb(j.numpy()) for j in jpegs]


def images(batch: EncodedBatch, size: int, device: torch.device, mean: Mean, std: Mean) -> Tensor:
    """float32 [B, 3, size, size] on `device`, normalised."""
    parts = torch.split(batch.jpeg, batch.lengths)
    encoded = [k for k, n in enumerate(batch.lengths) if n]
    decoded = dict(zip(encoded, decode_jpegs([parts[k] for k in encoded], device), strict=True))
    decoded |= {k: p.to(device, non_blocking=True) for k, p in batch.pixels.items()}
    out = torch.empty(len(batch.lengths), 3, size, size, device=device)
    for k, (box, flip) in enumerate(zip(batch.boxes, batch.flips, strict=True)):
        out[k] = resized_crop(decoded[k].float(), box, size, flip=flip)
    return normalize(out, mean, std)
