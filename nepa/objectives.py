"""The next-embedding prediction objective and the switches for the paper's ablations (Table 1a, 1c).

    loss = -mean_t cos(z_hat[:, t], stopgrad(z[:, t+1]))

Switches (nepa.config.Objective, params.yaml's `objective:`): `shift` (predict the next embedding, or the
same position: "no AR shift"), `causal` (causal attention mask, or bidirectional), `stop_grad` (detach
targets, or let gradients flow into them: the loss then collapses to -1), `mask_ratio` (replace that
fraction of input patch embeddings by a learned mask token; targets stay clean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nepa.config import Objective
from nepa.models import NepaViT


def next_embedding_loss(pred: Tensor, target: Tensor, shift: bool = True) -> Tensor:
    """-mean cosine between predictions and targets, (B, T, D) each; with shift, pred[t] meets target[t+1]."""
    if shift:
        pred, target = pred[:, :-1], target[:, 1:]
    return -(F.normalize(pred.float(), dim=-1) * F.normalize(target.float(), dim=-1)).sum(-1).mean()


def random_patch_mask(batch: int, num_patches: int, ratio: float, device: torch.device) -> Tensor:
    """(batch, num_patches) bool, exactly round(ratio * num_patches) True per row, uniformly placed."""
    num_masked = round(ratio * num_patches)
    ranks = torch.rand(batch, num_patches, device=device).argsort(dim=1).argsort(dim=1)
    return ranks < num_masked


def pretrain_loss(model: NepaViT, images: Tensor, objective: Objective) -> Tensor:
    """The pretraining loss of `model` on a batch of images under `objective`."""
    mask = None
    if objective.mask_ratio > 0:
        num_patches = (images.shape[-2] // model.cfg.patch_size) * (images.shape[-1] // model.cfg.patch_size)
        mask = random_patch_mask(images.shape[0], num_patches, objective.mask_ratio, images.device)
    out = model.forward_pretrain(images, patch_mask=mask, causal=objective.causal, detach_target=objective.stop_grad)
    return next_embedding_loss(out.pred, out.target, shift=objective.shift)
