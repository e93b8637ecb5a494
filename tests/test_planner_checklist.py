"""The executor's checklist (``executor_checklist``): which slots count as written on hand-made texts, that it starts
as the plain copy head, that gradients reach it, that cached decoding equals the full forward with it, and that it
learns what it exists for: write every keyword of the plan once, then stop; and a round trip."""

import pytest
import torch

from genlab.configuration_planner import PlannerExecutorConfig
from genlab.pointer_generator import CopySlots, write, written_slots
from genlab.testing import assert_remote_code_roundtrip
from genlab.trainers.planner import PlannerTrainConfig

from test_planner_copy import PLANS, S, STACK, VOCAB, assert_cached_decoding_is_the_full_forward, make_copy_model

EOS = 1


def hand_made_slots() -> CopySlots:
    """One row; slots hold tokens 7, 9, (not copyable), 3."""
    tokens = torch.tensor([[7, 9, 0, 3]])
    bias = torch.tensor([[[0.0, 0.0, torch.finfo(torch.float32).min, 0.0]]])
    return CopySlots(torch.zeros(1, 4, 2), torch.zeros(1, 4, 2), bias, tokens[:, None], torch.tensor([[[False]]]))


def test_written_slots_are_the_tokens_of_the_text_before_each_position():
    slots = hand_made_slots()
    # text 5 7 5 9 0: the position predicting token i has read tokens 0 … i−1; the uncopyable slot's 0 never counts
    written = written_slots(torch.tensor([[5, 7, 5, 9, 0]]), slots)
    assert written[0].int().tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]]
    step = torch.zeros(1, 1, 4, dtype=torch.bool)
    for token, expected in ((5, [0, 0, 0, 0]), (3, [0, 0, 0, 1]), (0, [0, 0, 0, 1]), (7, [1, 0, 0, 1])):
        step = write(step, torch.tensor([token]), slots)
        assert step[0, 0].int().tolist() == expected


def test_checklist_needs_the_copy_head():
    with pytest.raises(ValueError, match="executor_checklist .* executor_copy"):
        PlannerExecutorConfig(concept_types=["keywords"], concept_vocab_sizes=[20], concept_max_lengths=[4],
                              text_concept_types=["keywords"], vocab_size=20, executor_checklist=True)
    with pytest.raises(ValueError, match="--checklist .* --executor-copy"):
        PlannerTrainConfig(proposer="keywords", checklist=True)
    PlannerTrainConfig(proposer="keywords", checklist=True, executor_copy=True)


def plan_text(seed: int = 1) -> torch.Tensor:
    """(3, 5) texts that write some of PLANS' tokens (10, 11 / 20, 22 / 30) among others."""
    text = torch.randint(S, VOCAB, (3, 5), generator=torch.Generator().manual_seed(seed))
    text[0, 1], text[1, 0], text[1, 3], text[2, 2] = 10, 22, 20, 30
    return text


def test_checklist_starts_as_the_plain_copy_head_and_its_gradients_arrive():
    model = make_copy_model(executor_checklist=True)
    out = model.executor_forward(PLANS, plan_text())
    checklist, model.copy_head.checklist = model.copy_head.checklist, None
    torch.testing.assert_close(out.logits, model.executor_forward(PLANS, plan_text()).logits, atol=0, rtol=0)
    model.copy_head.checklist = checklist
    out.loss.backward()
    for name in ("update.weight", "update.bias", "written_score"):
        assert checklist.get_parameter(name).grad.abs().sum() > 0, name


def test_cached_decoding_with_a_checklist_equals_the_full_forward_and_ignores_padding():
    model = make_copy_model(executor_checklist=True)
    with torch.no_grad():  # a checklist that acts: random update, written slots strongly avoided
        model.copy_head.gate.bias.fill_(-1.0)
        model.copy_head.checklist.update.weight.normal_(std=0.5)
        model.copy_head.checklist.written_score.fill_(-5.0)
    assert_cached_decoding_is_the_full_forward(model)


def keyword_batch(generator: torch.Generator, n: int, longest: int = 4):
    """Plans of 2 … ``longest`` distinct tokens from [3, 100); y = the plan's tokens in a random order, then </s>
    (the order is not the plan's: the executor must remember which it wrote)."""
    plans = torch.zeros(n, 1, longest, dtype=torch.long)
    text = torch.zeros(n, longest + 1, dtype=torch.long)
    mask = torch.zeros_like(text)
    for i, length in enumerate(torch.randint(2, longest + 1, (n,), generator=generator).tolist()):
        tokens = torch.randperm(100 - S, generator=generator)[:length] + S
        plans[i, 0, :length] = tokens + S
        text[i, :length] = tokens[torch.randperm(length, generator=generator)]
        text[i, length], mask[i, : length + 1] = EOS, 1
    return plans, text, mask


def share_written_exactly(checklist: bool, steps: int = 150) -> float:
    """Train an executor on ``keyword_batch`` for ``steps``; the share of 128 new plans whose greedy text holds
    each of their tokens exactly once, then </s>."""
    wide = dict(STACK, hidden_size=64, num_attention_heads=4, intermediate_size=128)
    model = make_copy_model(vocab=160, stack=wide, concept_max_lengths=[4], eos_token_id=EOS,
                            executor_checklist=checklist).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = model.executor_forward(*keyword_batch(generator, 32)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    plans, _, _ = keyword_batch(torch.Generator().manual_seed(9), 128)
    written = model.eval().execute(plans, max_new_tokens=6, do_sample=False).tolist()
    exact = 0
    for plan, text in zip(plans[:, 0], written):
        body = text[: text.index(EOS)] if EOS in text else None
        exact += body is not None and sorted(body) == sorted((plan[plan > 0] - S).tolist())
    return exact / len(written)


def test_checklist_learns_to_write_every_keyword_once_then_stop():
    """The mechanism's reason to exist. Without it the same executor, data and steps mostly skips or repeats a
    keyword or stops early (it has to compare tokens through attention to know what is left)."""
    with_checklist, without = share_written_exactly(True), share_written_exactly(False)
    assert with_checklist > 0.95, (with_checklist, without)
    assert without < 0.5, (with_checklist, without)


def test_checklist_survives_a_clean_process_round_trip(tmp_path):
    model = make_copy_model(executor_checklist=True)
    with torch.no_grad():  # not its zero initialisation: the loaded values must be the saved ones
        model.copy_head.checklist.update.weight.normal_(std=0.5)
        model.copy_head.checklist.written_score.fill_(-2.0)
    inputs = {"input_ids": torch.randint(S, VOCAB, (3, 6), generator=torch.Generator().manual_seed(2)),
              "concept_ids": PLANS, "text_ids": plan_text()}
    assert_remote_code_roundtrip(model, inputs, tmp_path=tmp_path, output_key="logits")
