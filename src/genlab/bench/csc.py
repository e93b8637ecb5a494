"""Scores of Chinese spelling correction (issue 12): SIGHAN's sentence-level correction / detection precision,
recall and F1 as pycorrector computes them, the AUC of a per-character error detector, and sentences batched
and tokenised as the correctors read them."""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from ..edits import changed_positions

CSC_SCORES = ("correction_precision", "correction_recall", "correction_f1", "detection_precision",
              "detection_recall", "detection_f1", "clean_fpr")


def auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Chance that a random positive scores above a random negative (ties count half); NaN without both."""
    pos, neg = scores[positive], scores[~positive]
    if not pos.numel() or not neg.numel():
        return float("nan")
    above = (pos[:, None] > neg[None, :]).float().mean() + 0.5 * (pos[:, None] == neg[None, :]).float().mean()
    return float(above)


def rate_upper_bound(rate: float, count: int, confidence: float) -> float:
    """Upper end of the one-sided ``confidence`` Wilson score interval of a rate measured on ``count`` trials (the
    rate itself at ``confidence`` 0.5; 1 without trials)."""
    if count == 0:
        return 1.0
    z = NormalDist().inv_cdf(confidence)
    centre = rate + z * z / (2 * count)
    spread = z * math.sqrt(rate * (1 - rate) / count + z * z / (4 * count * count))
    return (centre + spread) / (1 + z * z / count)


def f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def csc_scores(sources: list[str], targets: list[str], predictions: list[str]) -> dict[str, float]:
    """Sentence-level CSC scores. ``correction_*``: pycorrector's (``eval_model_batch``): an erroneous sentence is
    a TP when corrected exactly (else FN), a clean one a FP when changed (else TN). ``detection_*``: SIGHAN's
    strict detection: a changed sentence is right when its changed positions are exactly the erroneous ones.
    ``clean_fpr``: share of clean sentences changed."""
    tp = fp = fn = detected = flagged = 0
    positives = clean = 0
    for source, gold, predicted in zip(sources, targets, predictions):
        erroneous = source != gold
        positives += erroneous
        clean += not erroneous
        if erroneous:
            tp += predicted == gold
            fn += predicted != gold
        else:
            fp += predicted != source
        if predicted != source:
            flagged += 1
            detected += erroneous and changed_positions(source, predicted) == changed_positions(source, gold)
    precision = tp / (tp + fp) if tp else 0.0
    recall = tp / (tp + fn) if tp else 0.0
    det_precision = detected / flagged if flagged else 0.0
    det_recall = detected / positives if positives else 0.0
    return dict(zip(CSC_SCORES, (precision, recall, f1(precision, recall), det_precision, det_recall,
                                 f1(det_precision, det_recall), fp / clean if clean else 0.0)))


def batched(texts: list[str], size: int):
    """``texts`` in consecutive slices of at most ``size``."""
    for start in range(0, len(texts), size):
        yield texts[start:start + size]


def padded(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """``<s>`` + characters, right-padded: ``input_ids`` and ``attention_mask``."""
    tokenizer.padding_side = "right"
    return dict(tokenizer(texts, return_tensors="pt", padding=True))
