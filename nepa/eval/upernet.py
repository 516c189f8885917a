"""UperNet on a plain ViT, in plain PyTorch (no mmcv/mmseg): the BEiT/MAE ADE20K segmenter.

    x (B, 3, H, W) --pad right/bottom to a multiple of the patch--> bidirectional backbone
      block taps t0..t3 (timm's forward_intermediates), each (B, D, H/p, W/p)
      --pyramid--> 4x, 2x, 1x, 1/2x the token grid (two 2x deconvs / one deconv / identity / 2x2 max-pool)
      --UPerHead--> PPM on the coarsest, FPN laterals + top-down sums, 3x3 convs, all upsampled and fused,
                    dropout, 1x1 classifier
      --bilinear, crop the padding--> logits (B, num_classes, H, W)
An FCN auxiliary head on the third level gives a second loss in training, as the mmseg configs (weight 0.4).
Conv -> BatchNorm -> ReLU everywhere, as mmseg's ConvModule; segment.py makes BN synchronous across GPUs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nepa.models import NepaViT


def conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def resize(x: Tensor, size: tuple[int, ...] | torch.Size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FeaturePyramid(nn.Module):
    """Four same-stride ViT maps -> 4x, 2x, 1x, 1/2x resolution (BEiT's fpn1..fpn4)."""

    def __init__(self, dim: int):
        super().__init__()
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, 2, stride=2),
            nn.BatchNorm2d(dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, dim, 2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.down2 = nn.MaxPool2d(2)

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        return [self.up4(maps[0]), self.up2(maps[1]), maps[2], self.down2(maps[3])]


class PyramidPooling(nn.Module):
    """PSPNet's module: context average-pooled to 1, 2, 3, 6 bins, concatenated with the input, fused by a 3x3."""

    def __init__(self, cin: int, channels: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), conv_bn_relu(cin, channels, 1)) for b in bins
        )
        self.fuse = conv_bn_relu(cin + len(bins) * channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(torch.cat([x, *(resize(stage(x), x.shape[-2:]) for stage in self.stages)], dim=1))


class UperHead(nn.Module):
    """UPerHead (Xiao et al. 2018, mmseg's layout) over four maps of `dim` channels, finest first."""

    def __init__(self, dim: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.ppm = PyramidPooling(dim, channels)
        self.laterals = nn.ModuleList(conv_bn_relu(dim, channels, 1) for _ in range(3))
        self.smooth = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in range(3))
        self.fuse = conv_bn_relu(4 * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, maps: list[Tensor]) -> Tensor:
        levels = [lateral(m) for lateral, m in zip(self.laterals, maps, strict=False)] + [self.ppm(maps[3])]
        for i in range(3, 0, -1):  # top-down: each level gets the coarser one, upsampled
            levels[i - 1] = levels[i - 1] + resize(levels[i], levels[i - 1].shape[-2:])
        outs = [smooth(level) for smooth, level in zip(self.smooth, levels, strict=False)] + [levels[3]]
        fused = self.fuse(torch.cat([outs[0], *(resize(o, outs[0].shape[-2:]) for o in outs[1:])], dim=1))
        return self.classifier(self.dropout(fused))


class AuxHead(nn.Module):
    """mmseg's FCNHead with one conv: a deep-supervision classifier on one pyramid level, training only."""

    def __init__(self, dim: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            conv_bn_relu(dim, channels, 3), nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class UperNet(nn.Module):
    """Backbone + pyramid + UPerHead (+ auxiliary head). forward -> logits, or (logits, aux logits) in training."""

    def __init__(self, backbone: NepaViT, taps: tuple[int, ...], channels: int, num_classes: int, aux: bool = True):
        super().__init__()
        if len(taps) != 4:
            raise ValueError(f"UperNet taps four blocks, got {taps}")
        self.backbone, self.taps = backbone, list(taps)
        # Dense features come from the tapped blocks: what follows the last tap (blocks, final norm, any head) would
        # get no gradient, so it goes (timm's prune_intermediate_layers).
        backbone.prune_intermediate_layers(self.taps, prune_norm=True)
        dim = backbone.embed_dim
        self.pyramid = FeaturePyramid(dim)
        self.head = UperHead(dim, channels, num_classes)
        self.aux_head = AuxHead(dim, channels // 2, num_classes) if aux else None

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The backbone's layers (layer-wise lr decay); the pyramid and heads sit above its last block."""
        return self.backbone.group_matcher(coarse, prefix="backbone.")

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        h, w = x.shape[-2:]
        p = self.backbone.cfg.patch_size
        padded = F.pad(x, (0, -w % p, 0, -h % p))  # zeros = the normalised mean; 512 -> 518 at patch 14
        maps = self.pyramid(self.backbone.forward_intermediates(padded, self.taps, intermediates_only=True))
        logits = resize(self.head(maps), padded.shape[-2:])[..., :h, :w]
        if self.aux_head is None or not self.training:
            return logits
        return logits, resize(self.aux_head(maps[2]), padded.shape[-2:])[..., :h, :w]
