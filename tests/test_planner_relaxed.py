"""Straight-through and soft-mixture training of the planner–executor as real alternatives to hard-EM (SPEC P4):
the planner writes its own plan from u (``relaxed_plan``), the executor reads it as it will at test time, and the
planner learns through the executor's gradient — no E-step, no proposer."""

import math

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from genlab.bench.planner import relaxed_figures
from genlab.bench.probe import concept_drop, training_plans
from genlab.configuration_planner import CONCEPT_EOS, CONCEPT_PAD
from genlab.tokenization import default_tokenizer
from test_planner_model import CONCEPTS, make_model, text_batch
from test_planner_train import NEWS, batch_of, planner_for

RELAXED = ("straight_through", "soft_mixture")


@pytest.mark.parametrize("gradient", RELAXED)
def test_the_executor_loss_reaches_the_planner_through_its_own_plan(gradient):
    u, y = text_batch(3, length=8), text_batch()
    model = make_model(concept_gradient=gradient).train()
    out = model(input_ids=u, text_ids=y)
    assert out.planner_loss is None and torch.equal(out.loss, out.executor_loss)  # no E-step, no planner CE
    out.loss.backward()
    for name in ("planner_head.weight", "planner.layers.0.self_attn.q_proj.weight", "planner_concept_embed.weight"):
        assert model.get_parameter(name).grad.norm() > 0, name
    hard = make_model().train()  # hard-EM: the executor's loss never reaches the planner
    hard(input_ids=u, concept_ids=CONCEPTS, text_ids=y).executor_loss.backward()
    assert hard.planner_head.weight.grad is None or hard.planner_head.weight.grad.norm() == 0


@pytest.mark.parametrize("gradient", RELAXED)
def test_relaxed_plans_are_full_length_and_plan_returns_them(gradient):
    model = make_model(concept_gradient=gradient)
    u = text_batch(3, length=8)
    plan = model.relaxed_plan(u)
    lengths = torch.tensor(model.config.concept_max_lengths)
    slots = torch.arange(plan.concept_ids.shape[-1]) < lengths[:, None]  # (types, L)
    assert (plan.concept_ids[:, slots] >= 3).all() and (plan.concept_ids[:, ~slots] == CONCEPT_PAD).all()
    assert not (plan.concept_ids == CONCEPT_EOS).any()
    assert torch.equal(model.plan(u), plan.concept_ids)
    noisy = model.relaxed_plan(u, noise=True, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(noisy.concept_ids, plan.concept_ids)  # training draws from the planner


def test_straight_through_reads_exactly_the_rows_of_its_ids_and_soft_mixture_does_not():
    u, y = text_batch(3, length=8), text_batch()
    for gradient, exact in (("straight_through", True), ("soft_mixture", False)):
        model = make_model(concept_gradient=gradient)
        plan = model.relaxed_plan(u)
        as_trained = model.executor_forward(plan.concept_ids, y, concept_embeds=plan.concept_embeds).logits
        as_ids = model.executor_forward(plan.concept_ids, y).logits
        assert torch.allclose(as_trained, as_ids, atol=1e-6) == exact, gradient


def test_a_soft_mixture_model_generates_from_its_soft_plan():
    model = make_model(concept_gradient="soft_mixture")
    u = text_batch(3, length=8)
    out = model.generate(u, max_new_tokens=6, return_concepts=True)
    plan = model.relaxed_plan(u)
    assert torch.equal(out.concept_ids, plan.concept_ids)
    assert torch.equal(out.sequences, model.execute(plan.concept_ids, max_new_tokens=6,
                                                    concept_embeds=plan.concept_embeds))


def test_relaxed_training_rejects_what_belongs_to_hard_em():
    for hard_em_only in (dict(executor_z_dropout=0.1), dict(planner_mtp_heads=1)):
        with pytest.raises(ValueError, match="belong to hard-EM"):
            make_model(concept_gradient="straight_through", **hard_em_only)
    with pytest.raises(ValueError, match="concept_temperature must be > 0"):
        make_model(concept_gradient="soft_mixture", concept_temperature=0.0)
    model = make_model(concept_gradient="straight_through")
    u = text_batch(3, length=8)
    with pytest.raises(ValueError, match="no concept_ids"):
        model(input_ids=u, concept_ids=CONCEPTS, text_ids=text_batch())
    with pytest.raises(ValueError, match="num_beam_groups"):
        model.plan(u, num_beam_groups=2)


def overfit_first_token_nll(gradient: str, train_planner: bool) -> tuple[float, float]:
    """Train on four (u, y) pairs for 250 steps (τ = 0.5, Adam 2e-3), the planner frozen unless ``train_planner``;
    return y's first-token NLL through each example's own plan and through the next example's plan."""
    torch.manual_seed(0)
    model = make_model(concept_gradient=gradient, concept_temperature=0.5).train()
    u, y = text_batch(7, batch=4, length=6), text_batch(8, batch=4, length=10)
    assert y[:, 0].unique().numel() == 4

    def first_token_nll(shuffle: bool) -> float:
        with torch.no_grad():
            plan = model.eval().relaxed_plan(u)
            ids, embeds = (plan.concept_ids.roll(1, 0), plan.concept_embeds.roll(1, 0)) if shuffle else plan[:2]
            return float(model.executor_forward(ids, y, concept_embeds=embeds).token_nll[:, 0].mean())

    assert abs(first_token_nll(True) - first_token_nll(False)) < 0.2  # untrained: the plan carries nothing
    trained = [p for name, p in model.named_parameters() if train_planner or not name.startswith("planner")]
    optimizer = torch.optim.Adam(trained, lr=2e-3)
    for _ in range(250):
        model.train()(input_ids=u, text_ids=y).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return first_token_nll(False), first_token_nll(True)


@pytest.mark.parametrize("gradient", RELAXED)
def test_relaxed_training_learns_plans_that_carry_y(gradient):
    """Overfit four (u, y) pairs with no E-step and no proposer. The executor sees only the planner's plan, so it
    can write y's FIRST token (before any of y is read) only from the plan: after training that token costs < 0.6
    nat through each example's own plan and > 3 nats through another example's. The planner must learn for this:
    with it frozen, its noisy training samples carry nothing the executor can read, and both stay at ln 4 (all
    four first tokens equally likely). Measured: 0.05 / 5.3 nats (straight-through), 0.37 / 4.9 (soft mixture),
    both settled from step 150 on; frozen 1.40 / 1.40. At τ = 1 and lr 3e-3 the same runs are unstable: plans of
    different inputs merge and split again (ST plateaus at 0.85 nats with three inputs sharing one plan), so the
    test trains at the cooler temperature."""
    own, shuffled = overfit_first_token_nll(gradient, train_planner=True)
    assert own < 0.6 and shuffled > 3.0
    own, shuffled = overfit_first_token_nll(gradient, train_planner=False)
    assert abs(own - math.log(4)) < 0.1 and abs(shuffled - own) < 0.1


@torch.no_grad()
def test_the_bench_and_the_probe_read_a_soft_plan_as_the_executor_trained_on_it():
    tokenizer = default_tokenizer()
    model = planner_for(tokenizer, concept_gradient="soft_mixture")
    batch = batch_of(tokenizer, ["今天", "会议", "这本书", "质量"], NEWS)
    ar = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, intermediate_size=64)).eval()
    figures = relaxed_figures(model, ar, tokenizer, [batch])
    plan = model.relaxed_plan(batch["input_ids"], batch["attention_mask"])
    soft = model.executor_forward(plan.concept_ids, batch["text_ids"], batch["text_attention_mask"], plan.concept_embeds)
    assert figures["nll_planner_z"] == pytest.approx(float(soft.loss), rel=1e-5)  # the soft plan, not its ids
    assert set(figures) == {"nll_planner_z", "nll_ar", "delta_nll_shuffle", "delta_nll_mask", "delta_nll_random"}
    drop = concept_drop(model, training_plans(model, proposer=None), [batch], [0.0, 1.0], seed=0)
    assert drop["nll_per_token"] == pytest.approx(float(soft.loss), rel=1e-5)
    assert drop["delta_nll"]["0.0"] == 0.0 and drop["delta_nll"]["1.0"] != 0.0
