"""Real Chinese spelling errors for MERGE (issue 12): confusion sets, typo noise, SIGHAN-15.

The data files come from the pip package ``pycorrector`` (Apache-2.0; installed ``--no-deps`` by the Makefile,
only its ``data/`` folder is read, the package is never imported):

* ``same_pinyin.txt`` — per character, the characters read the same with the same / another tone;
* ``same_stroke.txt`` — groups of characters that look alike;
* ``word_freq.txt`` — a word list with counts (jieba's dictionary), read by :class:`LexiconFillProcessor`;
* ``sighan2015_test.tsv`` — the SIGHAN-15 CSC test set, ``erroneous<TAB>correct`` per line (707 essay
  sentences by learners of Chinese as pycorrector ships them; 373 have an error, 334 have none);
* ``eval_corpus.json`` of pycorrector's 0.4.9 source release (later releases dropped it; the Makefile downloads
  that archive into the venv, :func:`pycorrector_eval500`) — pycorrector's own 500-sentence CSC evaluation set.

The fuzzy-pinyin confusion sets (``confusion_sets(fuzzy=True)``) also read snownlp's ``normal/pinyin.txt``, each
character's toneless readings.

:func:`typo_noise` turns a clean sentence into a draft the way people mistype Chinese: most errors are a
character swapped for a confusable one (same sound first, then same shape), a few are insertions, deletions
or transpositions. The confusable written is a character the writer knows: it is drawn in proportion to its
frequency in the training corpus (:func:`character_frequencies`), so typos are common characters in the wrong
place — as in learners' essays — and a detector cannot get by on spotting rare characters.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import random
import sys
import tarfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch


def pycorrector_data(name: str) -> Path:
    """Path of ``pycorrector/data/<name>``, without importing pycorrector (its imports pull kenlm, jieba, …)."""
    spec = importlib.util.find_spec("pycorrector")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the SIGHAN-15 data and the confusion sets come from the pip package pycorrector: "
                          "pip install --no-deps pycorrector (the Makefile does it)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed pycorrector")
    return path


FUZZY_INITIALS = (("zh", "z"), ("ch", "c"), ("sh", "s"), ("n", "l"), ("h", "f"), ("r", "l"))
FUZZY_FINALS = (("ang", "an"), ("eng", "en"), ("ing", "in"))  # an input method's "fuzzy pinyin" pairs


def pinyin_readings() -> dict[str, set[str]]:
    """Character → its toneless readings (ü written ``v``), from snownlp's ``normal/pinyin.txt``."""
    spec = importlib.util.find_spec("snownlp")
    path = Path(next(iter(spec.submodule_search_locations))) / "normal" / "pinyin.txt"
    readings: dict[str, set[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) == 2 and len(fields[0]) == 1:
            readings.setdefault(fields[0], set()).add(fields[1])
    return readings


def fuzzy_readings(reading: str) -> set[str]:
    """``reading`` and the readings fuzzy pinyin takes it for: one initial pair swapped (zh/z, ch/c, sh/s, n/l,
    h/f, r/l), one final pair swapped (ang/an, eng/en, ing/in), or both."""
    initials = {reading}
    for one, other in FUZZY_INITIALS:  # the longer first: "sh" is tried before "s"
        if reading.startswith(one):
            initials.add(other + reading[len(one):])
        elif reading.startswith(other):
            initials.add(one + reading[len(other):])
    variants = set(initials)
    for syllable in initials:
        for one, other in FUZZY_FINALS:
            if syllable.endswith(one):
                variants.add(syllable[: -len(one)] + other)
            elif syllable.endswith(other):
                variants.add(syllable[: -len(other)] + one)
    return variants


@lru_cache(maxsize=2)
def confusion_sets(fuzzy: bool = False) -> dict[str, tuple[str, ...]]:
    """Character → confusable characters: same pinyin (same tone, then other tones), then same shape; with
    ``fuzzy``, then also the characters read alike in any tone or under fuzzy pinyin (:func:`fuzzy_readings`;
    readings from snownlp) — a learner or an input method confuses z/zh or in/ing as readily as tones, and
    pycorrector's lists miss some pairs outright (他 / 她)."""
    table: dict[str, list[str]] = {}
    for line in pycorrector_data("same_pinyin.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        char, *groups = line.split("\t")
        table.setdefault(char, []).extend(c for group in groups for c in group.strip())
    for line in pycorrector_data("same_stroke.txt").read_text(encoding="utf-8").splitlines():
        group = [c for c in line.split("\t") if len(c) == 1]
        for char in group:
            table.setdefault(char, []).extend(c for c in group if c != char)
    if fuzzy:
        readings = pinyin_readings()
        by_reading: dict[str, list[str]] = {}
        for char, own in readings.items():
            for reading in own:
                by_reading.setdefault(reading, []).append(char)
        for char, own in readings.items():
            alike = {r for reading in own for r in fuzzy_readings(reading)} - own
            table.setdefault(char, []).extend(c for r in [*sorted(own), *sorted(alike)] for c in by_reading.get(r, ()))
    return {char: tuple(dict.fromkeys(c for c in similar if c != char)) for char, similar in table.items()}


def confusion_candidates(tokenizer, fuzzy: bool = False) -> torch.Tensor:
    """(V, V) bool over the tokenizer's ids: row v allows v itself and the single-character tokens confusable
    with v (:func:`confusion_sets`, ``fuzzy`` as there) — MERGE's ``generate(fill_candidates=…)`` and the
    per-character baseline fill a substituted character only from its row, as confusion-set correctors
    (Kenlm-CSC) do."""
    vocab = tokenizer.get_vocab()
    allowed = torch.eye(len(tokenizer), dtype=torch.bool)
    for char, similar in confusion_sets(fuzzy).items():
        if char in vocab:
            allowed[vocab[char], [vocab[c] for c in similar if c in vocab]] = True
    return allowed


@lru_cache(maxsize=1)
def word_frequencies(max_chars: int = 4) -> dict[str, int]:
    """Word → count, for the words of 2 to ``max_chars`` characters in pycorrector's ``word_freq.txt``."""
    words: dict[str, int] = {}
    for line in pycorrector_data("word_freq.txt").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) >= 2 and 2 <= len(fields[0]) <= max_chars and fields[1].isdigit():
            words[fields[0]] = max(words.get(fields[0], 0), int(fields[1]))
    return words


class LexiconFillProcessor:
    """A word-list prior for MERGE's fill (a ``FillProcessor``; issue 12), as Kenlm-CSC's word segmentation is one
    for its n-gram LM: each allowed candidate c of a filled position gains ``weight`` · log(1 + n), n the count of
    the most frequent word of 2 to ``max_chars`` characters that c forms with its neighbours in the row (0 when
    none). A typo rarely forms a word with its neighbours; the character it replaced usually does. Only the
    candidates above ``finfo.min`` are looked up, so it is meant with ``fill_candidates`` (a confusion set: tens
    of candidates, not the vocabulary). ``genlab bench merge`` chooses ``weight`` on the corpus's validation typos."""

    def __init__(self, tokenizer, weight: float = 0.5, words: dict[str, int] | None = None, max_chars: int = 4):
        self.weight, self.max_chars = weight, max_chars
        self.log_counts = {w: math.log1p(n) for w, n in (words or word_frequencies(max_chars)).items()}
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.chars = [t if t is not None and len(t) == 1 else "\0" for t in tokens]  # "\0" is in no word

    def reweighted(self, weight: float) -> LexiconFillProcessor:
        """The same prior at another ``weight``, sharing the word table (built once)."""
        other = copy.copy(self)
        other.weight = weight
        return other

    def bonus(self, left: str, right: str, char: str) -> float:
        """log(1 + count) of the most frequent word ``left[-i:] + char + right[:j]`` (0 when none is a word)."""
        best = 0.0
        for i in range(self.max_chars):
            for j in range(max(0, 1 - i), self.max_chars - i):  # the word has 2..max_chars characters
                best = max(best, self.log_counts.get(left[len(left) - i:] + char + right[:j], 0.0))
        return best

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        reach = self.max_chars - 1
        bonus = torch.zeros_like(scores)
        for k, (row, at) in enumerate(zip(input_ids.tolist(), positions.tolist())):
            left = "".join(self.chars[t] for t in row[max(0, at - reach): at])
            right = "".join(self.chars[t] for t in row[at + 1: at + 1 + reach])
            candidates = (scores[k] > torch.finfo(scores.dtype).min).nonzero().squeeze(1).tolist()
            bonus[k, candidates] = torch.tensor([self.bonus(left, right, self.chars[c]) for c in candidates])
        return scores + self.weight * bonus


FILL_RULES = ("free", "confusion", "lexicon", "fuzzy")
PRIOR_RULES = ("lexicon", "fuzzy")  # the rules with the word-list prior (a LexiconFillProcessor)


def fill_rule(tokenizer, name: str, lexicon_weight: float | None = None) -> dict:
    """The ``generate`` keywords of a fill rule: ``free``, a wrong character's mask may become any token;
    ``confusion``, only itself or a confusable one (``fill_candidates``: :func:`confusion_candidates`);
    ``lexicon``, the same candidates rescored by :class:`LexiconFillProcessor` (``lexicon_weight``; ``None``: its
    default); ``fuzzy``, as ``lexicon`` over the wider candidates of ``confusion_sets(fuzzy=True)``."""
    if name not in FILL_RULES:
        raise ValueError(f"fill must be one of {FILL_RULES}, got {name!r}")
    if name == "free":
        return {}
    rule = {"fill_candidates": confusion_candidates(tokenizer, fuzzy=name == "fuzzy")}
    if name in PRIOR_RULES:
        rule["fill_processor"] = LexiconFillProcessor(tokenizer, *([] if lexicon_weight is None else [lexicon_weight]))
    return rule


def sighan15() -> list[tuple[str, str]]:
    """SIGHAN-15 test pairs ``(erroneous, correct)`` as pycorrector ships them (never used for training or
    for choosing anything: thresholds come from the corpus's validation split)."""
    pairs = []
    for line in pycorrector_data("sighan2015_test.tsv").read_text(encoding="utf-8").splitlines():
        if line.strip():
            source, target = line.split("\t")[:2]
            pairs.append((source.strip(), target.strip()))
    return pairs


EVAL500_ARCHIVE = "pycorrector-0.4.9.tar.gz"  # the last release of pycorrector that ships data/eval_corpus.json


def pycorrector_eval500(archive: str | Path | None = None) -> list[tuple[str, str]]:
    """pycorrector's CSC evaluation set ``(erroneous, correct)``: 500 sentences, 299 with spelling errors
    (learners' essays and native writers' typos), 201 without; every pair has one length, and none is in
    SIGHAN-15's test set. A second external test set, never used for training or for choosing anything.
    ``archive``: pycorrector's 0.4.9 source release (default: where the Makefile downloads it,
    ``<venv>/share/genlab/``)."""
    path = Path(archive) if archive else Path(sys.prefix) / "share" / "genlab" / EVAL500_ARCHIVE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: pip download --no-deps -d {path.parent} pycorrector==0.4.9 "
                                "(the Makefile does it)")
    with tarfile.open(path) as tar:
        rows = json.load(tar.extractfile("pycorrector-0.4.9/pycorrector/data/eval_corpus.json"))
    return [(row["text"], row["correction"]) for row in rows]


RANK_DECAY = 0.3  # a confusable's prior falls by e^-0.3 per place down its list (nearer sounds first)


@dataclass(frozen=True)
class TypoNoise:
    """How :func:`typo_noise` corrupts: ``clean_fraction`` of sentences stay unchanged; the rest get 1 to
    ``max_errors`` errors (about one per ``chars_per_error`` characters), each a confusion-set substitution
    with probability ``p_confusion``, else an insertion, deletion or transposition of neighbours. A substitute
    is drawn with weight e^(−0.3·rank) · (count + 1)^``frequency_power`` (rank in the confusion list, count in
    the corpus); ``frequency_power`` 0 draws by rank alone, whatever the character's frequency. ``fuzzy``: the
    confusion lists are ``confusion_sets(fuzzy=True)`` (their fuzzy-pinyin tail ranks last)."""

    clean_fraction: float = 0.25
    max_errors: int = 3
    chars_per_error: int = 15
    p_confusion: float = 0.85
    frequency_power: float = 1.0
    fuzzy: bool = False


def character_frequencies(texts: Iterable[str], vocabulary: Iterable[str]) -> dict[str, int]:
    """How often each character of ``vocabulary`` (the characters a typo may write) occurs in ``texts``."""
    counts = Counter(char for text in texts for char in text)
    return {char: counts[char] for char in vocabulary}


def substitute(char: str, rng: random.Random, frequencies: Mapping[str, int], noise: TypoNoise) -> str | None:
    """A confusable character written for ``char`` (None when it has none among ``frequencies``' keys)."""
    similar = [c for c in confusion_sets(noise.fuzzy).get(char, ()) if c in frequencies]
    if not similar:
        return None
    weights = [math.exp(-RANK_DECAY * rank) * (frequencies[c] + 1) ** noise.frequency_power
               for rank, c in enumerate(similar)]
    return rng.choices(similar, weights)[0]


def typo_noise(text: str, rng: random.Random, frequencies: Mapping[str, int], noise: TypoNoise = TypoNoise()) -> str:
    """A draft of ``text`` with typing errors (``text`` itself for a clean row). Substitutes are keys of
    ``frequencies`` (:func:`character_frequencies`: the characters the tokenizer writes, so the target stays
    writable), drawn as :class:`TypoNoise` says."""
    if len(text) < 2 or rng.random() < noise.clean_fraction:
        return text
    chars = list(text)
    errors = rng.randint(1, max(1, min(noise.max_errors, len(text) // noise.chars_per_error + 1)))
    for _ in range(errors):
        i = rng.randrange(len(chars))
        roll = rng.random()
        written = substitute(chars[i], rng, frequencies, noise) if roll < noise.p_confusion else None
        if written is not None:
            chars[i] = written
        elif roll < noise.p_confusion + (1 - noise.p_confusion) / 3 or len(chars) < 3:
            chars.insert(i, chars[rng.randrange(len(chars))])  # a stray character from the sentence
        elif roll < noise.p_confusion + 2 * (1 - noise.p_confusion) / 3:
            del chars[i]
        else:
            j = min(i + 1, len(chars) - 1)
            chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)
