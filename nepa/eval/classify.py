"""Top-1 / top-5 accuracy of a classifier over one rank's batches, summed over all ranks."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from nepa.engine.distributed import several_processes


def correct_topk(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> Tensor:
    """(len(ks),) number of samples whose label is among the k highest logits, for each k."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return torch.stack([hits[:, :k].any(dim=1).sum() for k in ks])


@torch.no_grad()
def accuracy(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device, progress: str | None = None
) -> dict[str, float]:
    """{"top1", "top5"} in percent over every sample of every rank (a collective call when distributed).

    The ranks' loaders must cover the split once between them (make_loader with drop_last=False). `progress`: the
    name of a progress bar to show while it runs (10,000 images take ~20 s with the embedded tiny model on 2 cores).
    """
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # top-1 hits, top-5 hits, samples
    for images, labels in tqdm(
        batches, desc=progress, disable=progress is None, leave=False, dynamic_ncols=True, mininterval=1.0
    ):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(images)
        counts += torch.cat([correct_topk(logits.float(), labels), counts.new_tensor([len(labels)])])
    model.train(was_training)
    if several_processes():
        dist.all_reduce(counts)
    top1, top5, n = counts.tolist()
    return {"top1": 100 * top1 / n, "top5": 100 * top5 / n}
