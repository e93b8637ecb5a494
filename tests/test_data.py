"""The offline corpus (issue: foundation §2, SPEC H7)."""

import json

import pytest

from genlab.data import load_corpus, normalize_text, split_of, split_sentences, strip_pos_tags


def test_strip_pos_tags_handles_bracketed_compounds():
    line = "迈向/v  充满/v  [中国/ns  政府/n]nt  １２月/t  ，/w"
    assert strip_pos_tags(line) == "迈向充满中国政府１２月，"


def test_normalize_maps_fullwidth_digits_and_letters_but_keeps_chinese_punctuation():
    assert normalize_text("１９９８年ＡＢｃ，。！") == "1998年ABc，。！"


def test_split_sentences_keeps_marks_and_closing_quotes():
    text = "他说：“今天很好。”明天见！好。"
    assert split_sentences(text, min_chars=3) == ["他说：“今天很好。”", "明天见！"]  # "好。" is too short


def test_split_is_a_deterministic_function_of_the_text():
    assert split_of("你好世界。") == split_of("你好世界。")
    counts = {"train": 0, "validation": 0, "test": 0}
    for i in range(4000):
        counts[split_of(f"句子{i}")] += 1
    assert 0.86 < counts["train"] / 4000 < 0.94
    assert counts["validation"] > 100 and counts["test"] > 100


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("all")


def test_builtin_corpus_has_news_and_labelled_reviews(corpus):
    train = corpus["train"]
    assert len(train) > 100_000
    sources = set(train.unique("source"))
    assert sources == {"news", "reviews"}
    reviews = train.filter(lambda s: s == "reviews", input_columns="source")
    assert set(reviews["label"]) == {"pos", "neg"}
    text = "".join(train.select(range(5000))["text"])
    assert not any("０" <= ch <= "９" for ch in text)  # full-width digits normalised
    assert "/" not in train[0]["text"]  # POS tags stripped


def test_splits_are_disjoint(corpus):
    val = set(corpus["validation"]["text"])
    test = set(corpus["test"]["text"])
    train_sample = set(corpus["train"].select(range(20_000))["text"])
    assert not val & test and not val & train_sample and not test & train_sample


def test_user_text_and_jsonl_files(tmp_path):
    sentences = [f"第{i}个用户句子很长。" for i in range(300)]
    txt = tmp_path / "corpus.txt"
    txt.write_text("\n".join(sentences) + "\n\n", encoding="utf-8")
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": s}, ensure_ascii=False) for s in sentences), encoding="utf-8")
    for path in (txt, jsonl):
        ds = load_corpus(str(path))
        assert sum(len(ds[s]) for s in ds) == 300
        assert set(ds["train"]["source"]) == {"user"}
    streamed = load_corpus(str(txt), streaming=True)
    assert sum(1 for _ in streamed["train"]) == len(load_corpus(str(txt))["train"])


@pytest.mark.parametrize(
    "content, message",
    [(None, "not found"), (b"", "empty"), ("中文".encode("gbk"), "not UTF-8")],
)
def test_bad_data_files_fail_with_a_clear_message(tmp_path, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        load_corpus(str(path))


def test_jsonl_without_text_field_is_rejected(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"body": "你好世界你好"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 1 needs string fields 'text'"):
        load_corpus(str(path))


@pytest.mark.parametrize("bad,message", [("{\"text\": \"你好", "line 2 is not JSON"),
                                         ('{"text": 5}', "line 2 needs string fields 'text'")])
def test_a_bad_jsonl_line_is_named_not_a_traceback(tmp_path, bad, message):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "今天天气很好。"}\n' + bad + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_corpus(str(path))
