"""CJK logits processors and sentence stopping (SPEC S3, S5) on real ids of BOTH tokenizers."""

import pytest
import torch
from transformers import AutoTokenizer, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper

from genlab.logits_process import (CJKAdjacentRepeatLogitsProcessor, CJKNoRepeatNGramLogitsProcessor,
                                   CJKPunctuationGateLogitsProcessor, CJKRepetitionPenaltyLogitsProcessor,
                                   SentenceStoppingCriteria, TokenClasses,
                                   build_cjk_processors, is_cjk_char)
from genlab.tokenization import default_tokenizer

NEG_INF = -float("inf")


@pytest.fixture(scope="module", params=["corpus", "qwen2"])
def tok(request):
    if request.param == "corpus":
        tokenizer = default_tokenizer()
    else:
        from genlab.qwen2_tokenizer import qwen2_tokenizer_dir

        tokenizer = AutoTokenizer.from_pretrained(qwen2_tokenizer_dir())
    return tokenizer, TokenClasses.from_tokenizer(tokenizer)


def char_ids(tokenizer, text):
    """One id per character (each character encoded alone), as a (1, len) tensor."""
    ids = [tokenizer.encode(c, add_special_tokens=False) for c in text]
    assert all(len(i) == 1 for i in ids), f"a character of {text!r} is not a single token"
    return torch.tensor([[i[0] for i in ids]])


def one_id(tokenizer, char):
    return char_ids(tokenizer, char)[0, 0].item()


def random_scores(classes, batch=1, seed=0):
    return torch.randn(batch, classes.cjk.shape[0] + 7, generator=torch.Generator().manual_seed(seed))


def test_mark_ids_are_derived_from_the_tokenizer(tok):
    tokenizer, classes = tok
    comma_ids = set(classes.comma.nonzero().flatten().tolist())
    assert one_id(tokenizer, "，") in comma_ids and one_id(tokenizer, "、") in comma_ids
    decoded = tokenizer.batch_decode([[i] for i in comma_ids])
    assert all(any(m in text for m in "，、：:") for text in decoded)
    if len(tokenizer) > 100_000:  # Qwen2: a mark lives in several ids ("，\n", "”，", …)
        assert len(comma_ids) > 4
        assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize("，\n"))[0] in comma_ids or len(comma_ids) > 10
    assert classes.cjk[one_id(tokenizer, "中")] and not classes.cjk[one_id(tokenizer, "，")]
    assert classes.sentence_end[one_id(tokenizer, "。")] and classes.sentence_end[one_id(tokenizer, ".")]


def test_adjacent_identical_cjk_character_is_banned(tok):
    tokenizer, classes = tok
    proc = CJKAdjacentRepeatLogitsProcessor(classes)
    scores = random_scores(classes)
    out = proc(char_ids(tokenizer, "我真"), scores.clone())
    assert out[0, one_id(tokenizer, "真")] == NEG_INF
    starts_with_zhen = (classes.first_char == ord("真")).nonzero().flatten()
    assert torch.isinf(out[0, starts_with_zhen]).all()
    assert torch.isfinite(out[0, one_id(tokenizer, "我")])
    # after a mark or a Latin letter only the ids that spell an identical pair themselves (哈哈) are banned
    for text in ("好，", "ab"):
        assert torch.equal(proc(char_ids(tokenizer, text), scores.clone()).isinf()[0], classes.inner_repeat.bool()
                           if scores.shape[1] == classes.inner_repeat.shape[0] else
                           torch.nn.functional.pad(classes.inner_repeat, (0, 7)))


def test_ngram_ban_includes_the_last_ngram_written(tok):
    """今天好！好！好！ + 好: the stripped history 今天好好好 already holds 好好好, so 好 is banned (it was allowed)."""
    tokenizer, classes = tok
    out = CJKNoRepeatNGramLogitsProcessor(classes, 3)(char_ids(tokenizer, "今天好！好！好！"), random_scores(classes))
    assert out[0, one_id(tokenizer, "好")] == NEG_INF


@pytest.mark.parametrize("ngram_size", [2, 3])
def test_ngram_ban_agrees_with_transformers_on_cjk_histories(ngram_size):
    """HF's NoRepeatNGramLogitsProcessor is the oracle wherever the history is all CJK content (nothing to strip):
    2,000 random histories over a 4-character alphabet, so repeats are frequent."""
    from transformers import NoRepeatNGramLogitsProcessor

    tokenizer = default_tokenizer()
    classes = TokenClasses.from_tokenizer(tokenizer)
    alphabet = char_ids(tokenizer, "好天今人")[0]
    ours, oracle = CJKNoRepeatNGramLogitsProcessor(classes, ngram_size), NoRepeatNGramLogitsProcessor(ngram_size)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2000):
        length = int(torch.randint(1, 9, (), generator=generator))
        history = alphabet[torch.randint(0, 4, (1, length), generator=generator)]
        scores = torch.zeros(1, len(tokenizer))
        assert torch.equal(ours(history, scores.clone()).isinf(), oracle(history, scores.clone()).isinf()), history


def cjk_of(text):
    return [c for c in text if is_cjk_char(c)]


def ngram_oracle(history: str, token: str, n: int) -> bool:
    """Plain Python: the token's first or second CJK character completes an n-gram of the stripped history."""
    h, t = cjk_of(history), cjk_of(token)[:2]
    written = {tuple(h[i : i + n]) for i in range(len(h) - n + 1)}
    seq = h + t
    return any(j - n + 1 >= 0 and tuple(seq[j - n + 1 : j + 1]) in written for j in range(len(h), len(seq)))


@pytest.mark.parametrize("ngram_size", [2, 3])
def test_ngram_ban_over_punctuation_stripped_cjk_history(tok, ngram_size):
    """员在工作，员在 + 工…: the mark between the repeats does not hide them; on Qwen2 every id whose characters
    would repeat the n-gram (工作, ，工) is banned, exactly the ids a plain-Python oracle over the texts names."""
    tokenizer, classes = tok
    proc = CJKNoRepeatNGramLogitsProcessor(classes, ngram_size)
    scores = torch.zeros(1, classes.cjk.shape[0])
    text = "员在工作，员在" if ngram_size == 3 else "员在工作，员"
    banned = proc(char_ids(tokenizer, text), scores.clone())[0] == NEG_INF
    whole = classes.lead_cont == 0  # ids that start inside a character are judged with the history's bytes
    expected = torch.tensor([ngram_oracle(text, t, ngram_size) for t in classes.texts])
    assert torch.equal(banned[whole], expected[whole])
    assert banned[one_id(tokenizer, "工" if ngram_size == 3 else "在")]
    fresh = proc(char_ids(tokenizer, "员在工作，我们"), scores.clone())[0] == NEG_INF
    assert torch.equal(fresh[whole], torch.tensor([ngram_oracle("员在工作，我们", t, ngram_size) for t in classes.texts])[whole])
    assert not fresh[one_id(tokenizer, "工")]


def test_comma_gating_counts_cjk_content_characters_since_last_mark(tok):
    """A comma-like mark needs 4 CJK characters since the last mark, the id's own before its mark included
    (Qwen2's 广场， after 天安 writes 4); an id holding two marks closer than that (``::``, ``、、``) never passes."""
    tokenizer, classes = tok
    proc = CJKPunctuationGateLogitsProcessor(classes)
    scores = torch.zeros(1, classes.cjk.shape[0])
    comma, period = classes.comma, classes.period & ~classes.comma  # Qwen2 has "。，": gated as a comma
    lead = classes.cjk_lead
    early = proc(char_ids(tokenizer, "我爱北京，天安"), scores.clone())  # 2 since the mark
    assert torch.equal(torch.isinf(early[0]) & comma, comma & ((2 + lead < 4) | proc.crowded))
    assert (early[0, period & (lead == 0)] == -8.0).all()
    mid = proc(char_ids(tokenizer, "我爱北京，天安门广场"), scores.clone())  # 5: commas open, 。 still −8
    assert (mid[0, comma & ~classes.period & ~proc.crowded] == 0).all() and (mid[0, period & (lead < 3)] == -8.0).all()
    late = proc(char_ids(tokenizer, "我爱北京，天安门广场真大啊"), scores.clone())  # 8
    assert torch.equal(torch.isinf(late[0]), comma & proc.crowded)
    assert classes.cjk_since_punctuation(char_ids(tokenizer, "ab我爱")).tolist() == [2]


def test_repetition_penalty_touches_cjk_only(tok):
    tokenizer, classes = tok
    proc = CJKRepetitionPenaltyLogitsProcessor(classes, 1.22)
    ids = char_ids(tokenizer, "好，好a")
    scores = torch.full((1, classes.cjk.shape[0]), 2.0)
    scores[0, one_id(tokenizer, "好")] = -2.0
    out = proc(ids, scores.clone())
    assert out[0, one_id(tokenizer, "好")] == pytest.approx(-2.44)
    assert out[0, one_id(tokenizer, "，")] == 2.0 and out[0, one_id(tokenizer, "a")] == 2.0
    positive = proc(ids, torch.full_like(scores, 2.0))
    assert positive[0, one_id(tokenizer, "好")] == pytest.approx(2.0 / 1.22)


def test_processors_are_pure_and_survive_rollback(tok):
    tokenizer, classes = tok
    stack = build_cjk_processors(classes)
    ids = char_ids(tokenizer, "员在工作，员在真")
    scores = random_scores(classes)
    first = stack(ids, scores.clone())
    assert torch.equal(stack(ids, scores.clone()), first)
    drafted = torch.cat([ids, char_ids(tokenizer, "的，好。")], dim=1)
    stack(drafted, scores.clone())  # a draft that is rolled back
    assert torch.equal(stack(drafted[:, : ids.shape[1]], scores.clone()), first)


def test_processors_are_batched_and_padding_invariant(tok):
    tokenizer, classes = tok
    stack = build_cjk_processors(classes)
    texts = ["员在工作，员在", "我爱北京，天安门广场真大", "好好"]
    rows = [char_ids(tokenizer, t) for t in texts]
    width = max(r.shape[1] for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = torch.cat([torch.cat([torch.full((1, width - r.shape[1]), pad), r], 1) for r in rows])
    scores = random_scores(classes, batch=len(texts))
    together = stack(batch, scores.clone())
    for i, row in enumerate(rows):
        assert torch.equal(together[i : i + 1], stack(row, scores[i : i + 1].clone()))


@pytest.mark.parametrize("assistant", [False, True])
def test_generate_applies_the_stacks_temperature_exactly_once(monkeypatch, assistant):
    """Seed 004's bug A, outside edge/cloud decoding: ``generate(do_sample=True, temperature=0.7,
    logits_processor=build_cjk_processors(tok))`` (with or without an assistant) divides by the temperature once per
    scored position: the stack holds no temperature of its own."""
    from genlab.trainers.ar import build_model

    tokenizer = default_tokenizer()
    model = build_model("nano", tokenizer, seed=0).eval()
    calls = []
    original = TemperatureLogitsWarper.__call__
    monkeypatch.setattr(TemperatureLogitsWarper, "__call__",
                        lambda self, ids, scores: calls.append(self.temperature) or original(self, ids, scores))
    prompt = tokenizer("今天", return_tensors="pt")
    extra = {"assistant_model": build_model("nano", tokenizer, seed=1).eval(), "num_assistant_tokens": 2} if assistant else {}
    torch.manual_seed(0)
    out = model.generate(**prompt, do_sample=True, temperature=0.7, max_new_tokens=3, min_new_tokens=3,
                         logits_processor=build_cjk_processors(tokenizer), **extra)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 3
    assert calls and set(calls) == {0.7}
    rules = (CJKRepetitionPenaltyLogitsProcessor, CJKAdjacentRepeatLogitsProcessor, CJKNoRepeatNGramLogitsProcessor,
             CJKPunctuationGateLogitsProcessor, RepetitionPenaltyLogitsProcessor)
    assert all(isinstance(p, rules) for p in build_cjk_processors(tokenizer))  # no temperature of its own
    if not assistant:
        assert len(calls) == 3  # one scored position per step, each divided once


def test_sentence_stopping_waits_for_min_new_tokens(tok):
    tokenizer, classes = tok
    prompt = char_ids(tokenizer, "今天")
    stop = SentenceStoppingCriteria(classes, prompt_length=prompt.shape[1], min_new_tokens=4)
    early = torch.cat([prompt, char_ids(tokenizer, "好。")], 1)
    assert stop(early).tolist() == [False]
    done = torch.cat([prompt, char_ids(tokenizer, "天气很好。")], 1)
    not_end = torch.cat([prompt, char_ids(tokenizer, "天气很好，")], 1)
    assert stop(torch.cat([done, not_end])).tolist() == [True, False]


def test_a_decimal_point_does_not_end_the_sentence(tok):
    """…增长了1032.5万元。: the ``.`` after a digit is a decimal point; the ``。`` ends the sentence."""
    tokenizer, classes = tok
    prompt = char_ids(tokenizer, "今天")
    stop = SentenceStoppingCriteria(classes, prompt.shape[1], min_new_tokens=1)
    text = "增长了1032."
    ids = torch.cat([prompt, torch.tensor([tokenizer.encode(text, add_special_tokens=False)])], 1)
    assert stop(ids).tolist() == [False]
    ended = torch.cat([prompt, torch.tensor([tokenizer.encode("增长了很多.", add_special_tokens=False)])], 1)
    assert stop(ended).tolist() == [True]


def test_bad_processor_arguments_raise():
    classes = TokenClasses.from_texts(["", "a", "中", "，"])
    with pytest.raises(ValueError, match="ngram_size"):
        CJKNoRepeatNGramLogitsProcessor(classes, 4)
    with pytest.raises(ValueError, match="penalty"):
        build_cjk_processors(classes, repetition_penalty=0.0)
    with pytest.raises(ValueError, match="n_sentences"):
        SentenceStoppingCriteria(classes, 0, 16, 0)


@pytest.fixture(scope="module")
def qwen():
    from genlab.qwen2_tokenizer import qwen2_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(qwen2_tokenizer_dir())
    return tokenizer, TokenClasses.from_tokenizer(tokenizer)


def encode(tokenizer, text):
    return torch.tensor([tokenizer.encode(text, add_special_tokens=False)])


def test_qwen2_ids_that_spell_an_identical_pair_are_banned(qwen):
    """哈哈, 谢谢, 好好 are single Qwen2 ids (183 such ids): banned after any history, never written."""
    tokenizer, classes = qwen
    ids = [encode(tokenizer, t)[0, 0].item() for t in ("哈哈", "谢谢", "好好")]
    out = CJKAdjacentRepeatLogitsProcessor(classes)(encode(tokenizer, "今天我们"), torch.zeros(1, len(tokenizer)))
    assert torch.isinf(out[0, ids]).all() and int(classes.inner_repeat.sum()) == 183


def test_qwen2_byte_fragments_are_characters(qwen):
    """' 真' is three byte-level ids (space+lead byte, two continuation bytes) and 龘 two: the history counts the
    split character, and the id that would complete 真 right after 真 is banned."""
    tokenizer, classes = qwen
    split = encode(tokenizer, "我们龘")
    assert split.shape[1] == 3 and classes.cjk_since_punctuation(split).tolist() == [3]
    assert classes.cjk_since_punctuation(split[:, :-1]).tolist() == [3]  # the lead fragment counts already
    zhen = encode(tokenizer, "我真 真")  # … 真, 'Ġç', 'ľ', 'Ł'
    history, last = zhen[:, :-1], zhen[0, -1].item()
    out = CJKAdjacentRepeatLogitsProcessor(classes)(history, torch.zeros(1, len(tokenizer)))
    assert out[0, last] == NEG_INF
    assert torch.isfinite(CJKAdjacentRepeatLogitsProcessor(classes)(encode(tokenizer, "我好 真")[:, :-1],
                                                                      torch.zeros(1, len(tokenizer)))[0, last])


def test_qwen2_mixed_ids_keep_their_characters(qwen):
    """，并 is one id: after it, 并 is penalised and 并… completes an n-gram; punctuation alone is never pushed."""
    tokenizer, classes = qwen
    ids = encode(tokenizer, "我们去，并")
    assert ids.shape[1] == 3
    bing, comma = encode(tokenizer, "并")[0, 0].item(), encode(tokenizer, "，")[0, 0].item()
    scores = torch.full((1, len(tokenizer)), 2.0)
    out = CJKRepetitionPenaltyLogitsProcessor(classes, 2.0)(ids, scores.clone())
    assert out[0, bing] == 1.0 and out[0, comma] == 2.0
    history = encode(tokenizer, "去，并且我去，并")  # stripped 去并且我去并: 去并 then 并且 again
    ngram = CJKNoRepeatNGramLogitsProcessor(classes, 3)(history, torch.zeros(1, len(tokenizer)))
    assert ngram[0, encode(tokenizer, "且")[0, 0].item()] == NEG_INF


def test_qwen2_ids_with_two_crowded_marks_never_pass_the_gate(qwen):
    """``::`` and ``、、`` write two marks with no character between: banned even after a long CJK run."""
    tokenizer, classes = qwen
    proc = CJKPunctuationGateLogitsProcessor(classes)
    out = proc(encode(tokenizer, "我爱北京天安门广场真大啊"), torch.zeros(1, len(tokenizer)))
    for text in ("::", "、、"):
        assert out[0, encode(tokenizer, text)[0, 0].item()] == NEG_INF
    assert out[0, encode(tokenizer, "，")[0, 0].item()] == 0


def test_a_generation_config_repetition_penalty_never_reaches_punctuation():
    """generate's own RepetitionPenaltyLogitsProcessor is replaced by the stack's neutral one: a huge
    ``repetition_penalty`` changes nothing, so punctuation already written is not pushed down."""
    from genlab.trainers.ar import build_model

    tokenizer = default_tokenizer()
    model = build_model("nano", tokenizer, seed=0).eval()
    prompt = tokenizer("今天，好。", return_tensors="pt")
    kwargs = dict(max_new_tokens=8, do_sample=False, logits_processor=build_cjk_processors(tokenizer),
                  output_scores=True, return_dict_in_generate=True)
    plain = model.generate(**prompt, **kwargs)
    pushed = model.generate(**prompt, **kwargs, repetition_penalty=50.0)
    assert torch.equal(plain.sequences, pushed.sequences)
    assert all(torch.equal(a, b) for a, b in zip(plain.scores, pushed.scores))
