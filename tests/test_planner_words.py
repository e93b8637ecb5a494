"""Word plans (``plan_separator_id``): the keywords proposer keeps u's words whole on hand-made pairs, the executor
never copies the separator, no-repeat plans let it repeat, and the settings that cannot hold are refused."""

import pytest
import torch

from genlab.configuration_planner import CONCEPT_PAD, NUM_CONCEPT_SPECIALS, PlannerExecutorConfig
from genlab.pointer_generator import NOT_COPYABLE
from genlab.tokenization import default_tokenizer
from genlab.trainers import planner as tp
from genlab.trainers import planner_estep as te

from test_planner_train import batch_of, keyword_planner

S = NUM_CONCEPT_SPECIALS


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


def word_planner(tokenizer, **overrides):
    return keyword_planner(tokenizer, plan_separator_id=tokenizer.convert_tokens_to_ids("、"), **overrides)


def spelt(tokenizer, plan: list[int]) -> str:
    return "".join(tokenizer.convert_ids_to_tokens([c - S for c in plan if c != CONCEPT_PAD]))


def test_word_plans_are_the_words_of_u_that_y_holds_whole_in_u_order(tokenizer):
    model = word_planner(tokenizer, concept_max_lengths=[12])
    proposer = te.KeywordProposer(model.config, tokenizer)
    # 毛 is a distractor; 法 comes again in 法律 (a character plan would drop it); 规则's characters are in y but
    # not as the word
    u = "行政处罚法、毛、属于、法律、规则"
    y = "这一处罚属于《行政处罚法》所列的法律规定，则有。"
    plans = proposer(batch_of(tokenizer, [u], [y]))  # (1, granularities [6, 12], 1 type, 12)
    assert proposer.granularities == [6, 12]
    assert spelt(tokenizer, plans[0, 1, 0].tolist()) == "行政处罚法、属于、法律"
    assert spelt(tokenizer, plans[0, 0, 0].tolist()) == "行政处罚法"  # cut to 6, never ending on the separator
    assert plans[0, 0, 0, 5:].tolist() == [CONCEPT_PAD] * 7


def test_the_separator_is_no_slot_to_copy_and_may_repeat_in_no_repeat_plans(tokenizer):
    model = word_planner(tokenizer, concept_max_lengths=[12], executor_copy=True).eval()
    separator = model.config.plan_separator_id
    word = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    plan = S + torch.tensor([[word("法律") + [separator] + word("属于")]])  # (batch 1, types 1, 5)
    copy_tokens = model.executor_prefix(plan).copy_tokens[0].tolist()
    assert copy_tokens[-5:] == word("法律") + [NOT_COPYABLE] + word("属于")
    favourite = torch.full((model.max_type_vocab,), -50.0)
    favourite[S + separator] = 50.0  # a planner that wants the separator at every slot
    scores = model.planner_logits
    model.planner_logits = lambda hidden, u: scores(hidden, u) + favourite
    planned = model.plan(torch.tensor([word(u) for u in ["法律、属于"]]), no_repeat_concepts=True)
    assert (planned[0, 0] == S + separator).all()


def test_word_plans_need_text_concepts_and_the_keywords_proposer(tokenizer):
    with pytest.raises(ValueError, match="plan_separator_id separates text-concept words"):
        PlannerExecutorConfig(vocab_size=100, concept_types=["keywords"], concept_vocab_sizes=[64],
                              concept_max_lengths=[4], plan_separator_id=7)
    with pytest.raises(ValueError, match="--plan-words shapes the keywords proposer's plans"):
        tp.PlannerTrainConfig(run_dir="unused", proposer="rare_characters", plan_words=True)
