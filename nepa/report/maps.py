"""Where a pretrained model looks and what it predicts, on validation images.

Attention maps: the model attends with F.scaled_dot_product_attention, which returns no weights, so they are
recomputed from the last block's own modules on the input that block received (a forward pre-hook):
softmax(q k^T / sqrt(head_dim)) with q, k from the attention's own `heads()` (QK-Norm, and the RoPE angles the
block was given), under the causal mask where the block ran causally; then averaged over heads.
Similarity maps: cos(ẑ_t, z_j) between the prediction at a query token t (of z_{t+1}) and every patch's input
embedding z_j, the quantity the loss maximises at j = t+1.
Target similarity: the mean cosine between the input embeddings (the loss's targets) of every two distinct
patches of a set of images. A collapsed model (no stop-grad) maps every patch to one vector, and it nears 1;
a model whose targets still tell patches apart stays well below (blank background patches are alike in any
model, so it is not 0).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from nepa.data.loaders import make_loader
from nepa.data.transforms import MEAN, STD
from nepa.models import NepaViT
from nepa.models.nepa_vit import Attention
from nepa.report.figures import save


@torch.no_grad()
def attention_weights(attn: Attention, x: Tensor, rope: tuple[Tensor, Tensor] | None, causal: bool) -> Tensor:
    """(B, heads, T, T) attention probabilities of `attn` on its input x, as its forward computes them."""
    T = x.shape[1]
    q, k, _ = attn.heads(x, rope)  # as its forward computes them: QK-Norm, RoPE
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
    return scores.softmax(dim=-1)


@torch.no_grad()
def look(model: NepaViT, images: Tensor, causal: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(last-block attention (B, T, T) averaged over heads, predictions ẑ (B, T, D), input embeddings z)."""
    seen: list[tuple] = []
    hook = model.blocks[-1].attn.register_forward_pre_hook(lambda _, args: seen.append(args))
    try:
        pred, z = model.forward_pretrain(images, causal=causal)
    finally:
        hook.remove()
    x, rope, block_causal = seen[0]
    return attention_weights(model.blocks[-1].attn, x, rope, block_causal).mean(dim=1), pred, z


@torch.no_grad()
def target_similarity(model: NepaViT, images: Tensor) -> float:
    """Mean cosine similarity of the patch input embeddings z over all pairs of distinct patches of `images`."""
    z = F.normalize(model.embed(images)[:, 1:].flatten(0, 1).double(), dim=-1)  # (K, D) unit vectors
    k = len(z)
    return float((z.sum(0).square().sum() - k) / (k * (k - 1)))  # sum over i != j of z_i . z_j, averaged


def validation_images(split: Path, count: int, image_size: int, seed: int, verify: bool) -> Tensor:
    """The first `count` images of the deterministic eval view (resize, centre crop) of a prepared split."""
    loader = make_loader("eval", split, batch_size=count, rank=0, world=1, seed=seed, epoch=0, drop_last=False,
                         verify=verify, image_size=image_size)  # fmt: skip
    return next(iter(loader))[0]


def _box(ax: Axes, patch: int, grid_w: int, side: float, color: str) -> None:
    """Outline patch `patch` (raster order) on axes whose patches are `side` units wide."""
    row, col = divmod(patch, grid_w)
    ax.add_patch(Rectangle((col * side - 0.5, row * side - 0.5), side, side, fill=False, ec=color, lw=2))


def maps_figure(model: NepaViT, images: Tensor, causal: bool, title: str, path: Path) -> Path:
    """Per image: the image with the query patches, the attention of each query, the centre's similarity map."""
    attention, pred, z = look(model, images, causal)
    p = model.cfg.patch_size
    gh, gw = images.shape[-2] // p, images.shape[-1] // p
    queries = {"centre": (gh // 2) * gw + gw // 2, "last": gh * gw - 1}  # patch i is token i + 1 (after the CLS)
    centre = queries["centre"]
    similarity = F.cosine_similarity(pred[:, centre + 1, None].float(), z[:, 1:].float(), dim=-1)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    fig = Figure(figsize=(13, 3.3 * len(images) + 0.6))
    fig.suptitle(title)
    for axes, image, attn, sim in zip(fig.subplots(len(images), 4, squeeze=False), images, attention, similarity,
                                      strict=True):  # fmt: skip
        axes[0].imshow((image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy())
        axes[0].set_title("validation image, query patches")
        for patch, color in zip(queries.values(), ("red", "lime"), strict=True):
            _box(axes[0], patch, gw, p, color)
        for ax, (name, patch), color in zip(axes[1:3], queries.items(), ("red", "lime"), strict=True):
            weights = attn[patch + 1]
            shown = ax.imshow(weights[1:].view(gh, gw).numpy(), cmap="magma")
            _box(ax, patch, gw, 1, color)
            ax.set_title(f"last-block attention, {name} patch\n(mean of heads; CLS gets {weights[0]:.2f})")
            fig.colorbar(shown, ax=ax, fraction=0.046)
        shown = axes[3].imshow(sim.view(gh, gw).numpy(), cmap="coolwarm", vmin=-1, vmax=1)
        _box(axes[3], centre, gw, 1, "red")
        _box(axes[3], centre + 1, gw, 1, "black")
        axes[3].set_title("cos(ẑ at the centre patch, z of each patch)\nblack: its target, the next patch")
        fig.colorbar(shown, ax=axes[3], fraction=0.046)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
    return save(fig, path)
