"""Planner data (SPEC P5): (u, y) pairs of a task, their collation, and the length curriculum.

Tasks (``task_texts``), each split by y's hash like the corpus (held out by sentence):

- ``next_sentence``: in a news paragraph, the previous sentence (u) → the next sentence (y), using the
  ``doc``/``sent`` columns; for a review, its polarity and its first ``opening_chars`` characters
  (u = "好评：开头" / "差评：开头") → the review's first sentence (y);
- ``keywords`` (CommonGen-style): u = the content words of a People's Daily sentence of ≤ 40 characters (its
  nouns, verbs and adjectives by the corpus's own POS tags), shuffled, plus two content words of another
  sentence as distractors, joined by "、" → y = the sentence;
- a ``.jsonl`` file of ``{"u": ..., "y": ...}`` rows (``--pairs``): the user's own task.

y ends with ``</s>``. Curriculum (v3.1): a step's batch is drawn from the examples whose y is no longer than
``curriculum_length(step)``, growing linearly to the longest y; the sampler is a pure function of (seed, step)
so resuming reproduces it.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import datasets
import torch
from torch.utils.data import Sampler

from ..data import corpus_files, jsonl_row, load_corpus, normalize_text, split_of

POLARITY = {"pos": "好评：", "neg": "差评："}
TASKS = ("next_sentence", "keywords")
CONTENT_TAGS = {"n", "ns", "nr", "nt", "nz", "vn", "v", "a", "an", "i", "l", "j"}  # PKU tags: nouns, verbs, adj.
SENTENCE_END = {"。", "！", "？"}
CLOSERS = {"”", "’", "」", "』", "）"}


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


def tagged_sentences(line: str) -> list[list[tuple[str, str]]]:
    """A People's Daily line ``词/tag  [词/tag 词/tag]nt …`` → its sentences as (word, tag) lists."""
    sentences, words = [], []
    for item in line.split():
        word, _, tag = item.lstrip("[").rpartition("/")
        if word in CLOSERS and not words and sentences:  # a closing quote after 。 ends the previous sentence
            sentences[-1].append((word, tag))
            continue
        words.append((normalize_text(word), tag.split("]")[0]))
        if word in SENTENCE_END:
            sentences.append(words)
            words = []
    return sentences


def keyword_texts(split: str, distractors: int = 2, max_chars: int = 40, seed: int = 0) -> tuple[list[str], list[str]]:
    """(u, y) of the ``keywords`` task in ``split``: u = y's content words shuffled + distractors, "、"-joined."""
    with open(corpus_files("news")["news"][0], encoding="utf-8") as f:
        sentences = [s for line in f for s in tagged_sentences(line)]
    items = []
    for words in sentences:
        text = "".join(w for w, _ in words)
        content = list(dict.fromkeys(w for w, tag in words if tag in CONTENT_TAGS and w))
        if len(text) <= max_chars and 2 <= len(content) <= 8 and split_of(text) == split:
            items.append((text, content))
    us, ys = [], []
    for text, content in items:
        rng = random.Random(int(hashlib.md5(f"{seed}:{text}".encode()).hexdigest()[:8], 16))
        other = items[rng.randrange(len(items))][1]
        extra = [w for w in other if w not in content and w not in text][:distractors]
        words = content + extra
        rng.shuffle(words)
        us.append("、".join(words))
        ys.append(text)
    return us, ys


def jsonl_texts(path: str | Path, split: str) -> tuple[list[str], list[str]]:
    """(u, y) rows of a ``{"u": ..., "y": ...}`` JSONL file in ``split`` (by y's hash); errors name the line."""
    us, ys = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = jsonl_row(Path(path), number, line, fields=("u", "y"), flag="--pairs")
            if split_of(row["y"]) == split:
                us.append(row["u"])
                ys.append(row["y"])
    return us, ys


def task_texts(task: str, split: str, data: str = "all", pairs: str | None = None) -> tuple[list[str], list[str]]:
    """(u, y) strings of ``split``: the user's ``pairs`` file when given, else the built-in ``task``."""
    if pairs is not None:
        return jsonl_texts(pairs, split)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} (or give --pairs FILE.jsonl), got {task!r}")
    if task == "keywords":
        return keyword_texts(split)
    return pair_texts(load_corpus(data)[split])


def run_pairs(manifest: dict, split: str, tokenizer, config) -> datasets.Dataset:
    """The tokenised pairs of ``split`` for the task a planner run (its ``manifest``) was trained on."""
    us, ys = task_texts(manifest.get("task", "next_sentence"), split, manifest.get("data", "all"),
                        manifest.get("pairs_file"))
    return tokenize_pairs(us, ys, tokenizer, config.max_input_length, config.max_text_length)


def build_pairs(split: datasets.Dataset, tokenizer, max_input_length: int, max_text_length: int,
                opening_chars: int = 4) -> datasets.Dataset:
    """The next-sentence pairs of a corpus split, tokenised (``tokenize_pairs``)."""
    return tokenize_pairs(*pair_texts(split, opening_chars), tokenizer, max_input_length, max_text_length)


def tokenize_pairs(us: list[str], ys: list[str], tokenizer, max_input_length: int,
                   max_text_length: int) -> datasets.Dataset:
    """Tokenised pairs: ``u_ids``, ``y_ids`` (ending in ``</s>``), ``index`` (the key of the z* cache)."""
    if not us:
        raise ValueError("the data gives no (u, y) pairs: next-sentence pairs are consecutive sentences of one line "
                         "(paragraph) or labelled reviews, so a file with one sentence per line has none; put "
                         "paragraphs on lines, or give --pairs FILE.jsonl")
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
