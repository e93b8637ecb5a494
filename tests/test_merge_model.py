"""MERGE model (SPEC M1–M6, M9): gradient paths, exact hard values, losses, variants, bad config.

The gradient-path and loss tests here are the straight-through recipe's (the seeds' end-to-end path, kept as
the M9 ablation; its targets are index-aligned by definition). The aligned recipe — the default — and what
it learns are tested in ``test_merge_learning.py``."""

import pytest
import torch

from genlab.configuration_merge import MergeConfig
from genlab.modeling_merge import MergeForMaskedRefinement

MASK, PAD, BOS = 4, 0, 2


def tiny_config(**overrides) -> MergeConfig:
    fields = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, max_insert_count=16)
    return MergeConfig(**{**fields, **overrides})


def tiny_model(seed: int = 0, **overrides) -> MergeForMaskedRefinement:
    torch.manual_seed(seed)
    return MergeForMaskedRefinement(tiny_config(**overrides))


ST = dict(recipe="straight_through", picker="bottomk", inserter="multinomial")


def st_model(seed: int = 0, **overrides) -> MergeForMaskedRefinement:
    """The straight-through recipe (Bottom-K Picker, Multinomial inserter unless overridden)."""
    return tiny_model(seed, **{**ST, **overrides})


# drafts X_l (right-padded) and targets Y* (-100 padded; the ST recipe scores them index-aligned)
DRAFTS = torch.tensor([[BOS, 10, 11, 12, 13, 14, 15, 16], [BOS, 20, 21, 22, 23, PAD, PAD, PAD]])
TARGETS = torch.tensor([[BOS, 10, 11, 12, 13, 14, 15, 16, 17, 18],
                        [BOS, 20, 21, 22, 23, 24, 25, 26, -100, -100]])


def edit_round(model, **kwargs):
    """A training round > 0 whose Gate decides (needs the previous round's logits/hidden)."""
    with torch.no_grad():
        prev_logits, prev_hidden = model.encode_draft(DRAFTS, DRAFTS != PAD)
    return model(DRAFTS, labels=TARGETS, prev_logits=prev_logits, prev_hidden=prev_hidden, round_index=1,
                 tau_gate=1.0, tau_del=1.0, **kwargs)


def grad_norm(model, name: str) -> torch.Tensor:
    grad = dict(model.named_parameters())[name].grad
    assert grad is not None, f"no gradient reached {name}"
    assert torch.isfinite(grad).all(), f"non-finite gradient at {name}"
    return grad.abs().sum()


@pytest.mark.parametrize("picker,inserter,module", [
    ("bottomk", "multinomial", "inserter.gap_head.weight"),
    ("bernoulli", "topk", "inserter.gap_head.weight"),
    ("bottomk", "pointer", "inserter.gru.weight_ih_l0"),
])
def test_reconstruction_loss_reaches_gate_picker_and_inserter(picker, inserter, module):
    model = st_model(picker=picker, inserter=inserter).train()
    out = edit_round(model)
    out.loss_recon.backward()
    assert grad_norm(model, "gate.mlp.0.weight") > 0
    assert grad_norm(model, "picker.score.0.weight") > 0
    assert grad_norm(model, module) > 0
    assert grad_norm(model, "inserter.encoder.layers.0.self_attn.q_proj.weight") > 0


def test_pooled_gate_receives_reconstruction_gradient():
    model = st_model(gate="pooled").train()
    with torch.no_grad():  # rows that generate: the Bottom-K picks stay in the skeleton and carry d g
        model.gate.proj.bias.fill_(-6.0)
    out = edit_round(model)
    assert out.gate.eq(0).all()
    out.loss_recon.backward()
    assert grad_norm(model, "gate.proj.weight") > 0


def test_fuse_keeps_grad_fn_and_sends_count_gradient():
    model = tiny_model().eval()
    ids = torch.tensor([[BOS, 10, 11, 12]])
    embeds = model.embed_tokens(ids).detach().requires_grad_(True)
    counts = torch.tensor([[0.0, 2.0, 0.0, 1.0]], requires_grad=True)
    valid = torch.ones_like(ids, dtype=torch.bool)
    fused_ids, fused_embeds, fused_valid, is_mask, positions = model.fuse(ids, embeds, valid,
                                                                          torch.arange(4)[None], counts)
    assert fused_embeds.grad_fn is not None
    fused_embeds.sum().backward()
    assert counts.grad[0, 1] != 0 and counts.grad[0, 3] != 0 and counts.grad[0, 0] == 0
    assert embeds.grad.abs().sum() > 0
    assert fused_ids.tolist() == [[BOS, 10, MASK, MASK, 11, 12, MASK]]
    assert is_mask.tolist() == [[False, False, True, True, False, False, True]]


def test_hard_forward_values_are_exact():
    model = st_model().train()
    out = edit_round(model, edit=torch.ones(2))
    deletions = out.deletions.detach()
    assert set(deletions.unique().tolist()) <= {0.0, 1.0}
    # K_del = clamp(round(0.15·L), 1, 30): 7 deletable tokens → 1, 4 → 1
    assert deletions.sum(-1).tolist() == [1.0, 1.0]
    assert deletions[:, 0].eq(0).all(), "<s> is never deleted"
    counts = out.insert_counts.detach()
    assert torch.equal(counts, counts.round())
    lengths = (TARGETS != -100).sum(-1)
    assert counts.sum(-1).tolist() == (lengths - (DRAFTS != PAD).sum(-1) + 1).tolist()  # K_ins = |Y*| − |S|
    assert out.attention_mask.sum(-1).tolist() == lengths.tolist()
    for row in range(2):  # Ŝ minus its masks is the draft minus its deleted tokens, in order
        kept = DRAFTS[row][(DRAFTS[row] != PAD) & (deletions[row] == 0)]
        fused = out.fused_ids[row][out.attention_mask[row].bool()]
        assert torch.equal(fused[fused != MASK], kept)
    # e[MASK] and the kept tokens' embeddings enter E exactly (the ST terms add an exact zero)
    assert out.mask_positions.sum().item() == (out.fused_ids == MASK).sum().item()


def test_relative_positions_shift_by_inserted_masks():
    model = tiny_model(positions="relative").eval()
    ids = torch.tensor([[BOS, 10, 11]])
    emb = model.embed_tokens(ids)
    valid = torch.ones_like(ids, dtype=torch.bool)
    skeleton_pos = torch.tensor([[0, 1, 3]])  # token at original position 2 was deleted
    _, _, _, _, rel = model.fuse(ids, emb, valid, skeleton_pos, torch.tensor([[0.0, 2.0, 0.0]]))
    assert rel.tolist() == [[0, 1, 2, 3, 5]]  # pos'(i) = pos_orig(i) + masks inserted left of i
    absolute = tiny_model(positions="absolute").eval()
    _, _, _, _, pos = absolute.fuse(ids, emb, valid, skeleton_pos, torch.tensor([[0.0, 2.0, 0.0]]))
    assert pos.tolist() == [[0, 1, 2, 3, 4]]


def test_losses_are_returned_separately_and_sum_to_loss():
    out = edit_round(st_model().train())
    terms = [out.loss_recon, out.loss_gate, out.loss_comp, out.loss_ins, out.loss_count]
    assert all(t is not None and torch.isfinite(t) for t in terms)
    assert out.loss_recon > 0 and out.loss_count > 0 and out.loss_comp > 0 and out.loss_ins > 0
    assert torch.allclose(out.loss, sum(terms))


def test_round_zero_is_always_generate_in_the_straight_through_recipe():
    model = st_model().train()
    out = model(DRAFTS, labels=TARGETS, round_index=0)
    assert out.gate.tolist() == [0.0, 0.0] and out.deletions.abs().sum() == 0


def test_insert_only_variant_never_deletes():
    model = st_model(picker="none").train()
    out = edit_round(model, edit=torch.ones(2))
    assert model.picker is None and out.deletions.abs().sum() == 0 and out.delete_prob is None


def test_forward_is_padding_invariant():
    model = tiny_model().eval()
    row = DRAFTS[1:, :5]
    alone = model(row, num_insertions=torch.tensor([3]))
    left_padded = torch.cat([torch.full((1, 3), PAD), row], dim=1)
    padded = model(left_padded, num_insertions=torch.tensor([3]))
    width = alone.logits.shape[1]
    assert torch.equal(alone.fused_ids, padded.fused_ids[:, :width])
    torch.testing.assert_close(alone.logits, padded.logits[:, :width], rtol=1e-5, atol=1e-5)


def test_filler_is_bidirectional():
    model = tiny_model().eval()
    keep = dict(edit=torch.zeros(1), num_insertions=torch.tensor([0]))  # no deletion, no insertion
    a = model(torch.tensor([[BOS, 10, 11, MASK, 12]]), **keep)
    b = model(torch.tensor([[BOS, 10, 11, MASK, 13]]), **keep)
    assert not torch.allclose(a.logits[0, 3], b.logits[0, 3]), "a later token must change an earlier mask's logits"


@pytest.mark.parametrize("field,value", [("gate", "off"), ("picker", "topk"), ("inserter", "greedy"),
                                         ("positions", "alibi"), ("recipe", "rl")])
def test_config_rejects_unknown_variant(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: value})


@pytest.mark.parametrize("recipe,inserter", [("aligned", "multinomial"), ("straight_through", "gap_count")])
def test_config_rejects_an_inserter_the_recipe_cannot_train(recipe, inserter):
    with pytest.raises(ValueError, match="inserter must be one of"):
        tiny_config(recipe=recipe, inserter=inserter)


def test_config_defaults_follow_the_seeds():
    c = MergeConfig()
    assert (c.max_rounds, c.delete_ratio, c.delete_min, c.delete_max) == (6, 0.15, 1, 30)
    assert (c.lambda_sparsity, c.lambda_reward, c.lambda_comp, c.lambda_ins) == (0.1, 0.2, 0.05, 0.01)
    assert (c.entropy_threshold, c.tau_gate_start, c.tau_gate_end, c.confidence_stop) == (1.5, 2.0, 0.2, 0.9)
    # issue 12: the aligned recipe, a threshold detector, per-gap counts; stop when a round edits nothing
    assert (c.recipe, c.picker, c.inserter, c.delete_threshold, c.levenshtein_stop) == (
        "aligned", "threshold", "gap_count", 0.5, 1)
    assert (c.edit_threshold_base, c.edit_threshold_step, c.insert_sub_round) == (0.4, 0.1, 8)
    assert c.model_type == "merge" and c.mask_token_id == 4 and c.pad_token_id == 0


def test_generic_tooling_can_call_the_model_on_its_dummy_inputs():
    model = tiny_model()
    out = model(**model.dummy_inputs)  # one round: the logits cover the round's output, masks inserted included
    assert out.logits.shape[0] == model.dummy_inputs["input_ids"].shape[0] == out.fused_ids.shape[0]
