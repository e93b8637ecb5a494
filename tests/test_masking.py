"""One mask module for M5, C4 and P1–P2 (issue 11): the rules on hand-made cases, and every model giving the same
outputs under eager, sdpa and flex attention from the same rule."""

import pytest
import torch

from genlab.configuration_concept import Qwen2ConceptCompressionConfig
from genlab.configuration_merge import MergeConfig
from genlab.configuration_planner import PlannerExecutorConfig
from genlab.masking import (additive_mask, attention_mask, bidirectional_padding_rule, cache_step_rule,
                            causal_padding_rule, dense_mask, planner_rule)
from genlab.modeling_concept import Qwen2ConceptCompressionForCausalLM
from genlab.modeling_merge import MergeForMaskedRefinement
from genlab.modeling_planner import PlannerExecutorModel

STACK = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)


def as_ints(rule, batch, q, kv):
    return dense_mask(rule, batch, q, kv, "cpu")[:, 0].int().tolist()


# -- the rules --------------------------------------------------------------------------------------------------------
def test_bidirectional_padding_sees_every_real_key_both_ways():
    valid = torch.tensor([[True, True, False]])
    assert as_ints(bidirectional_padding_rule(valid), 1, 3, 3) == [[[1, 1, 0], [1, 1, 0], [1, 1, 0]]]


def test_causal_padding_hides_padding_keys_and_a_padding_row_sees_itself():
    valid = torch.tensor([[False, True, True]])  # left padding
    assert as_ints(causal_padding_rule(valid), 1, 3, 3) == [[[1, 0, 0], [0, 1, 0], [0, 1, 1]]]
    # queries are the last keys: two new tokens after one cached key
    assert as_ints(causal_padding_rule(torch.ones(1, 3, dtype=torch.bool)), 1, 2, 3) == [[[1, 1, 0], [1, 1, 1]]]


def test_cache_step_sees_older_entries_and_itself_only_when_asked():
    write_at = torch.tensor([1, 3])
    assert as_ints(cache_step_rule(write_at), 2, 1, 4) == [[[1, 1, 0, 0]], [[1, 1, 1, 1]]]
    include = torch.tensor([False, True])
    assert as_ints(cache_step_rule(write_at, include), 2, 1, 4) == [[[1, 0, 0, 0]], [[1, 1, 1, 1]]]


def test_planner_rule_u_causal_and_each_type_sees_u_and_its_own_earlier_tokens():
    key_type = torch.tensor([0, 0, 1, 1, 2])  # u u | type 1, type 1 | type 2
    valid = torch.tensor([[False, True, True, True, True]])  # u left-padded
    assert as_ints(planner_rule(valid, key_type, 0), 1, 5, 5) == [[
        [1, 0, 0, 0, 0],  # padding row: itself only
        [0, 1, 0, 0, 0],  # u causal
        [0, 1, 1, 0, 0],  # type 1 sees u and itself
        [0, 1, 1, 1, 0],  # and the earlier type-1 token
        [0, 1, 0, 0, 1],  # type 2 never sees type 1
    ]]


def test_each_backend_gets_its_form_of_one_rule():
    rule = causal_padding_rule(torch.tensor([[True, True]]))
    allowed = attention_mask(rule, 1, 2, 2, implementation="sdpa", dtype=torch.float32, device="cpu")
    assert allowed.dtype == torch.bool
    additive = attention_mask(rule, 1, 2, 2, implementation="eager", dtype=torch.float32, device="cpu")
    assert torch.equal(additive, additive_mask(allowed, torch.float32)) and additive[0, 0, 0, 1] < -1e30
    block = attention_mask(rule, 1, 2, 2, implementation="flex_attention", dtype=torch.float32, device="cpu")
    assert type(block).__name__ == "BlockMask"


# -- the models under every backend ---------------------------------------------------------------------------------
def merge_outputs(model):
    draft = torch.tensor([[1, 30, 31, 32, 33], [1, 40, 41, 0, 0]])
    torch.manual_seed(0)
    out = model(draft, (draft != 0).long(), round_index=1, edit=torch.ones(2))
    return out.logits[out.attention_mask.bool()]


def concept_outputs(model):
    ids = torch.randint(22, 200, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return model(input_ids=ids, attention_mask=mask).logits[mask.bool()]


def planner_outputs(model):
    u = torch.randint(6, 60, (2, 7), generator=torch.Generator().manual_seed(4))
    u_mask = torch.ones_like(u)
    u_mask[1, :2] = 0
    y = torch.randint(6, 60, (2, 9), generator=torch.Generator().manual_seed(5))
    plan = model.plan(u, u_mask)
    out = model(input_ids=u, attention_mask=u_mask, concept_ids=plan, text_ids=y, text_attention_mask=torch.ones_like(y))
    return torch.cat([out.token_nll.flatten(), plan.flatten().float()])


MODELS = {
    "merge": (lambda: MergeForMaskedRefinement(MergeConfig(
        vocab_size=200, hidden_size=32, num_hidden_layers=2, num_gap_layers=1, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        mask_token_id=3)), merge_outputs),
    "concept": (lambda: Qwen2ConceptCompressionForCausalLM(Qwen2ConceptCompressionConfig(
        vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, num_shallow_layers=1, num_middle_layers=2, num_deep_layers=1, concept_vocab_size=16,
        max_position_embeddings=128, pad_token_id=0)), concept_outputs),
    "planner": (lambda: PlannerExecutorModel(PlannerExecutorConfig(
        vocab_size=60, concept_types=["keywords", "shape"], concept_vocab_sizes=[20, 7], concept_max_lengths=[5, 3],
        max_input_length=16, max_text_length=24, planner=STACK, executor=STACK)), planner_outputs),
}


# Seen 2026-12-02: on an AVX2-only CPU (AMD EPYC) inductor's compiled flex attention gives the concept model's
# outputs 0.02 away from sdpa and eager (the same code and torch 2.13 match on an AVX-512 Xeon). Narrowed 2026-12-06
# to torch alone: torch.compile(flex_attention, dynamic=False) with a causal BlockMask, q/k/v of shape (batch 2,
# 4 heads, 2 kv heads, length 8, head dim 16), is up to 1.9 away from SDPA in batch row 1 only (row 0 exact; batch
# 1, length 16 or 128, or head dim 32 are exact) — the concept test's middle stage has exactly these shapes. The
# same class as pytorch/pytorch#172225 (batch/head out-of-bounds reads at length 8, head dim 16) and #139462
# (wrong rows for batch > 0). Recorded here instead of hidden; MERGE and the planner are still compared on every CPU.
FLEX_CPU_MISMATCH = pytest.mark.xfail(torch.backends.cpu.get_cpu_capability() != "AVX512", strict=False,
                                      reason="compiled flex attention on a CPU without AVX-512 (see comment)")


@pytest.mark.parametrize("name", [pytest.param(n, marks=FLEX_CPU_MISMATCH) if n == "concept" else n
                                  for n in sorted(MODELS)])
@torch.no_grad()
def test_eager_sdpa_and_flex_give_the_same_outputs(name):
    build, outputs = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    reference = outputs(model)  # sdpa, the default
    # transformers compiles flex attention once; torch 2.13's CPU template miscompiles the dynamic-shape recompile
    # it would make for the next shape (g++: 'cur_kvSplitSize3' was not declared), so each shape compiles static.
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        for implementation in ("eager", "flex_attention"):
            model.set_attn_implementation(implementation)
            torch.testing.assert_close(outputs(model), reference, atol=2e-5, rtol=1e-4, msg=f"{name} {implementation}")
