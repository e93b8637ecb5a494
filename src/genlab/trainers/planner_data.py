"""Planner data (SPEC P5): (u, y) pairs from the corpus, their collation, and the length curriculum.

Pairs (``build_pairs``): in a news paragraph, the previous sentence (u) → the next sentence (y), using the
``doc``/``sent`` columns (both sentences must be in the same split); for a review, its polarity and its first
``opening_chars`` characters (u = "好评：开头" / "差评：开头") → the review's first sentence (y). y ends with
``</s>``. Curriculum (v3.1): a step's batch is drawn from the examples whose y is no longer than
``curriculum_length(step)``, growing linearly to the longest y; the sampler is a pure function of (seed, step)
so resuming reproduces it.
"""

from __future__ import annotations

import datasets
import torch
from torch.utils.data import Sampler

POLARITY = {"pos": "好评：", "neg": "差评："}


def pair_texts(split: datasets.Dataset, opening_chars: int = 4) -> tuple[list[str], list[str]]:
    """(u, y) strings: consecutive news sentences of a paragraph; review polarity + opening → first sentence."""
    frame = split.to_pandas().sort_values(["source", "label", "doc", "sent"], kind="stable")
    nxt = frame.shift(-1)
    follows = ((frame.source != "reviews") & (nxt.source == frame.source) & (nxt.doc == frame.doc)
               & (nxt.sent == frame.sent + 1))
    us, ys = frame.text[follows].tolist(), nxt.text[follows].tolist()
    reviews = frame[(frame.source == "reviews") & (frame.sent == 0)]
    us += [POLARITY.get(label, "") + text[:opening_chars] for label, text in zip(reviews.label, reviews.text)]
    ys += reviews.text.tolist()
    return us, ys


def build_pairs(split: datasets.Dataset, tokenizer, max_input_length: int, max_text_length: int,
                opening_chars: int = 4) -> datasets.Dataset:
    """Tokenised pairs: ``u_ids``, ``y_ids`` (ending in ``</s>``), ``index`` (the key of the z* cache)."""
    us, ys = pair_texts(split, opening_chars)
    if not us:
        raise ValueError("the data gives no (u, y) pairs: pairs are consecutive sentences of one line (paragraph) "
                         "or labelled reviews, so a file with one sentence per line has none; put paragraphs on lines")
    u_ids = tokenizer(us, add_special_tokens=False)["input_ids"]
    y_ids = [ids + [tokenizer.eos_token_id] for ids in tokenizer(ys, add_special_tokens=False)["input_ids"]]
    keep = [i for i, (u, y) in enumerate(zip(u_ids, y_ids)) if 0 < len(u) <= max_input_length and len(y) <= max_text_length]
    if not keep:
        raise ValueError(f"no (u, y) pair fits --max-input-length {max_input_length} / --max-text-length "
                         f"{max_text_length}")
    return datasets.Dataset.from_dict({"u_ids": [u_ids[i] for i in keep], "y_ids": [y_ids[i] for i in keep],
                                       "index": list(range(len(keep)))})


def pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad → ids (batch, T), mask (batch, T)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):  # collation, outside the model's hot path
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def collate(features: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    u_ids, u_mask = pad([f["u_ids"] for f in features], pad_id)
    y_ids, y_mask = pad([f["y_ids"] for f in features], pad_id)
    return {"input_ids": u_ids, "attention_mask": u_mask, "text_ids": y_ids, "text_attention_mask": y_mask,
            "index": torch.tensor([f["index"] for f in features])}


# -- curriculum (P5) -------------------------------------------------------------------------------------------------
def curriculum_length(step: int, start: int, end: int, ramp_steps: int) -> int:
    """Longest y allowed at ``step``: linear from ``start`` to ``end`` over ``ramp_steps`` (pure in step)."""
    return end if ramp_steps <= 0 else int(start + (end - start) * min(1.0, step / ramp_steps))


class CurriculumSampler(Sampler):
    """``steps × batch`` indices; step s draws uniformly among the examples with len(y) ≤ curriculum_length(s)."""

    def __init__(self, lengths: list[int], batch_size: int, steps: int, start: int, ramp_steps: int, seed: int):
        self.lengths = torch.tensor(lengths)
        self.batch_size, self.steps, self.start, self.ramp, self.seed = batch_size, steps, start, ramp_steps, seed

    def __len__(self) -> int:
        return self.steps * self.batch_size

    def __iter__(self):
        order = self.lengths.argsort(stable=True)
        sorted_lengths = self.lengths[order]
        end = int(sorted_lengths[-1])
        limits = torch.tensor([curriculum_length(s, self.start, end, self.ramp) for s in range(self.steps)])
        pool = torch.searchsorted(sorted_lengths, limits, right=True).clamp(min=self.batch_size)  # (steps,)
        draws = torch.rand(self.steps, self.batch_size, generator=torch.Generator().manual_seed(self.seed))
        yield from order[(draws * pool[:, None]).long()].flatten().tolist()
