"""The learned proposer q(z | y) (``proposer="learned"``, issue 14): distinct pointer picks, padding, gradients,
round trips, and that hard-EM with it learns plans the executor reads."""

import pytest
import torch

from genlab.configuration_planner import CONCEPT_PAD
from genlab.modeling_planner_posterior import pick_distinct
from genlab.testing import assert_remote_code_roundtrip, assert_save_load_roundtrip
from genlab.tokenization import default_tokenizer
from genlab.trainers import planner_estep as te

from test_planner_train import batch_of, hard_em, keyword_planner

US = ["孩子、公园、散步、汽车", "经济、会议、发展、天空", "天气、今天、书包", "好看、书、河流"]
YS = ["孩子们在公园里散步。", "会议讨论了经济发展。", "今天天气很好。", "这本书很好看。"]
NEG = torch.finfo(torch.float32).min


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


def learned(tokenizer, **overrides):
    return keyword_planner(tokenizer, proposer="learned", share_text_embeddings=True, **overrides)


def pairs(tokenizer, us=US, ys=YS) -> dict:
    return {k: v for k, v in batch_of(tokenizer, us, ys).items() if k != "index"}


def test_slots_pick_distinct_positions_while_untaken_ones_remain():
    logits = torch.tensor([[[[5.0, 1.0, 0.0, NEG]] * 4]])  # (batch 1, type 1, 4 slots, 4 positions), 3 pickable
    picks = pick_distinct(logits, 1.0, noise=False)
    assert picks.argmax(-1).tolist() == [[[0, 1, 2, 0]]]  # best first, then the runner-ups, then repeats
    assert picks[..., 3].sum() == 0  # padding is never picked
    assert torch.equal(picks.sum(-1), torch.ones(1, 1, 4))  # one-hot rows


def test_pick_gradients_reach_every_slot_through_its_relaxation():
    logits = torch.randn(2, 1, 3, 5, requires_grad=True)
    picks = pick_distinct(logits, 1.0, noise=True, generator=torch.Generator().manual_seed(0))
    (picks * torch.arange(5.0)).sum().backward()
    assert bool((logits.grad.abs().sum(-1) > 0).all())


def test_plans_are_characters_of_y_and_do_not_depend_on_padding(tokenizer):
    model = learned(tokenizer).eval()
    batch = pairs(tokenizer)
    plans = model.posterior_plans(batch["text_ids"], batch["text_attention_mask"])  # (4, 1, 6)
    for row, y in zip(plans[:, 0].tolist(), batch["text_ids"].tolist()):
        assert {c - 3 for c in row if c != CONCEPT_PAD} <= set(y)
    alone = model.posterior_plans(batch["text_ids"][2:3, :8], batch["text_attention_mask"][2:3, :8])
    assert int(batch["text_attention_mask"][2].sum()) == 8 and torch.equal(alone, plans[2:3])


def test_posterior_loss_reaches_q_the_executor_and_the_planner(tokenizer):
    model = learned(tokenizer).train()
    batch = pairs(tokenizer)
    loss, reconstruction, kl = model.posterior_loss(batch["input_ids"], batch["attention_mask"], batch["text_ids"],
                                                   batch["text_attention_mask"], torch.Generator().manual_seed(0))
    assert float(kl.detach()) >= 0 and torch.allclose(loss, reconstruction + kl)
    loss.backward()
    for name in ("posterior.layers.0.self_attn.q_proj.weight", "posterior_slot_embed.weight",
                 "posterior_query.weight", "executor.layers.0.mlp.up_proj.weight",
                 "planner.layers.0.mlp.up_proj.weight"):
        assert float(model.get_parameter(name).grad.abs().sum()) > 0, name


def test_learned_proposer_needs_text_concepts_and_a_nonnegative_kl_weight(tokenizer):
    from test_planner_model import make_model

    with pytest.raises(ValueError, match="proposer='learned' picks characters of y"):
        make_model(proposer="learned")
    with pytest.raises(ValueError, match="posterior_kl_weight must be ≥ 0"):
        learned(tokenizer, posterior_kl_weight=-1)
    with pytest.raises(ValueError, match="needs a model built with proposer='learned'"):
        te.LearnedProposer(keyword_planner(tokenizer))


def test_save_load_and_clean_process_remote_code(tokenizer, tmp_path):
    model = learned(tokenizer).eval()
    batch = pairs(tokenizer)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "concept_ids": model.posterior_plans(batch["text_ids"], batch["text_attention_mask"]),
              "text_ids": batch["text_ids"], "text_attention_mask": batch["text_attention_mask"]}
    checkpoint = assert_save_load_roundtrip(model, inputs, tmp_path=tmp_path, output_key=["loss", "posterior_loss"])
    assert "modeling_planner_posterior.py" in {p.name for p in checkpoint.iterdir()}
    assert_remote_code_roundtrip(model, inputs, tmp_path=tmp_path, checkpoint_dir=checkpoint,
                                 output_key=["loss", "posterior_loss"])


def test_hard_em_with_the_learned_proposer_learns_plans_the_executor_reads(tokenizer):
    """Overfit four (u, y) pairs with q(z|y) as the only proposer before the planner competes: q's plans become
    characters of y that the executor reads (its NLL rises by > 0.3 nat/token when they are shuffled; at the start
    it is ≈ 0) and the E-step keeps them."""
    torch.manual_seed(0)
    model = learned(tokenizer, estep_selection="likelihood", estep_top_k=1,
                    estep_sources=["proposer", "planner_greedy"], estep_warmup_steps=60).train()
    batch = pairs(tokenizer)
    proposer = te.make_proposer(model, tokenizer)
    nll = lambda plans: float(model.executor_forward(plans, batch["text_ids"], batch["text_attention_mask"]).loss)  # noqa: E731
    with torch.no_grad():
        start = te.estep(model, proposer, batch, 0).plans
        assert abs(nll(start.roll(1, 0)) - nll(start)) < 0.05
    hard_em(model, proposer, batch, steps=120)
    model.eval()
    with torch.no_grad():
        plans = proposer(batch)[:, 0]
        assert nll(plans.roll(1, 0)) - nll(plans) > 0.3
        for row, y in zip(plans[:, 0].tolist(), batch["text_ids"].tolist()):
            assert {c - 3 for c in row if c != CONCEPT_PAD} <= set(y)
