"""Semantic-segmentation scores from a confusion matrix, as MMSegmentation reports them (single scale).

    IoU_c  = TP_c / (TP_c + FP_c + FN_c)   classes with an empty union (absent from labels and predictions)
                                           are left out of the mean, as mmseg's nanmean does
    mIoU   = mean_c IoU_c
    aAcc   = sum_c TP_c / labelled pixels  (pixel accuracy)

Unlabelled pixels (ADE20K label 0, here target IGNORE) count nowhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE = -1  # target value of unlabelled pixels (ADE20K label 0)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(num_classes, num_classes) int64 counts, rows = true class, columns = predicted; IGNORE pixels skipped."""
    keep = target != IGNORE
    index = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores(confusion: Tensor) -> dict[str, float]:
    """mIoU, pixel accuracy and mean class accuracy of a confusion matrix, as fractions in [0, 1]."""
    confusion = confusion.double()
    tp = confusion.diag()
    labelled, predicted = confusion.sum(1), confusion.sum(0)
    union = labelled + predicted - tp
    present = union > 0
    in_labels = labelled > 0
    return {
        "miou": (tp[present] / union[present]).mean().item(),
        "pixel_acc": (tp.sum() / confusion.sum()).item(),
        "mean_acc": (tp[in_labels] / labelled[in_labels]).mean().item(),
    }


def majority_baseline(confusion: Tensor) -> dict[str, float]:
    """Scores of the trivial segmenter that predicts the most frequent labelled class everywhere."""
    labelled = confusion.sum(1)
    trivial = torch.zeros_like(confusion)
    trivial[:, labelled.argmax()] = labelled
    return scores(trivial)
