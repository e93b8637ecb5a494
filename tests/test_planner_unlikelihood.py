"""Token-level unlikelihood (``unlikelihood_weight``): its candidates on hand-made sequences, that the M-step adds it
for the executor's text and the planner's text plans, and that it teaches the executor not to repeat itself."""

import math

import pytest
import torch

from genlab.configuration_planner import PlannerExecutorConfig
from genlab.trainers.planner import PlannerTrainConfig
from genlab.unlikelihood import token_unlikelihood

from test_planner_copy import STACK, S, make_copy_model

P = 0.2  # every token's probability in the hand-made cases
ONE = -math.log(1 - P)  # the penalty of one candidate


@pytest.mark.parametrize("labels, expected", [
    ([1, 2, 1, 3, -100], [0, ONE, ONE, 2 * ONE, 0]),  # t=2: 1 is the target, only 2 is a candidate
    ([1, 1, 1, 2], [0, 0, 0, ONE]),  # an earlier token counts once, and never when it is the target
    ([-100, 4, 4, 0], [0, 0, 0, ONE]),  # a position that is not trained is no candidate either
])
def test_candidates_are_the_earlier_tokens_other_than_the_target(labels, expected):
    labels = torch.tensor([labels])
    log_probs = torch.full((1, labels.shape[1], 5), P).log()
    torch.testing.assert_close(token_unlikelihood(log_probs, labels), torch.tensor([expected]))


def test_weight_must_not_be_negative():
    with pytest.raises(ValueError, match="unlikelihood_weight must be ≥ 0"):
        PlannerExecutorConfig(unlikelihood_weight=-1)
    with pytest.raises(ValueError, match="--unlikelihood: must be ≥ 0"):
        PlannerTrainConfig(unlikelihood=-0.5)


def test_the_m_step_adds_the_weighted_term_of_text_and_plan_and_it_reaches_both_stacks():
    u = torch.randint(S, 60, (3, 6), generator=torch.Generator().manual_seed(0))
    plan = torch.tensor([[[S + 10, S + 11, S + 10]], [[S + 20, S + 21, 0]], [[S + 30, 0, 0]]])
    text = torch.tensor([[10, 11, 10, 12], [20, 20, 21, 1], [30, 31, 32, 30]])
    plain = make_copy_model(planner_copy=True)(input_ids=u, concept_ids=plan, text_ids=text)
    model = make_copy_model(planner_copy=True, unlikelihood_weight=2.0)
    out = model(input_ids=u, concept_ids=plan, text_ids=text)
    assert plain.unlikelihood_loss is None and float(out.unlikelihood_loss.detach()) > 0
    torch.testing.assert_close(out.loss, plain.loss + 2.0 * out.unlikelihood_loss)
    out.unlikelihood_loss.backward()
    for stack in ("planner", "executor"):
        grads = [p.grad for p in getattr(model, stack).parameters() if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0, stack


def repeat_mass(weight: float, steps: int = 150) -> float:
    """An executor trained on y = 6 distinct tokens of [10, 18) in random order, whose first token is the plan: no
    token of y repeats, but which one comes next is open. → the mean probability it gives, on held-out orders,
    to the tokens it has already written."""
    wide = dict(STACK, hidden_size=64, num_attention_heads=4, intermediate_size=128)
    model = make_copy_model(vocab=40, stack=wide, executor_copy=False, concept_max_lengths=[1], eos_token_id=1,
                            unlikelihood_weight=weight).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    orders = lambda n, seed: torch.stack([torch.randperm(8, generator=seed)[:6] + 10 for _ in range(n)])  # noqa: E731
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        text = orders(32, generator)
        loss = model(concept_ids=(text[:, :1] + S)[:, None], text_ids=text).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    text = orders(64, torch.Generator().manual_seed(5))
    with torch.no_grad():
        p = model.eval().executor_forward((text[:, :1] + S)[:, None], text).logits.softmax(-1)
    written = p.gather(-1, text[:, None, :].expand(-1, 6, -1)) * torch.ones(6, 6).tril(-1).bool()  # [t, j<t]
    return float(written.sum(-1)[:, 1:].mean())


def test_unlikelihood_teaches_the_executor_to_leave_written_tokens_alone():
    """The mechanism's reason to exist: with the same data, seed and steps, the executor trained with the term (α = 4,
    strong enough to show within 150 steps) puts a fraction of the plain executor's mass on tokens it has already
    written (measured: 0.048 vs 0.193; at 300 steps 0.008 vs 0.028; α = 1 gets there more slowly, 0.013 vs 0.029
    at 400 steps)."""
    plain, trained = repeat_mass(0.0), repeat_mass(4.0)
    assert trained < 0.5 * plain, (trained, plain)
