"""Timing helpers shared by the recipes (steps that fit a budget) and the benchmarks (SPEC B).

Timings are medians after warm-up; a ratio is taken inside each back-to-back pair, so a load swing on a shared
machine hits both sides alike.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from .tokenization import FIRST_ORDINARY_ID


def median_seconds(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step_fn(model, ids: torch.Tensor, lr: float = 1e-5) -> Callable[[], None]:
    """One optimisation step (train mode; forward with ``labels=ids``, backward, AdamW over the trainable
    parameters) on ids (batch, seq), as a timeable call."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step():
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def paired_seconds(first: Callable[[], object], second: Callable[[], object], *, repeats: int,
                   warmup: int = 1) -> tuple[float, float, float]:
    """Time ``first`` then ``second`` back to back, ``repeats`` times after ``warmup`` untimed pairs.

    Returns (median s of first, median s of second, median of the per-pair ratio t(second) / t(first)):
    a load swing on a shared machine hits both sides of a pair alike, so the paired ratio is steadier
    than the ratio of two separate medians.
    """
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        first(), second()
    pairs = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        first()
        sync()
        middle = time.perf_counter()
        second()
        sync()
        pairs.append((middle - start, time.perf_counter() - middle))
    first_s, second_s = zip(*pairs)
    return statistics.median(first_s), statistics.median(second_s), statistics.median(b / a for a, b in pairs)


def random_ids(vocab_size: int, batch: int, block: int) -> torch.Tensor:
    """(batch, block) ids above the special range: a step's speed does not depend on the text."""
    return torch.randint(FIRST_ORDINARY_ID, vocab_size, (batch, block), generator=torch.Generator().manual_seed(0))
