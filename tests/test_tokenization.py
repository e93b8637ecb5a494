"""The character-level corpus tokenizer (issue: foundation §3)."""

import pytest

from genlab.data import load_corpus
from genlab.tokenization import (RESERVED_TOKENS, default_tokenizer, load_tokenizer, save_atomically,
                                 train_char_tokenizer)


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


def test_special_tokens_have_fixed_ids(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id,
            tokenizer.mask_token_id, tokenizer.sep_token_id) == (0, 1, 2, 3, 4, 5)
    assert tokenizer.convert_tokens_to_ids(RESERVED_TOKENS[0]) == 6
    assert 4000 < len(tokenizer) <= 8000


def test_one_token_per_character_and_exact_round_trip(tokenizer):
    sentences = load_corpus("all")["validation"].select(range(500))["text"]
    for text in sentences:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text)
        if tokenizer.unk_token_id not in ids:
            assert tokenizer.decode(ids) == text


def test_encoding_prepends_bos(tokenizer):
    ids = tokenizer("你好。")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) == 4
    assert tokenizer.decode(ids, skip_special_tokens=True) == "你好。"


def test_save_and_load_give_identical_ids(tmp_path, tokenizer):
    small = train_char_tokenizer(["今天天气很好。", "Hello world"], vocab_size=100)
    path = save_atomically(small, tmp_path / "tok")
    loaded = load_tokenizer(path)
    assert loaded("今天 world")["input_ids"] == small("今天 world")["input_ids"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind


def test_incomplete_tokenizer_directory_names_the_missing_file(tmp_path):
    small = train_char_tokenizer(["今天天气很好。"], vocab_size=60)
    path = save_atomically(small, tmp_path / "tok")
    (path / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="missing tokenizer.json"):
        load_tokenizer(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_tokenizer(tmp_path / "nowhere")


def test_vocab_size_must_leave_room_beyond_specials():
    with pytest.raises(ValueError, match="vocab_size"):
        train_char_tokenizer(["abc"], vocab_size=10)


def test_auto_tokenizer_and_pipeline_load_a_qwen2_run_as_saved_without_genlab(tmp_path, tokenizer):
    """transformers forces Qwen2Tokenizer (byte-level BPE) on qwen2 checkpoints unless the tokenizer config
    carries an auto_map: a saved run must encode Chinese by characters under AutoTokenizer and pipeline, with and
    without trust_remote_code, where genlab is not installed."""
    from genlab.runs import export_model_run
    from genlab.testing import run_code_in_clean_process
    from genlab.trainers.ar import build_model

    run_dir = tmp_path / "ar"
    export_model_run(run_dir, build_model("nano", tokenizer, 0), tokenizer, {"system": "ar"})
    assert (run_dir / "tokenization_genlab.py").is_file()
    code = f"""
from transformers import AutoTokenizer, pipeline
for trust in (None, True):
    tokenizer = AutoTokenizer.from_pretrained({str(run_dir)!r}, trust_remote_code=trust)
    print(type(tokenizer).__name__, tokenizer.convert_ids_to_tokens(tokenizer("今天天气")["input_ids"]))
generator = pipeline("text-generation", model={str(run_dir)!r})
print(generator.tokenizer.convert_ids_to_tokens(generator.tokenizer("今天")["input_ids"]))
"""
    lines = run_code_in_clean_process(code, tmp_path=tmp_path).strip().splitlines()
    assert lines == ["TokenizersBackend ['<s>', '今', '天', '天', '气']", "GenlabCharTokenizer ['<s>', '今', '天', '天', '气']",
                     "['<s>', '今', '天']"]
