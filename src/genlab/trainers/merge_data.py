"""MERGE training data (SPEC M7, issue 12): (draft, target) pairs, their edit scripts, packed MLM rows.

Two pair builders, one per recipe of ``MergeConfig.recipe``:

- :func:`make_aligned_pairs` (``aligned``): edit pairs are corpus sentences with real Chinese typing errors
  (``genlab.spelling.typo_noise``: confusion-set substitutions, some insertions / deletions / swaps, a quarter
  of the rows left clean), generation pairs are a short prefix (often empty) → the sentence. Each pair carries
  its edit script (``genlab.edits.edit_labels``): ``delete_labels`` and ``insert_labels`` per draft token.
- :func:`make_pairs` (``straight_through``, the seeds' recipe): random-character noise at a sampled rate.

``collate`` pads whichever columns a batch has; :func:`pack_rows` concatenates a batch's targets into fixed-width
rows for the filler's MLM term (issue 12: the filler learns the language from packed text, not from the few
masks an edit round has).
"""

from __future__ import annotations

import random

import datasets
import torch

from ..edits import edit_labels
from ..spelling import TypoNoise, character_frequencies, typo_noise
from ..tokenization import FIRST_ORDINARY_ID

OBJECTIVES = ("merge", "per_character")  # MERGE's edit rounds, or the per-character corrector baseline


def corrupt(ids: list[int], rate: float, rng: random.Random, vocab_size: int) -> list[int]:
    """Character noise at ``rate`` per character: deletion, insertion, substitution or swap with the next."""
    out, i = [], 0
    while i < len(ids):
        if rng.random() >= rate:
            out.append(ids[i])
            i += 1
            continue
        op = rng.randrange(4)
        if op == 0:  # deletion
            i += 1
        elif op == 1:  # insertion
            out.extend([rng.randrange(FIRST_ORDINARY_ID, vocab_size), ids[i]])
            i += 1
        elif op == 2:  # substitution
            out.append(rng.randrange(FIRST_ORDINARY_ID, vocab_size))
            i += 1
        else:  # swap
            out.extend(ids[i:i + 2][::-1])
            i += 2
    return out if out != ids or not ids else out[:-1]  # a draft always differs from its target


def make_pairs(split: datasets.Dataset, tokenizer, *, max_chars: int, edit_fraction: float, max_rate: float,
               seed: int) -> datasets.Dataset:
    """Straight-through recipe: ``draft_ids`` and ``labels`` (both ``<s>`` + chars) and ``is_edit``."""
    vocab_size, bos = len(tokenizer), tokenizer.bos_token_id

    def build(batch, indices):
        chars = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        drafts, targets, kinds = [], [], []
        for index, ids in zip(indices, chars):
            ids = ids[:max_chars]
            rng = random.Random(seed * 1_000_003 + index)
            is_edit = rng.random() < edit_fraction and len(ids) >= 2
            if is_edit:
                draft = corrupt(ids, rng.uniform(0.05, max_rate), rng, vocab_size)
            else:
                draft = ids[: rng.choice([0, 0, rng.randint(1, min(4, len(ids)))])]
            drafts.append([bos] + draft)
            targets.append([bos] + ids)
            kinds.append(is_edit)
        return {"draft_ids": drafts, "labels": targets, "is_edit": kinds}

    return split.map(build, batched=True, with_indices=True, remove_columns=split.column_names,
                     desc="edit/generation pairs")


def character_vocabulary(tokenizer) -> set[str]:
    """The single characters the tokenizer writes as one ordinary token (typo substitutes stay among them)."""
    return {token for token, index in tokenizer.get_vocab().items() if len(token) == 1 and index >= FIRST_ORDINARY_ID}


def make_aligned_pairs(split: datasets.Dataset, tokenizer, *, max_chars: int, edit_fraction: float,
                       noise: TypoNoise, seed: int, objective: str = "merge") -> datasets.Dataset:
    """Aligned recipe: ``draft_ids``, ``labels`` (``<s>`` + chars), ``delete_labels``, ``insert_labels`` (the
    draft → target edit script, per draft token) and ``is_edit``. ``per_character``: edit pairs only, and
    drafts whose typos changed the length are replaced by the clean sentence (the baseline predicts one
    character per position, as MacBERT4CSC does). Typo substitutes are drawn by their frequency in ``split``."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    bos, frequencies = tokenizer.bos_token_id, character_frequencies(split["text"], character_vocabulary(tokenizer))
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731

    def build(batch, indices):
        columns = {"draft_ids": [], "labels": [], "delete_labels": [], "insert_labels": [], "is_edit": []}
        for index, text in zip(indices, batch["text"]):
            target = [bos] + encode(text[:max_chars])
            rng = random.Random(seed * 1_000_003 + index)
            is_edit = objective == "per_character" or rng.random() < edit_fraction
            if is_edit:
                draft = [bos] + encode(typo_noise(text[:max_chars], rng, frequencies, noise))
                if objective == "per_character" and len(draft) != len(target):
                    draft = list(target)
            else:
                draft = target[: 1 + rng.choice([0, 0, rng.randint(1, max(1, min(4, len(target) - 1)))])]
            script = edit_labels(draft, target)
            for name, value in (("draft_ids", draft), ("labels", target), ("delete_labels", script.delete),
                                ("insert_labels", script.insert), ("is_edit", is_edit)):
                columns[name].append(value)
        return columns

    return split.map(build, batched=True, with_indices=True, remove_columns=split.column_names,
                     desc=f"{objective} pairs with edit scripts")


def collate(features: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ids with ``pad_id``, labels with -100, edit-script columns (when present) with 0."""
    def pad(rows, value):
        width = max(map(len, rows))
        return torch.tensor([row + [value] * (width - len(row)) for row in rows])

    drafts = pad([f["draft_ids"] for f in features], pad_id)
    batch = {"input_ids": drafts, "attention_mask": (drafts != pad_id).long(),
             "labels": pad([f["labels"] for f in features], -100),
             "is_edit": torch.tensor([f["is_edit"] for f in features], dtype=torch.bool)}
    for name in ("delete_labels", "insert_labels"):
        if name in features[0]:
            batch[name] = pad([f[name] for f in features], 0)
    return batch


def pack_rows(labels: torch.Tensor, bos_id: int, width: int) -> torch.Tensor:
    """(B, M) ``<s>`` + chars, -100 padded → (R, width) rows of the batch's text laid end to end, each row
    ``<s>`` + width − 1 characters; the last row is -100 padded."""
    text = labels[(labels != -100) & (labels != bos_id)]  # (T,) every character of the batch, in order
    per_row = width - 1
    rows = -(-text.numel() // per_row)
    body = torch.full((rows * per_row,), -100, dtype=labels.dtype)
    body[: text.numel()] = text
    bos = torch.full((rows, 1), bos_id, dtype=labels.dtype)
    return torch.cat([bos, body.view(rows, per_row)], dim=1)
