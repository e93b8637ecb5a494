"""`genlab bench planner`'s decomposition of keyword coverage: the planner's plan against the oracle plan, and the
planner-free plan (u itself) against it."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from genlab.bench import planner as bench_planner
from genlab.bench.planner import NEW_TOKENS, coverage_figures, decode_ratio, plan_overlap, split_share
from genlab.configuration_planner import CONCEPT_EOS, NUM_CONCEPT_SPECIALS
from genlab.tokenization import default_tokenizer
from genlab.trainers.planner_estep import make_proposer

from test_planner_copy import PLANS, make_copy_model
from test_planner_train import batch_of, planner_for


def test_plan_overlap_counts_the_content_concepts_of_each_type_once():
    plans = torch.tensor([[[5, 6, 7, 6], [3, 0, 0, 0]],
                          [[5, CONCEPT_EOS, 7, 0], [9, 9, 0, 0]]])  # (batch 2, types 2, L 4)
    oracle = torch.tensor([[[6, 7, 8, 9], [4, 0, 0, 0]],
                           [[5, 7, 0, 0], [9, 0, 0, 0]]])
    # row 0: {5,6,7} vs {6,7,8,9} and {3} vs {4}: 2 shared of 4 and 5; row 1: {5} vs {5,7} and {9} vs {9}: 2 of 2 and 3
    assert plan_overlap(plans, oracle) == (4, 6, 8)
    # a word separator (here 7) is no concept: {5,6} vs {6,8,9}, {3} vs {4}; {5} vs {5}, {9} vs {9}
    assert plan_overlap(plans, oracle, ignore=7) == (3, 5, 6)


@torch.no_grad()
def test_a_planner_that_writes_the_oracle_plan_loses_nothing_to_planning():
    tokenizer = default_tokenizer()
    model = planner_for(tokenizer, concept_types=["keywords"], concept_vocab_sizes=[len(tokenizer)],
                        concept_max_lengths=[6], text_concept_types=["keywords"], proposer="keywords").eval()
    batch = batch_of(tokenizer, ["天气、公园、今天、会议", "代表、发言、北京"], ["今天天气很好。", "代表们发言踊跃。"])
    ar = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, intermediate_size=64)).eval()
    oracle = make_proposer(model, tokenizer)(batch)[:, -1]
    model.plan = lambda *args, **kwargs: oracle  # the planner now writes exactly the oracle's plan
    figures = coverage_figures(model, ar, tokenizer, [batch], "keywords", new_tokens=8)[0]
    assert figures["plan_precision"] == figures["plan_recall"] == 1.0
    assert figures["keyword_coverage"] == pytest.approx(figures["oracle_keyword_coverage"])
    assert figures["keywords_per_example"] == 2.0  # 天气, 今天 / 代表, 发言
    # u as the plan, cut to 6: 天气公园今会 (oracle 天气今: 3 of 6) / 代表发言北京 (oracle 代表发言: 4 of 6)
    assert figures["u_plan_recall"] == 1.0 and figures["u_plan_precision"] == pytest.approx(7 / 12)
    for name in ("keyword_coverage", "ar_keyword_coverage", "oracle_keyword_coverage", "u_plan_keyword_coverage"):
        # a covered text is its free text continued where </s> was refused: it can only gain keywords
        assert figures[f"covered_{name}"] >= figures[name]
    for name in ("planner", "ar", "oracle", "u_plan"):
        assert figures[f"{name}_covered_chars"] >= figures[f"{name}_chars"] > 0
    assert figures["reference_chars"] == pytest.approx((7 + 8) / 2)  # 今天天气很好。 / 代表们发言踊跃。
    shorter = oracle.clone()
    shorter[0, 0, int((oracle[0, 0] >= NUM_CONCEPT_SPECIALS).sum()) - 1] = 0  # row 0 loses its last concept
    model.plan = lambda *args, **kwargs: shorter
    figures = coverage_figures(model, ar, tokenizer, [batch], "keywords", new_tokens=8)[0]
    total = int((oracle >= NUM_CONCEPT_SPECIALS).sum())
    assert figures["plan_precision"] == 1.0 and figures["plan_recall"] == pytest.approx((total - 1) / total)


def test_split_share_counts_keywords_whose_characters_are_there_but_not_the_word():
    keywords = [["天气", "今天", "公园"], ["发言"]]
    texts = ["今天气好", "言发"]  # 天气 inside 今天气: whole; 公园: a character missing; 发言: split
    assert split_share(keywords, texts) == pytest.approx(1 / 4)


@torch.no_grad()
def test_decode_ratio_times_both_sides_writing_every_token_with_eos_held_back(monkeypatch):
    """The two timed calls each write NEW_TOKENS tokens per row: the executor with </s> its favourite token, the
    plain Qwen2 with the executor's </s> as its own (one processor holds it back on either side)."""
    model = make_copy_model(executor_checklist=True)
    eos = model.config.eos_token_id
    favourite = torch.zeros(1, 1, model.config.vocab_size)
    favourite[..., eos] = 10.0
    model.text_logits = lambda hidden, *rest: favourite.expand(hidden.shape[0], hidden.shape[1], -1)
    outputs = []
    monkeypatch.setattr(bench_planner, "paired_seconds",
                        lambda first, second, repeats: (outputs.extend([first(), second()]), (1.0, 2.0, 2.0))[1])
    assert decode_ratio(model, PLANS, batch=2, repeats=1) == (2 * NEW_TOKENS, NEW_TOKENS, 2.0)
    executed, generated = outputs
    assert executed.shape == (2, NEW_TOKENS) and not (executed == eos).any()
    prefix = model.executor_prefix(PLANS[:1]).valid.shape[1]
    assert generated.shape == (2, prefix + NEW_TOKENS)
