"""The corpus tokenizer: character-level, trained offline with `tokenizers` on the genlab corpus.

Chinese is written one character per morpheme, so a character vocabulary (~8 k entries covers the corpus)
keeps every system simple and honest: MERGE edits characters, the CJK logits processors see one
character per token, and the planner's text side has no sub-word artefacts. Latin text falls back to
characters as well. The tokenizer is saved and loaded as a ``GenlabCharTokenizer`` (a ``PreTrainedTokenizerFast``
whose tokenizer config lets ``AutoTokenizer`` and ``pipeline`` load it as saved: ``tokenization_genlab``).

Special tokens: ``<pad>`` (0), ``<unk>``, ``<s>`` (bos), ``</s>`` (eos), ``<mask>``, ``<sep>`` and
``RESERVED_TOKENS`` unused slots that a model may claim for its own markers without resizing embeddings.
Encoding prepends ``<s>``; pass ``add_special_tokens=False`` to get the bare characters.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .data import load_corpus
from .tokenization_genlab import GenlabCharTokenizer

# saved tokenizers carry their class and an auto_map, so AutoTokenizer and pipeline load them as they are
GenlabCharTokenizer.register_for_auto_class("AutoTokenizer")

SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>",
                  "mask_token": "<mask>", "sep_token": "<sep>"}
RESERVED_TOKENS = [f"<|reserved_{i}|>" for i in range(16)]
FIRST_ORDINARY_ID = len(SPECIAL_TOKENS) + len(RESERVED_TOKENS)  # 22: ids below are specials and reserved slots
DEFAULT_VOCAB_SIZE = 8000
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def cache_dir() -> Path:
    """Where genlab caches derived artefacts (tokenizers); ``GENLAB_CACHE`` overrides."""
    return Path(os.environ.get("GENLAB_CACHE", Path.home() / ".cache" / "genlab"))


def train_char_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a character-level tokenizer keeping the ``vocab_size`` most frequent characters."""
    specials = list(SPECIAL_TOKENS.values()) + RESERVED_TOKENS
    if vocab_size <= len(specials):
        raise ValueError(f"vocab_size must exceed the {len(specials)} special tokens, got {vocab_size}")
    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"(?m:.)"), behavior="isolated")  # one piece per character
    tok.decoder = decoders.Fuse()  # characters join back without spaces
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return GenlabCharTokenizer(tokenizer_object=tok, model_max_length=2048, **SPECIAL_TOKENS)


def save_atomically(tokenizer: PreTrainedTokenizerFast, save_dir: str | os.PathLike) -> Path:
    """Save into a temporary sibling directory, then rename: a crash never leaves half a tokenizer."""
    save_dir = Path(save_dir)
    save_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{save_dir.name}.", dir=save_dir.parent))
    try:
        tokenizer.save_pretrained(tmp)
        if save_dir.exists():
            shutil.rmtree(save_dir)
        os.replace(tmp, save_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return save_dir


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer directory, naming exactly what is missing when it is incomplete."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    missing = [name for name in TOKENIZER_FILES if not (path / name).is_file()]
    if missing:
        raise ValueError(f"tokenizer directory {path} is incomplete: missing {', '.join(missing)}")
    # Not AutoTokenizer: an older run's config (no auto_map) gets Qwen2Tokenizer forced on it when its config.json
    # says qwen2 (see tokenization_genlab); this loads any of them as written, and saves them with the auto_map.
    return GenlabCharTokenizer.from_pretrained(path)


def default_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """The corpus tokenizer, trained once on the default corpus's train split and cached."""
    path = cache_dir() / f"corpus-char-{vocab_size}"
    if not all((path / name).is_file() for name in TOKENIZER_FILES):
        train = load_corpus("all")["train"]
        save_atomically(train_char_tokenizer(train["text"], vocab_size), path)
    return load_tokenizer(path)


def resolve_tokenizer(path: str | os.PathLike | None) -> PreTrainedTokenizerFast:
    """A user tokenizer directory when given, else the cached corpus tokenizer."""
    return default_tokenizer() if path is None else load_tokenizer(path)
