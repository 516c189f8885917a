"""The NEPA vision transformer, top to bottom.

A plain ViT over raster-ordered patches with a CLS token used as begin-of-sequence:

    z      = [cls; PatchEmbed(x)]                      input embeddings, (B, 1+N, D)
    h      = Blocks(z)  with 2D RoPE, QK-Norm, LayerScale, SwiGLU/GeLU, causal or not
    z_hat  = LayerNorm(h)                              predictions
    loss   = -mean cos(z_hat[:, t], stopgrad(z[:, t+1]))   (nepa/objectives.py)

The math follows the official implementation (SihanXU/nepa, the `transformers` ViTNepa port) so that
released checkpoints load and reproduce its outputs (tests/test_official_parity.py); the knobs where
the paper and the code disagree are fields of `NepaConfig`.

The timm model conventions are at the bottom of `NepaViT` (features, groups, heads, gradient checkpointing).

From timm: the MLPs, LayerScale, DropPath, the activations, checkpointing. Kept here though timm's match the
official outputs too (tests/test_model.py): the RoPE table (timm's RotaryEmbeddingDinoV3 draws its training-time
augmentation on the CPU and copies the grid to the device each forward: a host sync per step on a GPU) and the
attention (timm's AttentionRope rotates by splitting off the CLS and concatenating copies: ~3x the time of
`apply_rope`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import (
    DropPath,
    LayerScale,
    Mlp,
    SwiGLU,
    calculate_drop_path_rates,
    get_act_layer,
    get_device_dtype,
)
from timm.models import checkpoint
from timm.models._features import feature_take_indices
from torch import Tensor, nn


@dataclass
class NepaConfig:
    img_size: int = 224
    patch_size: int = 14
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_hidden_dim: int = 3072
    mlp_gated: bool = False  # True: fc2(act(fc1_g(x)) * fc1_x(x)) (SwiGLU with act="silu"); False: fc2(act(fc1(x)))
    mlp_act: Literal["gelu", "gelu_tanh", "silu", "relu"] = "gelu"
    qkv_bias: bool = True
    qk_norm: bool = True
    qk_norm_affine: bool = False
    qk_norm_bias: bool = False
    layerscale_init: float | None = 1e-5  # None: no LayerScale (Table 1b "plain ViT")
    rope: bool = True
    rope_theta: float = 100.0
    # Training-time RoPE coordinate augmentation (official code; not in the paper). None = off.
    rope_shift: float | None = None
    rope_jitter: float | None = None
    rope_rescale: float | None = 2.0
    norm_eps: float = 1e-12
    causal: bool = True
    mask_token: bool = False  # a learned token for input-embedding masking (Table 1c)
    drop_path: float = 0.0
    proj_drop: float = 0.0
    attn_drop: float = 0.0
    num_classes: int = 0
    # mean: mean(patches) -> LayerNorm -> Linear; last: the last token -> Linear; "": no pooling (every token).
    # timm's `global_pool` names them "avg", "last", "" (GLOBAL_POOLS).
    pooling: Literal["mean", "last", ""] = "mean"

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.rope and self.head_dim % 4:
            raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {self.head_dim}")
        if self.pooling not in GLOBAL_POOLS.values():
            raise ValueError(f"pooling {self.pooling!r} is not one of {sorted(GLOBAL_POOLS.values())}")


GLOBAL_POOLS = {"avg": "mean", "last": "last", "": ""}  # timm's global_pool -> NepaConfig.pooling


# ----------------------------------------------------------------------------------------------
# 2D axial RoPE (DINOv3 style): patch-centre coordinates in [-1, 1], head_dim/4 frequencies per
# axis, (y, x) angles concatenated, applied rotate-half style to patch tokens only (not the CLS).


def patch_center_coords(grid_h: int, grid_w: int, device: torch.device | None = None) -> Tensor:
    """(grid_h * grid_w, 2) patch-centre (y, x) coordinates in [-1, 1], raster order."""
    ys = (torch.arange(grid_h, dtype=torch.float32, device=device) + 0.5) / grid_h
    xs = (torch.arange(grid_w, dtype=torch.float32, device=device) + 0.5) / grid_w
    return 2.0 * torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1) - 1.0


def augment_coords(coords: Tensor, shift: float | None, jitter: float | None, rescale: float | None) -> Tensor:
    """Random coordinate augmentation, one draw per forward pass on the coordinates' device, as the official code."""
    if shift is not None:
        coords = coords + torch.empty(1, 2, device=coords.device).uniform_(-shift, shift)
    if jitter is not None:
        coords = coords * torch.empty(1, 2, device=coords.device).uniform_(-math.log(jitter), math.log(jitter)).exp()
    if rescale is not None:
        coords = coords * torch.empty(1, device=coords.device).uniform_(-math.log(rescale), math.log(rescale)).exp()
    return coords


def rope_cos_sin(coords: Tensor, periods: Tensor, dtype: torch.dtype, num_prefix: int = 0) -> tuple[Tensor, Tensor]:
    """The rotation of num_prefix + N tokens, N at (y, x) coordinates: (cos, sin), (num_prefix + N, head_dim) each.

    rotate_half's sign is folded into sin ([-sin, sin]) so that `apply_rope` needs one swap of halves; the
    prefix tokens get the identity (cos 1, sin 0), so q and k rotate whole, without splitting off the CLS.
    """
    angles = 2 * math.pi * coords[:, :, None] / periods  # (N, 2, head_dim/4)
    angles = F.pad(angles.flatten(1), (0, 0, num_prefix, 0))  # (num_prefix + N, head_dim/2), 0 for the prefix
    cos, sin = angles.cos(), angles.sin()
    return cos.tile(2).to(dtype), torch.cat((-sin, sin), dim=-1).to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x * cos + rotate_half(x) * sin, the sign in sin: [x2, x1] * [-sin, sin]; cos, sin broadcast against x."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


class Rope2D(nn.Module):
    periods: Tensor

    def __init__(self, cfg: NepaConfig):
        super().__init__()
        self.cfg = cfg
        quarter = cfg.head_dim // 4
        periods = cfg.rope_theta ** (2 * torch.arange(quarter, dtype=torch.float32) / (2 * quarter))
        self.register_buffer("periods", periods, persistent=False)

    def forward(self, grid_h: int, grid_w: int, num_prefix: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        coords, cfg = patch_center_coords(grid_h, grid_w, self.periods.device), self.cfg
        if self.training:
            coords = augment_coords(coords, cfg.rope_shift, cfg.rope_jitter, cfg.rope_rescale)
        cos, sin = rope_cos_sin(coords, self.periods, dtype, num_prefix)
        return cos[:, None], sin[:, None]  # (T, 1, head_dim): for q and k as (B, T, heads, head_dim)


class Attention(nn.Module):
    def __init__(self, cfg: NepaConfig):
        super().__init__()
        self.num_heads, self.attn_drop = cfg.num_heads, cfg.attn_drop
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.qkv_bias)
        if cfg.qk_norm:
            norm_args = dict(eps=cfg.norm_eps, elementwise_affine=cfg.qk_norm_affine, bias=cfg.qk_norm_bias)
            self.q_norm: nn.Module = nn.LayerNorm(cfg.head_dim, **norm_args)
            self.k_norm: nn.Module = nn.LayerNorm(cfg.head_dim, **norm_args)
        else:
            self.q_norm = self.k_norm = nn.Identity()
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.proj_drop = nn.Dropout(cfg.proj_drop)

    def heads(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v (B, heads, T, head_dim), normed and rotated as (B, T, heads, head_dim): SDPA's kernels read that
        layout fastest (on CPU, attention's forward and backward take ~15% less time than from heads-major)."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, D // self.num_heads).unbind(2)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, causal: bool) -> Tensor:
        dropout = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(*self.heads(x, rope), is_causal=causal, dropout_p=dropout)
        return self.proj_drop(self.proj(x.transpose(1, 2).flatten(2)))


class Block(nn.Module):
    def __init__(self, cfg: NepaConfig, drop_path: float):
        super().__init__()
        D = cfg.embed_dim
        self.norm1 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(D, eps=cfg.norm_eps)
        mlp = SwiGLU if cfg.mlp_gated else Mlp  # dropout after fc2 only, as the official MLP
        self.mlp = mlp(D, cfg.mlp_hidden_dim, act_layer=get_act_layer(cfg.mlp_act), drop=(0.0, cfg.proj_drop))
        ls = cfg.layerscale_init
        self.ls1: nn.Module = LayerScale(D, ls) if ls else nn.Identity()
        self.ls2: nn.Module = LayerScale(D, ls) if ls else nn.Identity()
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, causal: bool) -> Tensor:
        x = self.residual(x, self.ls1, self.attn(self.norm1(x), rope, causal))
        return self.residual(x, self.ls2, self.mlp(self.norm2(x)))

    def residual(self, x: Tensor, ls: nn.Module, branch: Tensor) -> Tensor:
        """x + drop_path(ls(branch)); with LayerScale and no drop path, one pass: addcmul (~1.5% of a step on CPU)."""
        if isinstance(ls, LayerScale) and isinstance(self.drop_path, nn.Identity):
            return torch.addcmul(x, branch, ls.gamma)
        return x + self.drop_path(ls(branch))


class PretrainOutput(NamedTuple):
    pred: Tensor  # (B, 1+N, D) final-LayerNorm outputs: position t predicts z[t+1]
    target: Tensor  # (B, 1+N, D) input embeddings z, detached unless asked otherwise


class NepaViT(nn.Module):
    def __init__(self, cfg: NepaConfig):
        super().__init__()
        self.cfg = cfg
        self.num_features = self.head_hidden_size = self.embed_dim = cfg.embed_dim
        self.in_chans = cfg.in_chans
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.mask_token else None
        self.embed_drop = nn.Dropout(cfg.proj_drop)
        self.rope = Rope2D(cfg) if cfg.rope else None
        # stochastic depth grows linearly with depth
        self.blocks = nn.ModuleList(Block(cfg, p) for p in calculate_drop_path_rates(cfg.drop_path, cfg.depth))
        self.feature_info = [  # timm's: what forward_intermediates returns of each block
            dict(module=f"blocks.{i}", num_chs=cfg.embed_dim, reduction=cfg.patch_size) for i in range(cfg.depth)
        ]
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        # Classification head parts exist only with classes, so pretraining has no unused parameters.
        self.fc_norm: nn.Module = nn.Identity()
        self.head: nn.Module = nn.Identity()
        self.reset_classifier(cfg.num_classes)
        self.apply(self._init_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # -- trunk ---------------------------------------------------------------------------------

    def embed(self, x: Tensor) -> Tensor:
        """Input embeddings z = [cls; patches], (B, 1+N, D): the loss targets."""
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        return torch.cat((self.cls_token.expand(x.shape[0], -1, -1), patches), dim=1)

    def encode(
        self,
        x: Tensor,
        patch_mask: Tensor | None = None,
        causal: bool | None = None,
        taps: list[int] | tuple[int, ...] = (),
        stop: int | None = None,
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Returns (z, final-LayerNorm output, [block outputs of `taps`]), running blocks 0..`stop` (default all).

        patch_mask (B, N) bool replaces those patch embeddings by the mask token on the input side only;
        z stays clean (the targets). Sides of x must be multiples of the patch size.
        """
        p = self.cfg.patch_size
        # torch._assert, not `if ...: raise`: a check that fx traces (no Python branch on the input's shape)
        torch._assert(
            (x.shape[-2] % p == 0) & (x.shape[-1] % p == 0), f"input sides must be multiples of the patch size {p}"
        )
        z = self.embed(x)
        h = z
        if patch_mask is not None:
            if self.mask_token is None:
                raise ValueError("patch_mask needs a model built with mask_token=True")
            m = F.pad(patch_mask, (1, 0)).unsqueeze(-1).to(h.dtype)  # never mask the CLS
            h = h * (1 - m) + self.mask_token.to(h.dtype) * m
        h = self.embed_drop(h)
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        rope = self.rope(*grid, self.num_prefix_tokens, h.dtype) if self.rope is not None else None
        causal = self.cfg.causal if causal is None else causal
        blocks = self.blocks if stop is None else self.blocks[: stop + 1]
        tapped = []
        for i, block in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():  # keep block inputs, recompute the rest
                h = checkpoint(block, h, rope, causal)
            else:
                h = block(h, rope, causal)
            if i in taps:
                tapped.append(h)
        return z, self.norm(h), tapped

    # -- heads ---------------------------------------------------------------------------------

    def forward_pretrain(
        self, x: Tensor, patch_mask: Tensor | None = None, causal: bool | None = None, detach_target: bool = True
    ) -> PretrainOutput:
        z, pred, _ = self.encode(x, patch_mask=patch_mask, causal=causal)
        return PretrainOutput(pred, z.detach() if detach_target else z)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.encode(x)[1]

    def forward_head(self, h: Tensor, pre_logits: bool = False) -> Tensor:
        if self.cfg.pooling == "mean":
            h = self.fc_norm(h[:, self.num_prefix_tokens :].mean(dim=1))
        elif self.cfg.pooling == "last":
            h = h[:, -1]
        return h if pre_logits else self.head(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    # -- timm conventions ----------------------------------------------------------------------

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's feature API: the outputs of the blocks in `indices` (0-based; an int n: the last n; None: all),
        as patch-token maps (B, D, H/p, W/p) (NCHW) or sequences (B, N, D) (NLC), the CLS apart (with it as
        (map, cls) pairs where `return_prefix_tokens`); `norm`: through the final LayerNorm. Returns
        (final-LayerNorm output, intermediates), or the intermediates alone."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt {output_fmt!r}: one of NCHW, NLC")
        take, last = feature_take_indices(len(self.blocks), indices)
        _, final, tapped = self.encode(x, taps=take, stop=last if stop_early else None)
        tapped = [self.norm(t) if norm else t for t in tapped]
        maps = [t[:, self.num_prefix_tokens :] for t in tapped]
        if output_fmt == "NCHW":
            grid = (x.shape[-2] // self.cfg.patch_size, x.shape[-1] // self.cfg.patch_size)
            maps = [m.transpose(1, 2).reshape(x.shape[0], -1, *grid) for m in maps]
        if return_prefix_tokens:
            maps = list(zip(maps, [t[:, : self.num_prefix_tokens] for t in tapped], strict=True))
        return maps if intermediates_only else (final, maps)

    def prune_intermediate_layers(
        self, indices: int | list[int] | tuple[int, ...] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last of `indices` (and the final norm, the head) that features do not need."""
        take, last = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: last + 1]
        self.feature_info = self.feature_info[: last + 1]
        self.cfg.depth = len(self.blocks)  # the config keeps describing the model
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0, "")
        return take

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False, prefix: str = "") -> dict[str, Any]:
        """timm's parameter groups (`timm.optim.param_groups_layer_decay` builds layer-wise lr decay on them): the
        patch embedding and tokens first, one group per block, then the rest (final norm, head) in the last;
        `prefix`: for a model that holds this one (e.g. "backbone.")."""
        p = re.escape(prefix)
        return dict(stem=rf"^{p}(?:cls_token|mask_token|patch_embed)", blocks=[(rf"^{p}blocks\.(\d+)", None)])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Keep only each block's input in the forward pass and recompute the block in the backward pass: far
        less activation memory for one more forward's time; the same gradients (results/grad_checkpointing.md)."""
        self.grad_checkpointing = enable

    @property
    def global_pool(self) -> str:
        """The pooling in timm's words (GLOBAL_POOLS)."""
        return {ours: theirs for theirs, ours in GLOBAL_POOLS.items()}[self.cfg.pooling]

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, *, zero_init: bool = False) -> None:
        """A new head of `num_classes` (0: none), pooled by `global_pool` (timm's names: avg, last or ""; None: as
        before); trunc-normal, or zero-initialised as in the paper's fine-tuning (`zero_init`)."""
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"global_pool {global_pool!r} is not one of {sorted(GLOBAL_POOLS)}")
            self.cfg.pooling = GLOBAL_POOLS[global_pool]
        self.num_classes = self.cfg.num_classes = num_classes
        factory = get_device_dtype(self)  # new parts where the model's parameters are, in their dtype
        if self.cfg.pooling != "mean":
            self.fc_norm = nn.Identity()
        elif num_classes and isinstance(self.fc_norm, nn.Identity):
            self.fc_norm = nn.LayerNorm(self.embed_dim, eps=self.cfg.norm_eps, **factory)
        self.head = nn.Linear(self.embed_dim, num_classes, **factory) if num_classes else nn.Identity()
        if num_classes:
            init = nn.init.zeros_ if zero_init else (lambda w: nn.init.trunc_normal_(w, std=0.02))
            init(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.fc_norm.train(self.training)
        self.head.train(self.training)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW must not decay beyond biases and norms (found by shape elsewhere)."""
        return {"cls_token", "mask_token"}
