"""Hard-EM training of the planner–executor (SPEC P4–P7): E-step, z* cache, curriculum, monitors, resume."""

import json
import logging
import math

import datasets
import pytest
import torch

from genlab.configuration_planner import CONCEPT_MASK, CONCEPT_PAD
from genlab.data import split_of
from genlab.tokenization import default_tokenizer
from genlab.trainers import planner as tp
from genlab.trainers import planner_data as td
from genlab.trainers import planner_estep as te
from genlab.trainers import planner_monitors as mon

from test_planner_model import make_model

NEWS = ["今天天气很好。我们去公园散步，看见很多孩子。", "北京召开会议。会议讨论了经济发展问题！代表们发言踊跃。",
        "这本书写得很好。", "质量太差，退货了。"]


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


def corpus_split() -> datasets.Dataset:
    rows = {"text": [], "source": [], "label": [], "doc": [], "sent": []}
    for doc, para in enumerate(NEWS[:2]):
        for sent, text in enumerate(s + "。" for s in para.replace("！", "。").split("。") if s):
            for key, value in zip(rows, (text, "news", None, doc, sent)):
                rows[key].append(value)
    for doc, (text, label) in enumerate(zip(NEWS[2:], ("pos", "neg"))):
        for key, value in zip(rows, (text, "reviews", label, doc, 0)):
            rows[key].append(value)
    return datasets.Dataset.from_dict(rows)


def planner_for(tokenizer, **overrides):
    stack = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64)
    fields = dict(vocab_size=len(tokenizer), concept_vocab_sizes=[64, 16], concept_max_lengths=[4, 3],
                  max_input_length=48, max_text_length=48, planner=stack, executor=stack, estep_top_k=2,
                  estep_warmup_steps=0, monitor_steps=2, monitor_batch_size=4, estep_refresh_steps=2)
    return make_model(**{**fields, **overrides})


# -- data, proposer, curriculum ------------------------------------------------------------------------------------------
def test_pairs_follow_paragraphs_and_reviews():
    us, ys = td.pair_texts(corpus_split(), opening_chars=2)
    assert ("今天天气很好。", "我们去公园散步，看见很多孩子。") in list(zip(us, ys))
    assert ("北京召开会议。", "会议讨论了经济发展问题。") in list(zip(us, ys))
    assert ("好评：这本", "这本书写得很好。") in list(zip(us, ys)) and ("差评：质量", "质量太差，退货了。") in list(zip(us, ys))
    assert len(us) == 1 + 2 + 2  # no pair across paragraphs


def test_proposer_keeps_the_rarest_characters_in_order_and_clause_lengths(tokenizer):
    model = planner_for(tokenizer)
    proposer = te.RareCharacterProposer(model.config, tokenizer)
    text = "我们去公园散步，看见很多孩子。"
    y = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]])
    plans = proposer({"text_ids": y, "text_attention_mask": torch.ones_like(y)})  # (1, granularities, types, L)
    assert plans.shape[1:] == (len(proposer.granularities), 2, 4)
    ids = y[0, :-1]
    ordinary = ids[ids >= te.FIRST_ORDINARY_ID]
    rarest = set(ordinary.topk(4).values.tolist())
    expected = [3 + int(i) % 64 for i in ids if int(i) in rarest]
    assert plans[0, -1, 0].tolist() == expected
    assert plans[0, -1, 1].tolist() == [3 + 6 // 4, 3 + 6 // 4, CONCEPT_PAD, CONCEPT_PAD]  # two clauses of 6 chars


def keyword_planner(tokenizer, **overrides):
    stack = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64)
    fields = dict(vocab_size=len(tokenizer), concept_types=["keywords"], concept_vocab_sizes=[len(tokenizer)],
                  concept_max_lengths=[6], text_concept_types=["keywords"], proposer="keywords",
                  max_input_length=48, max_text_length=48, planner=stack, executor=stack, estep_top_k=2,
                  estep_warmup_steps=0)
    return make_model(**{**fields, **overrides})


def test_keyword_proposer_plans_the_characters_y_shares_with_u_in_u_order(tokenizer):
    model = keyword_planner(tokenizer)
    proposer = te.KeywordProposer(model.config, tokenizer)
    u = "孩子、公园、散步、汽车、公园"  # 汽车 is a distractor, 公园 comes twice
    y = "孩子们在公园里散步。"
    batch = batch_of(tokenizer, [u], [y])
    plans = proposer(batch)  # (1, granularities [3, 6], 1 type, 6)
    assert proposer.granularities == [3, 6]
    chars = lambda plan: "".join(tokenizer.convert_ids_to_tokens([i - 3 for i in plan if i >= 3]))  # noqa: E731
    assert chars(plans[0, 1, 0].tolist()) == "孩子公园散步"
    assert chars(plans[0, 0, 0].tolist()) == "孩子公"
    assert plans[0, 0, 0, 3:].tolist() == [CONCEPT_PAD] * 3


def test_text_concepts_are_the_text_embeddings_and_store_no_rows_of_their_own(tokenizer):
    model = keyword_planner(tokenizer)
    hidden = model.config.executor["hidden_size"]
    assert model.executor_prefix_embed.weight.shape == (1 + 1 + 3, hidden)  # BOS, SEP, 3 specials
    assert model.planner_head.weight.shape == (3, hidden)
    token = tokenizer.convert_tokens_to_ids("园")
    z = torch.tensor([[[3 + token, 1, 0, 0, 0, 0]]])
    prefix = model.executor_prefix(z)
    slot = model.executor_type_embed.weight[1]
    torch.testing.assert_close(prefix.embeds[0, -1], model.executor.embed_tokens.weight[token] + slot)
    u = torch.tensor([tokenizer("公园", add_special_tokens=False)["input_ids"]])
    out = model.planner_forward(u, None, z)
    out.loss.backward()  # the planner's score of a text concept reaches its own text embedding of that token
    assert model.planner.embed_tokens.weight.grad[token].abs().sum() > 0
    with pytest.raises(ValueError, match="concept_vocab_sizes = vocab_size"):
        keyword_planner(tokenizer, concept_vocab_sizes=[64])


def test_shared_text_embeddings_are_one_table_after_save_and_load(tokenizer, tmp_path):
    model = keyword_planner(tokenizer, share_text_embeddings=True)
    assert model.planner.embed_tokens.weight is model.executor.embed_tokens.weight
    separate = sum(p.numel() for p in keyword_planner(tokenizer).parameters())
    assert separate - sum(p.numel() for p in model.parameters()) == model.executor.embed_tokens.weight.numel()
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.planner.embed_tokens.weight is loaded.executor.embed_tokens.weight
    torch.testing.assert_close(loaded.planner.embed_tokens.weight, model.planner.embed_tokens.weight)


def test_likelihood_selection_never_trades_the_executor_evidence_for_the_prior(tokenizer):
    config = keyword_planner(tokenizer, estep_selection="likelihood").config
    scores = torch.tensor([[-10.0, -3.0, float("-inf")], [-5.0, -5.0, -9.0]])
    likelihood = torch.tensor([[-2.0, -3.0, -1.0], [-4.0, -4.0, -1.0]])
    # row 0: the duplicate (−inf) cannot win; column 0 has the best likelihood though column 1 the best S
    # row 1: the best likelihood (column 2) wins over better S; a tie would be broken by S
    assert te.select(config, scores, likelihood).tolist() == [0, 2]
    config.estep_selection = "joint"
    assert te.select(config, scores, likelihood).tolist() == [1, 0]
    tie = torch.tensor([[-4.0, -4.0, -6.0]])
    config.estep_selection = "likelihood"
    assert te.select(config, torch.tensor([[-9.0, -5.0, -1.0]]), tie).tolist() == [1]


def test_curriculum_is_a_pure_function_of_step_and_sampler_respects_it():
    assert [td.curriculum_length(s, 10, 50, 4) for s in (0, 2, 4, 9)] == [10, 30, 50, 50]
    lengths = [5, 40, 12, 8, 60, 9]
    sampler = td.CurriculumSampler(lengths, batch_size=2, steps=6, start=10, ramp_steps=4, seed=0)
    order = list(sampler)
    assert order == list(td.CurriculumSampler(lengths, 2, 6, 10, 4, 0))  # deterministic
    first_step = order[:2]
    assert all(lengths[i] <= 10 for i in first_step)


# -- E-step and cache ---------------------------------------------------------------------------------------------------
def batch_of(tokenizer, us, ys):
    features = [{"u_ids": tokenizer(u, add_special_tokens=False)["input_ids"],
                 "y_ids": tokenizer(y, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id], "index": i}
                for i, (u, y) in enumerate(zip(us, ys))]
    return td.collate(features)


@pytest.mark.parametrize("beta", [1.0, 0.25])
@torch.no_grad()
def test_estep_returns_the_argmax_of_s_over_its_candidates(tokenizer, beta):
    model = planner_for(tokenizer, estep_prior_weight=beta)
    us, ys = td.pair_texts(corpus_split())
    batch = batch_of(tokenizer, us, ys)
    result = te.estep(model, te.RareCharacterProposer(model.config, tokenizer),
                      {k: v for k, v in batch.items() if k != "index"}, step=10, generator=torch.Generator().manual_seed(0))
    best, scores, candidates, sources = result.plans, result.scores, result.candidates, result.sources
    assert candidates.shape[1] == 2 + 1 + 2  # proposer granularities, greedy plan, samples
    assert sources == ["proposer"] * 2 + ["planner_greedy"] + ["planner_sample"] * 2
    for row in range(len(ys)):  # recompute S(z) one candidate at a time (no grad: scores only)
        one = {k: v[row : row + 1] for k, v in batch.items()}
        s = [float(model.executor_forward(z[None], one["text_ids"], one["text_attention_mask"]).log_prob
                   + beta * model.planner_forward(one["input_ids"], one["attention_mask"], z[None]).log_prob)
             for z in candidates[row]]
        finite = torch.isfinite(scores[row])
        torch.testing.assert_close(scores[row][finite], torch.tensor(s)[finite], atol=1e-3, rtol=1e-4)
        assert torch.equal(best[row], candidates[row, int(torch.tensor(s).masked_fill(~finite, -1e9).argmax())])
        # z*'s own log p(y|z*) and log p(z*|u) come back with it (the gain rule reads them)
        likelihood = model.executor_forward(best[row][None], one["text_ids"], one["text_attention_mask"]).log_prob
        prior = model.planner_forward(one["input_ids"], one["attention_mask"], best[row][None]).log_prob
        torch.testing.assert_close(result.likelihood[row : row + 1], likelihood, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(result.prior[row : row + 1], prior, atol=1e-3, rtol=1e-4)


@torch.no_grad()
def test_estep_beam_source_adds_the_diverse_beam_plans(tokenizer):
    """planner_beam: estep_top_k plans of the diverse beam search join the candidates, the first one the
    greedy plan (scored once: the later copy is a −inf duplicate)."""
    model = planner_for(tokenizer, estep_sources=["proposer", "planner_greedy", "planner_beam"],
                        estep_diversity_penalty=3.0)
    us, ys = td.pair_texts(corpus_split())
    batch = {k: v for k, v in batch_of(tokenizer, us, ys).items() if k != "index"}
    result = te.estep(model, te.RareCharacterProposer(model.config, tokenizer), batch, step=10)
    assert result.sources == ["proposer"] * 2 + ["planner_greedy"] + ["planner_beam"] * 2
    beams = model.plan(batch["input_ids"], batch["attention_mask"], num_beam_groups=2, diversity_penalty=3.0)
    assert torch.equal(result.candidates[:, 3:], beams.view(len(ys), 2, *beams.shape[1:]))
    assert torch.equal(result.candidates[:, 3], result.candidates[:, 2]) and (result.scores[:, 3] == float("-inf")).all()
    assert set(te.win_rates(result)) <= {"win_proposer", "win_planner_greedy", "win_planner_beam"}


def test_estep_input_source_scores_the_plan_of_u_itself_from_the_warm_up_on(tokenizer):
    """input: the keywords proposer's plan of u (every keyword, distractors included) is a candidate, parameter-free
    like the proposer, so it competes before the planner's plans do; it needs the keywords proposer."""
    model = keyword_planner(tokenizer, estep_sources=["proposer", "planner_greedy", "input"], estep_warmup_steps=5,
                            concept_max_lengths=[12])
    proposer = te.KeywordProposer(model.config, tokenizer)
    batch = {k: v for k, v in batch_of(tokenizer, ["孩子、公园、汽车"], ["孩子们在公园里。"]).items() if k != "index"}
    result = te.estep(model, proposer, batch, step=0)  # warm-up: no planner plan
    assert result.sources == ["proposer"] * 2 + ["input"]
    spelt = "".join(tokenizer.convert_ids_to_tokens([c - 3 for c in result.candidates[0, 2, 0].tolist() if c >= 3]))
    assert spelt == "孩子公园汽车"
    assert te.estep(model, proposer, batch, step=5).sources == ["proposer"] * 2 + ["input", "planner_greedy"]
    with pytest.raises(ValueError, match="the 'input' E-step source is the keywords proposer's plan of u"):
        planner_for(tokenizer, estep_sources=["proposer", "input"])


def test_concept_cache_staleness_and_save_load(tmp_path):
    cache = te.ZStarStore(4, 2, 3)
    index = torch.tensor([1, 3])
    assert cache.stale(index, step=0, every=5).all()
    cache.update(index, torch.full((2, 2, 3), 7), step=10)
    assert not cache.stale(index, step=14, every=5).any() and cache.stale(index, step=15, every=5).all()
    cache.save(tmp_path)
    other = te.ZStarStore(4, 2, 3)
    assert other.load(tmp_path) and torch.equal(other.plans, cache.plans) and torch.equal(other.step, cache.step)


# -- monitors on constructed cases (P6) -----------------------------------------------------------------------------------
Z = torch.tensor([[[3, 4, 0], [5, 0, 0]], [[6, 0, 0], [7, 8, 0]], [[9, 10, 11], [3, 0, 0]]])


def test_delta_nll_is_zero_for_an_executor_that_ignores_z_and_positive_otherwise():
    ignores = mon.delta_nll(lambda z, embeds: torch.tensor(2.5), Z, [20, 10])
    assert ignores == {"delta_nll_shuffle": 0.0, "delta_nll_mask": 0.0, "delta_nll_random": 0.0}
    reads = mon.delta_nll(lambda z, embeds: (z != Z).float().sum(), Z, [20, 10], torch.Generator().manual_seed(0))
    assert reads["delta_nll_shuffle"] > 0 and reads["delta_nll_mask"] == 10.0  # all 10 content slots changed
    # A soft plan's embeddings move with its ids under the shuffle; the other corruptions are read as plain ids.
    embeds = torch.arange(3.0)[:, None, None, None].expand(3, 2, 3, 1)  # example i's embeddings are all i
    seen = []
    mon.delta_nll(lambda z, e: seen.append(None if e is None else e[:, 0, 0, 0].tolist()) or 0.0, Z, [20, 10],
                  concept_embeds=embeds)
    assert seen == [[0.0, 1.0, 2.0], [2.0, 0.0, 1.0], None, None]  # base, shuffle (rolled by one), mask, random
    masked = mon.corrupt_concepts(Z, "mask", [20, 10])
    assert torch.equal(masked == CONCEPT_MASK, Z != CONCEPT_PAD)


def test_top1_margin_flip_rate_edit_distance_and_staleness():
    scores = torch.tensor([[5.0, 3.0, -math.inf], [1.0, 1.0, 0.0], [2.0, -math.inf, -math.inf]])
    assert float(mon.top1_margin(scores)) == pytest.approx(1.0)  # (2 + 0) / 2; a lone candidate is skipped
    changed = Z.roll(1, 0)
    assert float(mon.flip_rate(Z, changed)) == 1.0 and float(mon.flip_rate(Z, Z.clone())) == 0.0
    a = torch.tensor([[[3, 4, 5], [3, 4, 0]]])
    b = torch.tensor([[[3, 5, 0], [6, 7, 8]]])
    assert mon.edit_distance(a, b).tolist() == [1 + 3]
    assert float(mon.staleness_gap(torch.tensor([3.0, 5.0]), torch.tensor([1.0, 5.0]))) == 1.0


def test_planner_entropy_grad_norm_and_position_buckets():
    logits = torch.zeros(2, 1, 3, 8)
    counted = torch.ones(2, 1, 3, dtype=torch.bool)
    entropy, max_prob = mon.planner_entropy(logits, counted)
    assert float(entropy) == pytest.approx(math.log(8)) and float(max_prob) == pytest.approx(1 / 8)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    assert float(mon.grad_norm([p])) == 5.0
    nll = torch.arange(6.0).expand(2, 6)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 4:] = False
    buckets = mon.nll_by_position(nll, valid, [0, 2, 4])
    assert {k: float(v) for k, v in buckets.items()} == {"nll_pos_0_2": 0.5, "nll_pos_2_4": 2.5, "nll_pos_4_end": 4.5}


@pytest.mark.parametrize("readings,rule", [
    ({"monitor/delta_nll_shuffle": 0.001}, "delta_nll_near_zero"),
    ({"monitor/top1_margin": 0.01, "monitor/flip_rate": 0.9}, "margin_near_zero_and_flips_high"),
    ({"monitor/delta_nll_shuffle": 0.5}, "delta_nll_falling"),  # below half the healthy peak of 2.0
    ({"monitor/top1_margin": 50.0}, "margin_huge"),
    ({"monitor/flip_rate": 0.0, "monitor/planner_entropy": 0.01}, "locked_in"),  # after flips of 0.6
    ({"monitor/win_planner_greedy": 0.7, "monitor/win_planner_sample": 0.25}, "planner_plans_win"),
    ({"monitor/staleness_gap": 5.0}, "staleness_gap_large"),
    ({"monitor/soft_hard_cosine": 0.1}, "soft_hard_misaligned"),
    ({"monitor/planner_grad_norm": 0.0}, "planner_grad_vanishing"),
    ({"monitor/planner_grad_norm": 1e4}, "planner_grad_exploding"),
])
def test_each_abnormal_pattern_logs_a_warning_naming_its_action(readings, rule, caplog):
    callback = mon.PlannerMonitorCallback(every=1, vocab_sizes=[20, 10], patience=2, soft_path=True)
    healthy = {"monitor/delta_nll_shuffle": 2.0, "monitor/top1_margin": 3.0, "monitor/flip_rate": 0.6,
               "monitor/planner_entropy": 1.5, "monitor/staleness_gap": 0.1, "monitor/soft_hard_cosine": 0.9,
               "monitor/planner_grad_norm": 1.0, "monitor/win_proposer": 0.8, "monitor/win_planner_greedy": 0.2,
               "monitor/win_planner_sample": 0.0}
    callback.record(healthy)
    assert callback.check(step=10) == []
    callback.record(readings)
    with caplog.at_level(logging.WARNING, logger="genlab.planner"):
        assert callback.check(step=11) == []  # patience 2: one abnormal reading is not a streak
        fired = callback.check(step=12)
    assert rule in fired and len(fired) <= 2  # ΔNLL ≈ 0 is also ΔNLL fallen from its peak
    action = next(r.action for r in mon.RULES if r.name == rule)
    assert rule in caplog.text and action in caplog.text
    assert callback.pop_pending()["monitor/warnings"] == len(fired)


def test_no_rule_is_read_during_the_grace_steps_nor_soft_rules_under_hard_em():
    callback = mon.PlannerMonitorCallback(every=1, vocab_sizes=[20], patience=1, grace_steps=100)
    callback.record({"monitor/delta_nll_shuffle": 0.0, "monitor/soft_hard_cosine": 0.0})
    assert callback.check(step=50) == [] and callback.warnings == []  # the executor is still learning to read z
    assert callback.check(step=100) == ["delta_nll_near_zero"]  # soft_hard_misaligned: no soft path here


# -- the trainer end to end, and resume --------------------------------------------------------------------------------
def make_trainer(tokenizer, tmp_path, max_steps, resume_cache=None, **overrides):
    from transformers import TrainingArguments

    model = planner_for(tokenizer, **overrides).train()
    pairs = td.build_pairs(corpus_split(), tokenizer, 48, 48)
    cache = te.ZStarStore(len(pairs), 2, 4)
    if resume_cache:
        cache.load(resume_cache)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=2,
                             learning_rate=1e-3, save_steps=2, logging_steps=2, report_to=[], seed=0, data_seed=0,
                             use_cpu=True, remove_unused_columns=False, dataloader_num_workers=0,
                             lr_scheduler_type="constant")
    trainer = tp.PlannerExecutorTrainer(model=model, args=args, train_dataset=pairs, data_collator=td.collate,
                                        proposer=te.RareCharacterProposer(model.config, tokenizer), store=cache,
                                        curriculum_start=10, curriculum_steps=2)
    return trainer, cache


def test_training_logs_losses_and_monitors_and_resume_reuses_the_z_cache(tokenizer, tmp_path):
    trainer, cache = make_trainer(tokenizer, tmp_path / "a", max_steps=4)
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"executor_loss", "planner_loss", "monitor/delta_nll_shuffle", "monitor/top1_margin",
            "monitor/flip_rate", "monitor/staleness_gap", "monitor/planner_entropy", "monitor/planner_max_prob",
            "monitor/soft_hard_cosine", "monitor/planner_grad_norm", "monitor/nll_pos_0_16"} <= logged
    assert (tmp_path / "a" / "checkpoint-2" / te.CACHE_FILE).is_file()
    assert (cache.step >= 0).all()

    checkpoint = tmp_path / "a" / "checkpoint-2"
    resumed, resumed_cache = make_trainer(tokenizer, tmp_path / "b", max_steps=4, resume_cache=checkpoint)
    assert (resumed_cache.step >= 0).any()
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert torch.equal(resumed_cache.plans, cache.plans) and torch.equal(resumed_cache.step, cache.step)
    final = [e["loss"] for e in trainer.state.log_history if "loss" in e][-1]
    assert [e["loss"] for e in resumed.state.log_history if "loss" in e][-1] == pytest.approx(final, rel=1e-4)


@pytest.mark.parametrize("gradient", ["straight_through", "soft_mixture"])
def test_relaxed_training_runs_without_an_estep_and_monitors_its_own_plans(tokenizer, tmp_path, gradient):
    trainer, cache = make_trainer(tokenizer, tmp_path, max_steps=4, concept_gradient=gradient)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n.startswith("planner.")}
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"executor_loss", "monitor/delta_nll_shuffle", "monitor/planner_entropy", "monitor/soft_hard_cosine",
            "monitor/planner_grad_norm"} <= logged
    assert "planner_loss" not in logged and "monitor/top1_margin" not in logged  # no E-step ran
    assert (cache.step < 0).all()  # nor did it store a z*
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if n in before)


# -- learning: the keywords task -----------------------------------------------------------------------------------------
def test_tagged_sentences_split_at_sentence_ends_and_keep_closing_quotes():
    line = "“/w  我们/r  去/v  公园/n  。/w  ”/w  [中国/ns  政府/n]nt  发表/v  讲话/n  ！/w"
    first, second = td.tagged_sentences(line)
    assert [w for w, _ in first] == ["“", "我们", "去", "公园", "。", "”"]
    assert second == [("中国", "ns"), ("政府", "n"), ("发表", "v"), ("讲话", "n"), ("！", "w")]


def test_pairs_file_rows_split_by_y_and_bad_lines_name_their_number(tmp_path):
    rows = [{"u": f"词{i}", "y": f"第{i}句话。"} for i in range(200)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(map(json.dumps, rows)) + "\n", encoding="utf-8")
    train, validation = td.jsonl_texts(path, "train"), td.jsonl_texts(path, "validation")
    assert len(train[0]) + len(validation[0]) + len(td.jsonl_texts(path, "test")[0]) == 200
    assert all(split_of(y) == "validation" for y in validation[1]) and len(train[0]) > 150
    path.write_text(json.dumps(rows[0]) + "\n{\"u\": 5, \"y\": \"句\"}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 needs string fields 'u' and 'y'"):
        td.jsonl_texts(path, "train")


def hard_em(model, proposer, batch: dict, steps: int, lr: float = 3e-3) -> None:
    """``steps`` rounds of E-step then M-step on one fixed batch (the overfit learning tests)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        z = te.estep(model, proposer, batch, step).plans
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], concept_ids=z,
              text_ids=batch["text_ids"], text_attention_mask=batch["text_attention_mask"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_hard_em_on_keyword_plans_teaches_the_executor_to_read_z_and_the_planner_to_write_it(tokenizer):
    """Overfit four (keywords → sentence) pairs: after a proposer-only warm-up, z* stays the proposer's keyword plan
    (likelihood selection), the executor's NLL rises by > 0.5 nat/token when the plans are shuffled, and the
    planner's greedy plan from u is z*."""
    us = ["孩子、公园、散步、汽车", "经济、会议、发展、天空", "天气、今天、书包", "好看、书、河流"]
    ys = ["孩子们在公园里散步。", "会议讨论了经济发展。", "今天天气很好。", "这本书很好看。"]
    torch.manual_seed(0)
    model = keyword_planner(tokenizer, share_text_embeddings=True, estep_selection="likelihood", estep_top_k=1,
                            estep_sources=["proposer", "planner_greedy"], estep_warmup_steps=60).train()
    batch = {k: v for k, v in batch_of(tokenizer, us, ys).items() if k != "index"}
    proposer = te.KeywordProposer(model.config, tokenizer)
    hard_em(model, proposer, batch, steps=120)
    model.eval()
    with torch.no_grad():
        result = te.estep(model, proposer, batch, step=120)
        assert torch.equal(result.plans, proposer(batch)[:, 0])  # the full keyword plan (u's words y uses)
        nll = lambda plans: float(model.executor_forward(plans, batch["text_ids"], batch["text_attention_mask"]).loss)  # noqa: E731
        assert nll(result.plans.roll(1, 0)) - nll(result.plans) > 0.5  # untrained: ≈ 0
        planned = model.plan(batch["input_ids"], batch["attention_mask"])
    width = result.plans.shape[-1]
    assert torch.equal(torch.nn.functional.pad(planned, (0, width - planned.shape[-1])), result.plans)


# -- the warm-up that ends on gain (estep_warmup_end="gain") ------------------------------------------------------------
def test_gain_window_ends_the_warmup_from_w_on_once_the_gain_beats_the_cost(tokenizer):
    window = te.GainWindow(keyword_planner(tokenizer, estep_warmup_steps=10, estep_refresh_steps=50).config)
    assert window.observe(5, torch.tensor([3.0, 3.0]), torch.tensor([1.0, 1.0])) == (3.0, 1.0)
    assert not window.ends(5, 3.0, 1.0)  # before W: the executor is still learning to read z
    mean_gain, mean_cost = window.observe(12, torch.tensor([0.0, 0.0]), torch.tensor([5.0, 5.0]))
    assert (mean_gain, mean_cost) == (1.5, 3.0) and not window.ends(12, mean_gain, mean_cost)
    assert window.observe(100, torch.tensor([4.0]), torch.tensor([1.0])) == (4.0, 1.0)  # steps ≤ 50 left the window
    assert window.ends(100, 4.0, 1.0)


def test_gain_and_cost_of_an_estep_match_fresh_forwards_and_the_gain_is_zero_for_equal_rows(tokenizer):
    model = keyword_planner(tokenizer).eval()
    proposer = te.KeywordProposer(model.config, tokenizer)
    pairs = batch_of(tokenizer, ["天气、今天", "书、河流", "天气、今天"], ["今天天气好。", "书很好看。", "今天天气好。"])
    batch = {k: v for k, v in pairs.items() if k != "index"}
    result = te.estep(model, proposer, batch, step=0, warm=False)
    gain, cost = te.gain_and_cost(model, batch, result, torch.Generator().manual_seed(0))
    order = torch.randperm(3, generator=torch.Generator().manual_seed(0))
    executor = lambda z: model.executor_forward(z, batch["text_ids"], batch["text_attention_mask"]).log_prob  # noqa: E731
    torch.testing.assert_close(gain, executor(result.plans) - executor(result.plans[order]))
    planner = model.planner_forward(batch["input_ids"], batch["attention_mask"], result.plans)
    torch.testing.assert_close(cost, -planner.log_prob)
    assert bool((cost > 0).all())
    equal = {k: v[[0, 2]] for k, v in batch.items()}  # two identical (u, y): shuffling changes nothing
    same_gain, _ = te.gain_and_cost(model, equal, te.estep(model, proposer, equal, step=0, warm=False))
    torch.testing.assert_close(same_gain, torch.zeros(2), atol=1e-4, rtol=0)


def test_the_store_says_when_the_planner_competes_and_keeps_it_across_a_resume(tokenizer, tmp_path):
    by_steps = keyword_planner(tokenizer, estep_warmup_steps=10).config
    by_gain = keyword_planner(tokenizer, estep_warmup_steps=10, estep_warmup_end="gain").config
    store = te.ZStarStore(2, 1, 6)
    assert not store.warm(by_steps, 9) and store.warm(by_steps, 10)
    assert not store.warm(by_gain, 10_000)  # only the gain ends it
    store.warmup_ended_at = 37
    assert store.warm(by_gain, 38)
    store.save(tmp_path)
    resumed = te.ZStarStore(2, 1, 6)
    assert resumed.load(tmp_path) and resumed.warmup_ended_at == 37
    with pytest.raises(ValueError, match=r"estep_warmup_end must be one of \('steps', 'gain'\), got 'never'"):
        keyword_planner(tokenizer, estep_warmup_end="never")


def test_warmup_by_gain_lets_the_planner_compete_once_its_plans_pay_for_themselves(tokenizer):
    """The four-pair overfit of the keyword learning test, with the gain rule: until the executor's gain from z*
    beats the plan's prior cost only the proposer's plans win; that happens within the run (the executor learns to
    read the plans, the planner to write them), after W, and the run ends with z* the keyword plan."""
    us = ["孩子、公园、散步、汽车", "经济、会议、发展、天空", "天气、今天、书包", "好看、书、河流"]
    ys = ["孩子们在公园里散步。", "会议讨论了经济发展。", "今天天气很好。", "这本书很好看。"]
    torch.manual_seed(0)
    model = keyword_planner(tokenizer, share_text_embeddings=True, estep_selection="likelihood", estep_top_k=1,
                            estep_sources=["proposer", "planner_greedy"], estep_warmup_steps=20,
                            estep_warmup_end="gain", estep_refresh_steps=10).train()
    batch = {k: v for k, v in batch_of(tokenizer, us, ys).items() if k != "index"}
    proposer, store, window = te.KeywordProposer(model.config, tokenizer), te.ZStarStore(4, 1, 6), te.GainWindow(model.config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        warm = store.warm(model.config, step)
        result = te.estep(model, proposer, batch, step, warm=warm)
        if not warm:
            assert set(result.sources) == {"proposer"}
            if window.ends(step, *window.observe(step, *te.gain_and_cost(model, batch, result))):
                store.warmup_ended_at = step
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], concept_ids=result.plans,
              text_ids=batch["text_ids"], text_attention_mask=batch["text_attention_mask"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert store.warmup_ended_at is not None and 20 <= store.warmup_ended_at < 150
    model.eval()
    with torch.no_grad():
        assert torch.equal(te.estep(model, proposer, batch, 150, warm=True).plans, proposer(batch)[:, 0])


def test_the_entropy_bonus_keeps_the_planner_from_locking_onto_its_plans(tokenizer):
    """Overfit the planner on four fixed (u, z*) pairs: without the bonus its distributions collapse onto z*;
    with λ = 1 it still learns z* (lower NLL than at the start) but keeps clearly more entropy per slot."""
    from genlab.modeling_planner import IGNORE, slot_entropy

    us = ["孩子、公园、散步", "经济、会议、发展", "天气、今天", "好看、书"]
    ys = ["孩子们在公园里散步。", "会议讨论了经济发展。", "今天天气很好。", "这本书很好看。"]
    entropies, nlls = {}, {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = keyword_planner(tokenizer, planner_entropy_weight=weight).train()
        batch = {k: v for k, v in batch_of(tokenizer, us, ys).items() if k != "index"}
        z = te.KeywordProposer(model.config, tokenizer)(batch)[:, 0]
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        start = float(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], concept_ids=z).planner_loss)
        for _ in range(150):
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], concept_ids=z).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        with torch.no_grad():
            out = model.planner_forward(batch["input_ids"], batch["attention_mask"], z)
            entropies[weight] = float(slot_entropy(out.logits, out.labels != IGNORE))
            nlls[weight] = float(out.loss)
        assert nlls[weight] < start
    assert entropies[0.0] < 0.5 and entropies[1.0] > 2 * entropies[0.0]
