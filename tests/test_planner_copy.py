"""The pointer-generator heads (``executor_copy``, ``planner_copy``): what they may copy, that they score a
distribution, that cached decoding and padding leave them unchanged, a round trip, and that they learn to copy."""

import pytest
import torch

from genlab.configuration_planner import CONCEPT_MASK, NUM_CONCEPT_SPECIALS, PlannerExecutorConfig
from genlab.modeling_planner import PlannerExecutorModel
from genlab.pointer_generator import NOT_COPYABLE
from genlab.trainers.planner import PlannerTrainConfig
from genlab.testing import assert_remote_code_roundtrip

from test_planner_model import STACK, VOCAB

S = NUM_CONCEPT_SPECIALS
# One text concept type; rows of 2, 3 (one <mask>) and 1 concepts: token t is concept t + 3.
PLANS = torch.tensor([[[S + 10, S + 11, 0]], [[S + 20, CONCEPT_MASK, S + 22]], [[S + 30, 0, 0]]])


def make_copy_model(vocab: int = VOCAB, stack: dict = STACK, **overrides) -> PlannerExecutorModel:
    torch.manual_seed(0)
    fields = dict(vocab_size=vocab, concept_types=["keywords"], concept_vocab_sizes=[vocab],
                  concept_max_lengths=[3], text_concept_types=["keywords"], executor_copy=True,
                  max_input_length=16, max_text_length=12, planner=stack, executor=stack)
    return PlannerExecutorModel(PlannerExecutorConfig(**{**fields, **overrides})).eval()


def test_copy_tokens_are_the_plans_text_tokens_and_nothing_else():
    prefix = make_copy_model().executor_prefix(PLANS)
    c = NOT_COPYABLE
    # BOS, SEP, then the slots; rows left-padded to the longest prefix (5 entries).
    assert prefix.copy_tokens.tolist() == [[c, c, c, 10, 11], [c, c, 20, c, 22], [c, c, c, c, 30]]
    assert prefix.valid.tolist()[2] == [False, False, True, True, True]


def test_copy_needs_a_text_concept_type():
    with pytest.raises(ValueError, match="executor_copy .* text_concept_types"):
        PlannerExecutorConfig(concept_types=["keywords"], concept_vocab_sizes=[20], concept_max_lengths=[4],
                              executor_copy=True)


@pytest.mark.parametrize("flag", ["executor_copy", "planner_copy"])
def test_training_refuses_copy_heads_on_hashed_concepts(flag):
    with pytest.raises(ValueError, match=f"--{flag.replace('_', '-')} copies text tokens"):
        PlannerTrainConfig(proposer="rare_characters", **{flag: True})
    PlannerTrainConfig(proposer="keywords", **{flag: True})


def test_pointer_generator_is_a_distribution_and_trains_both_its_parts():
    model = make_copy_model().train()
    text = torch.randint(S, VOCAB, (3, 5), generator=torch.Generator().manual_seed(1))
    out = model.executor_forward(PLANS, text)
    torch.testing.assert_close(out.logits.logsumexp(-1), torch.zeros(3, 5), atol=1e-5, rtol=0)
    out.loss.backward()
    for name in ("query.weight", "gate.weight", "gate.bias"):
        assert model.copy_head.get_parameter(name).grad.abs().sum() > 0, name
    with torch.no_grad():  # a gate shut on generation puts all mass on the plan's tokens
        model.copy_head.gate.bias.fill_(-1e4)
    probs = model.executor_forward(PLANS, text).logits.exp()
    for row, tokens in enumerate(([10, 11], [20, 22], [30])):
        torch.testing.assert_close(probs[row][:, tokens].sum(-1), torch.ones(5), atol=1e-4, rtol=0)


def assert_cached_decoding_is_the_full_forward(model: PlannerExecutorModel) -> None:
    """``execute`` on PLANS writes the full forward's argmax at every step, and each row alone scores as in the
    padded batch."""
    text = model.execute(PLANS, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    full = model.executor_forward(PLANS, text).logits
    assert torch.equal(full.argmax(-1), text)
    for row in range(3):
        alone = model.executor_forward(PLANS[row : row + 1], text[row : row + 1]).logits
        torch.testing.assert_close(alone, full[row : row + 1], atol=1e-5, rtol=1e-5)


def test_cached_decoding_with_copy_equals_the_full_forward_and_ignores_padding():
    model = make_copy_model()
    with torch.no_grad():
        model.copy_head.gate.bias.fill_(-1.0)  # copying matters: most of the mass is on the plan
    assert_cached_decoding_is_the_full_forward(model)


def test_copy_heads_survive_a_clean_process_round_trip(tmp_path):
    model = make_copy_model(planner_copy=True)
    inputs = {"input_ids": torch.randint(S, VOCAB, (3, 6), generator=torch.Generator().manual_seed(2)),
              "concept_ids": PLANS, "text_ids": torch.randint(S, VOCAB, (3, 5), generator=torch.Generator().manual_seed(3))}
    assert_remote_code_roundtrip(model, inputs, tmp_path=tmp_path, output_key=["logits", "planner_logits"])


def train_to_write_its_plan(copy: bool, steps: int = 120) -> tuple[PlannerExecutorModel, torch.Tensor]:
    """Executor trained on y = the plan's two tokens then </s>, tokens drawn from [3, 100) only."""
    wide = dict(STACK, hidden_size=64, num_attention_heads=4, intermediate_size=128)
    model = make_copy_model(vocab=160, stack=wide, executor_copy=copy, concept_max_lengths=[2],
                            eos_token_id=1).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        tokens = torch.randint(S, 100, (32, 2), generator=generator)
        text = torch.cat([tokens, torch.ones(32, 1, dtype=torch.long)], 1)
        loss = model.executor_forward((tokens + S)[:, None], text).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), loss.detach()


def test_copy_head_learns_to_write_keywords_it_never_wrote_in_training():
    """The mechanism's reason to exist: plan tokens from [100, 160), never a target in training, come out exactly.
    The same executor without the head learns the training range but cannot write the unseen tokens."""
    unseen = torch.randint(100, 160, (64, 2), generator=torch.Generator().manual_seed(9))
    results = {}
    for copy in (True, False):
        model, loss = train_to_write_its_plan(copy)
        written = model.execute((unseen + S)[:, None], max_new_tokens=2, do_sample=False)
        results[copy] = (float(loss), (written == unseen).all(1).float().mean().item())
    assert results[True][0] < 0.05 and results[True][1] > 0.95, results
    assert results[False][1] < 0.2, results


def test_planner_copy_scores_a_distribution_and_replays_its_greedy_plan():
    model = make_copy_model(planner_copy=True)
    u = torch.randint(S, VOCAB, (3, 7), generator=torch.Generator().manual_seed(4))
    plan = model.plan(u)
    out = model.planner_forward(u, None, plan)
    torch.testing.assert_close(out.logits.logsumexp(-1), torch.zeros(out.logits.shape[:-1]), atol=1e-5, rtol=0)
    counted = (out.labels != -100) & (torch.arange(4) < 3)  # not the forced <eos> after a full plan
    assert torch.equal(out.logits.argmax(-1)[counted], out.labels[counted])


def train_planner_to_pick(copy: bool, steps: int = 200) -> tuple[PlannerExecutorModel, torch.Tensor]:
    """Planner trained to plan u's first token: u = one token from [3, 100) then two from [3, 160)."""
    wide = dict(STACK, hidden_size=64, num_attention_heads=4, intermediate_size=128)
    model = make_copy_model(vocab=160, stack=wide, planner_copy=copy, executor_copy=False,
                            concept_max_lengths=[1]).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        u = torch.cat([torch.randint(S, 100, (32, 1), generator=generator),
                       torch.randint(S, 160, (32, 2), generator=generator)], 1)
        loss = model.planner_forward(u, None, (u[:, :1] + S)[:, None]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), loss.detach()


def test_planner_copy_head_learns_to_pick_words_of_u_it_never_planned_in_training():
    """Tokens of [100, 160) are read in u but never planned in training; with the head the planner plans them
    (not always: u's first token is marked only by attending to itself alone), without it never."""
    unseen = torch.randint(100, 160, (64, 3), generator=torch.Generator().manual_seed(9))
    results = {}
    for copy in (True, False):
        model, loss = train_planner_to_pick(copy)
        results[copy] = (float(loss), (model.plan(unseen)[:, 0, 0] == unseen[:, 0] + S).float().mean().item())
    assert results[True][0] < 0.05 and results[True][1] > 0.8, results
    assert results[False][1] < 0.05, results
