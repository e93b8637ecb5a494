"""Plans from u's words (``plan(input_words=True)``, ``WordChoiceLogitsProcessor``) and the plan-side
``logits_processor`` hook: the trie of candidate words on hand-made ids, u's words from real text, a planner that
wants to stop at once made to plan every word of u by a bias on ``<eos>``, and the bench choosing that bias."""

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList, SequenceBiasLogitsProcessor

from genlab.bench.planner import summed_nll, tune_eos_bias
from genlab.configuration_planner import CONCEPT_EOS, CONCEPT_PAD, NUM_CONCEPT_SPECIALS
from genlab.generation_planner import WordChoiceLogitsProcessor
from genlab.tokenization import default_tokenizer

from test_planner_train import batch_of, keyword_planner

S, SEP = NUM_CONCEPT_SPECIALS, 5


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


def test_word_choices_follow_the_trie_of_words_not_yet_named():
    choices = WordChoiceLogitsProcessor([[(10, 11), (10,), (20, 21, 22)], None], separator=SEP)
    assert choices.allowed(0, []) == [CONCEPT_EOS, 10, 20]  # a first concept, or end
    assert choices.allowed(0, [10]) == [CONCEPT_EOS, SEP, 11]  # 10 is a word, 10 11 goes on
    assert choices.allowed(0, [10, 11]) == [CONCEPT_EOS, SEP]
    assert choices.allowed(0, [10, 11, SEP]) == [CONCEPT_EOS, 10, 20]  # 10 11 is named; 10 is not yet
    assert choices.allowed(0, [10, 11, SEP, 10]) == [CONCEPT_EOS, SEP]  # not 11 again
    assert choices.allowed(0, [20]) == [21]  # inside a word: only its continuation
    assert choices.allowed(0, [20, 21, 22, SEP, 10, 11, SEP, 10]) == [CONCEPT_EOS]  # no word left to separate
    assert choices.allowed(0, [10, CONCEPT_EOS]) == [CONCEPT_EOS]
    assert choices.allowed(1, [3, 4]) is None  # a free row


def test_word_choices_mask_every_other_concept_and_check_their_rows():
    choices = WordChoiceLogitsProcessor([[(10, 11)], None], separator=SEP)
    scores = torch.randn(2, 30)
    out = choices(torch.tensor([[10], [7]]), scores)
    assert out[0].argmax() == 11 and (out[0] > -1e30).sum() == 1
    assert torch.equal(out[1], scores[1])
    with pytest.raises(ValueError, match="2 rows"):
        choices(torch.zeros(3, 1, dtype=torch.long), torch.randn(3, 30))


def test_the_candidate_words_are_u_split_at_the_separator_once_each(tokenizer):
    model = keyword_planner(tokenizer, plan_separator_id=tokenizer.convert_tokens_to_ids("、"))
    batch = batch_of(tokenizer, ["法律、属于、法律、法", "毛"], ["", ""])
    words = model.input_word_choices(batch["input_ids"], batch["attention_mask"]).words
    ids = lambda text: tuple(t + S for t in tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert words == [[ids("法律"), ids("属于"), ids("法")], [ids("毛")]]  # padding is no word
    with pytest.raises(ValueError, match="plan_separator_id"):
        keyword_planner(tokenizer).input_word_choices(batch["input_ids"])


class Recorder(LogitsProcessor):
    def __init__(self):
        self.widths = []

    def __call__(self, input_ids, scores):
        self.widths.append(tuple(input_ids.shape))
        return scores


def quitting_planner(tokenizer):
    """A word-plan planner whose ``<eos>`` outscores every concept by 20 nats: it wants to stop at once."""
    model = keyword_planner(tokenizer, plan_separator_id=tokenizer.convert_tokens_to_ids("、"),
                            concept_max_lengths=[12]).eval()
    quitter = torch.zeros(model.max_type_vocab)
    quitter[CONCEPT_EOS] = 20.0
    scores = model.planner_logits
    model.planner_logits = lambda hidden, u: scores(hidden, u) + quitter
    return model


@torch.no_grad()
def test_a_planner_that_stops_at_once_plans_every_word_of_u_when_eos_is_biased_away(tokenizer):
    model = quitting_planner(tokenizer)
    batch = batch_of(tokenizer, ["法律、属于、毛"], [""])
    assert (model.plan(batch["input_ids"], input_words=True) == CONCEPT_PAD).all()  # the empty plan
    recorder = Recorder()
    keep_going = LogitsProcessorList([SequenceBiasLogitsProcessor({(CONCEPT_EOS,): -1000.0}), recorder])
    plan = model.plan(batch["input_ids"], input_words=True, logits_processor=keep_going)[0, 0]
    spelt = "".join(tokenizer.convert_ids_to_tokens([c - S for c in plan.tolist() if c != CONCEPT_PAD]))
    assert sorted(spelt.split("、")) == sorted(["法律", "属于", "毛"])  # every word, whole, once
    assert recorder.widths[:3] == [(1, 0), (1, 1), (1, 2)]  # each type's concepts so far are its input_ids
    generated = model.generate(batch["input_ids"], plan_input_words=True, plan_logits_processor=keep_going,
                               return_concepts=True, max_new_tokens=4)
    assert torch.equal(generated.concept_ids[0, 0], plan)


@torch.no_grad()
def test_the_bench_keeps_the_eos_bias_whose_plans_explain_y_best(tokenizer):
    model = quitting_planner(tokenizer)
    batch = batch_of(tokenizer, ["法律、属于、毛", "公园、孩子"], ["这属于法律。", "孩子在公园。"])
    bias, sweep = tune_eos_bias(model, [batch], [0.0, -1000.0], {"input_words": True})
    tokens = int(batch["text_attention_mask"].sum())
    empty = summed_nll(model, batch)(model.plan(batch["input_ids"], batch["attention_mask"], input_words=True))
    assert sweep["0.0"] == pytest.approx(empty / tokens)
    assert sweep["0.0"] != sweep["-1000.0"]  # the bias reached the plans
    assert bias == min([0.0, -1000.0], key=lambda b: sweep[str(b)])
