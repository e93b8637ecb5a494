"""PlannerExecutorModel (SPEC P1–P3, P8): layout, invariances, cached decoding, gradients, bad input."""

import pytest
import torch

from genlab.configuration_planner import CONCEPT_EOS, CONCEPT_MASK, CONCEPT_PAD, PlannerExecutorConfig
from genlab.generation_planner import diverse
from genlab.modeling_planner import PlannerExecutorModel

STACK = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)
VOCAB = 60


def make_model(**overrides) -> PlannerExecutorModel:
    torch.manual_seed(0)
    fields = dict(vocab_size=VOCAB, concept_types=["keywords", "shape"], concept_vocab_sizes=[20, 7],
                  concept_max_lengths=[5, 3], max_input_length=16, max_text_length=24, planner=STACK,
                  executor=STACK)
    return PlannerExecutorModel(PlannerExecutorConfig(**{**fields, **overrides})).eval()


# Two types of unequal lengths per row: (3, 2), (1 + <eos>, 3), (5, 0).
CONCEPTS = torch.tensor([[[3, 4, 5, 0, 0], [3, 4, 0, 0, 0]],
                         [[6, CONCEPT_EOS, 0, 0, 0], [5, 6, 7, 0, 0]],
                         [[8, 9, 10, 11, 12], [0, 0, 0, 0, 0]]])


def text_batch(generator_seed: int = 1, batch: int = 3, length: int = 9) -> torch.Tensor:
    return torch.randint(6, VOCAB, (batch, length), generator=torch.Generator().manual_seed(generator_seed))


def test_executor_prefix_positions_restart_per_type_and_type_ids_follow_segments():
    model = make_model()
    prefix = model.executor_prefix(CONCEPTS)
    # Row 1: BOS, SEP1, 6, SEP2, 5, 6, 7 → 7 entries; rows 0 and 2 have 8, so row 1 gets one pad on the left.
    assert prefix.valid.tolist()[1] == [False] + [True] * 7
    assert prefix.position_ids.tolist()[1][1:] == [0, 0, 1, 0, 1, 2, 3]
    assert prefix.type_ids.tolist()[1][1:] == [0, 1, 1, 2, 2, 2, 2]
    assert prefix.position_ids.tolist()[2] == [0, 0, 1, 2, 3, 4, 5, 0]
    assert prefix.type_ids.tolist()[2] == [0, 1, 1, 1, 1, 1, 1, 2]
    assert prefix.valid.tolist()[0] == [True] * 8 and prefix.position_ids.tolist()[0] == [0, 0, 1, 2, 3, 0, 1, 2]


def test_executor_logits_do_not_change_when_u_changes():
    model = make_model()
    y = text_batch()
    u1, u2 = torch.randint(6, VOCAB, (2, 3, 12), generator=torch.Generator().manual_seed(5))
    out1 = model(input_ids=u1, concept_ids=CONCEPTS, text_ids=y)
    out2 = model(input_ids=u2, concept_ids=CONCEPTS, text_ids=y)
    assert not torch.equal(out1.planner_logits, out2.planner_logits)  # u does reach the planner
    assert torch.equal(out1.logits, out2.logits)


def test_executor_is_invariant_to_batch_composition_and_padding():
    model = make_model()
    y = text_batch()
    batched = model.executor_forward(CONCEPTS, y).logits
    for row in range(3):
        alone = model.executor_forward(CONCEPTS[row : row + 1], y[row : row + 1]).logits
        torch.testing.assert_close(alone, batched[row : row + 1], atol=1e-5, rtol=1e-5)
    wider = torch.nn.functional.pad(CONCEPTS, (0, 3), value=CONCEPT_PAD)  # extra padding columns per type
    torch.testing.assert_close(model.executor_forward(wider, y).logits, batched, atol=1e-5, rtol=1e-5)
    # A shorter text, right-padded, gives the same logits on its real tokens.
    mask = torch.ones_like(y)
    mask[0, 5:] = 0
    padded = model.executor_forward(CONCEPTS, y.masked_fill(mask == 0, 0), mask).logits
    torch.testing.assert_close(padded[0, :5], batched[0, :5], atol=1e-5, rtol=1e-5)


def test_executor_depends_on_concepts():
    model = make_model()
    y = text_batch()
    other = CONCEPTS.clone()
    other[0, 0, 0] = 7
    assert not torch.allclose(model.executor_forward(CONCEPTS, y).logits[0], model.executor_forward(other, y).logits[0])


def test_cached_executor_decoding_equals_full_forward():
    from transformers.cache_utils import DynamicCache

    model = make_model()
    y = text_batch()
    full = model.executor_forward(CONCEPTS, y).logits  # (batch, T, vocab)
    embeds, positions, _, valid, _ = model.executor_prefix(CONCEPTS)
    cache = DynamicCache(config=model.executor.config)
    hidden = model.executor_step(embeds, positions, valid, cache)
    key_valid = valid
    steps = [model.lm_head(hidden[:, -1])]
    for t in range(y.shape[1] - 1):
        key_valid = torch.cat([key_valid, key_valid.new_ones(3, 1)], 1)
        hidden = model.executor_step(model.text_embeds(y[:, t : t + 1]), positions.new_full((3, 1), t + 1),
                                     key_valid, cache)
        steps.append(model.lm_head(hidden[:, -1]))
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_execute_greedy_equals_argmax_of_the_full_forward():
    model = make_model()
    text = model.execute(CONCEPTS, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    logits = model.executor_forward(CONCEPTS, text).logits
    assert torch.equal(logits.argmax(-1), text)


def test_planner_types_are_independent_given_u():
    model = make_model()
    u = text_batch(7, length=10)
    other = CONCEPTS.clone()
    other[:, 1] = torch.tensor([7, 8, 0, 0, 0])
    a = model.planner_forward(u, None, CONCEPTS).logits
    b = model.planner_forward(u, None, other).logits
    torch.testing.assert_close(a[:, 0], b[:, 0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, 1], b[:, 1])


def test_planner_is_invariant_to_input_padding_side():
    model = make_model()
    u = text_batch(7, batch=1, length=6)
    mask = torch.ones(1, 9, dtype=torch.long)
    left = torch.cat([torch.zeros(1, 3, dtype=torch.long), u], 1)
    right = torch.cat([u, torch.zeros(1, 3, dtype=torch.long)], 1)
    plain = model.planner_forward(u, None, CONCEPTS[:1]).logits
    for ids, m in ((left, mask.clone().index_fill_(1, torch.arange(3), 0)),
                   (right, mask.clone().index_fill_(1, torch.arange(6, 9), 0))):
        torch.testing.assert_close(model.planner_forward(ids, m, CONCEPTS[:1]).logits, plain, atol=1e-5, rtol=1e-5)


def test_greedy_plan_replays_as_the_teacher_forced_argmax():
    """Cached parallel-type planning == the full planner forward (no rollout/replay mismatch)."""
    model = make_model()
    u = text_batch(3, length=8)
    plan = model.plan(u)
    out = model.planner_forward(u, None, plan)
    free = torch.arange(6)[None, :] < torch.tensor(model.config.concept_max_lengths)[:, None]  # not a forced <eos>
    counted = (out.labels != -100) & free
    assert torch.equal(out.logits.argmax(-1)[counted], out.labels[counted])
    assert ((plan == CONCEPT_PAD) | (plan >= 3)).all()  # no <mask>, <eos> dropped


def test_no_repeat_plans_name_each_concept_once_and_replay_as_the_argmax_over_the_unnamed():
    model = make_model(planner_mtp_heads=1)
    scores = model.planner_logits
    favourite = torch.zeros(model.max_type_vocab).index_fill(0, torch.tensor([9]), 50.0)  # concept 9, always
    model.planner_logits = lambda hidden, u: scores(hidden, u) + favourite
    u = text_batch(3, length=8)
    assert (model.plan(u)[:, 0] == 9).all()  # keywords: 9 at every slot
    plan = model.plan(u, no_repeat_concepts=True)
    content = (plan >= 3).long()
    named = torch.nn.functional.one_hot(plan, model.max_type_vocab) * content[..., None]  # (b, k, L, V)
    assert named.sum(2).max() == 1 and (plan[:, 0, 0] == 9).all()  # once each, the favourite first
    out = model.planner_forward(u, None, plan)
    before = torch.nn.functional.pad(named.cumsum(2), (0, 0, 1, 0))[:, :, :-1].bool()  # named before slot j
    before = torch.cat([before, named.sum(2, keepdim=True).bool()], 2)  # and before each type's <eos>
    free = torch.arange(6)[None, :] < torch.tensor(model.config.concept_max_lengths)[:, None]
    counted = (out.labels != -100) & free
    replayed = out.logits.masked_fill(before, torch.finfo(out.logits.dtype).min).argmax(-1)
    assert torch.equal(replayed[counted], out.labels[counted])
    for use_mtp in (False, True):  # the MTP heads' guesses of one step are checked too
        plan = model.plan(u, use_mtp=use_mtp, no_repeat_concepts=True)
        assert (torch.nn.functional.one_hot(plan, model.max_type_vocab) * (plan >= 3).long()[..., None]).sum(2).max() == 1


def test_plan_respects_max_lengths_and_mtp_heads_run():
    model = make_model(planner_mtp_heads=2)
    u = text_batch(3, length=8)
    for use_mtp in (False, True):
        plan = model.plan(u, use_mtp=use_mtp)
        assert plan.shape == (3, 2, 5)
        assert (plan[:, 1, 3:] == CONCEPT_PAD).all()
    out = model(input_ids=u, concept_ids=CONCEPTS)
    assert len(out.planner_logits) == 3 and out.planner_loss.isfinite()


def test_diverse_step_penalises_what_earlier_groups_chose():
    """Hand-made log-probs: group 0 is greedy; with penalty 1 group 1 moves to its runner-up (ln .5 − 1 <
    ln .3), with penalty 0 it stays on the shared argmax."""
    logits = torch.tensor([[[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.6, 0.1, 0.3]]]).log()  # (batch 1, G 3, V 3)
    assert diverse(logits, 0.0).tolist() == [[0, 0, 0]]
    assert diverse(logits, 1.0).tolist() == [[0, 1, 2]]  # group 2: ln .6 − 1 < ln .3 − 0 (1 and 0 taken once each)


def test_diverse_beam_plans_start_with_the_greedy_plan_and_spread_apart():
    model = make_model()
    u = text_batch(3, length=8)
    greedy = model.plan(u)
    same = model.plan(u, num_beam_groups=3).view(3, 3, *greedy.shape[1:])  # no penalty: every group is greedy
    assert all(torch.equal(same[:, g], greedy) for g in range(3))
    spread = model.plan(u, num_beam_groups=3, diversity_penalty=100.0).view(3, 3, *greedy.shape[1:])
    assert torch.equal(spread[:, 0], greedy)
    first = spread[:, :, 0, 0]  # a huge penalty forbids repeating the first keyword across groups
    assert all(len(set(row.tolist())) == 3 for row in first)
    with pytest.raises(ValueError, match="num_beam_groups"):
        model.plan(u, num_beam_groups=2, do_sample=True)


def test_z_dropout_masks_what_the_executor_reads_only_while_training():
    """p → 1: the executor's loss is the loss through the all-<mask> plan; the planner's loss and every eval-mode
    forward are those of the plan itself."""
    model = make_model(executor_z_dropout=0.999999)
    u, y = text_batch(3, length=8), text_batch(2, length=9)
    masked = torch.where(CONCEPTS >= 3, CONCEPT_MASK, CONCEPTS)
    with torch.no_grad():
        plain = model(input_ids=u, concept_ids=CONCEPTS, text_ids=y)
        model.train()
        dropped = model(input_ids=u, concept_ids=CONCEPTS, text_ids=y)
        model.eval()
        through_mask = model(input_ids=u, concept_ids=masked, text_ids=y)
    torch.testing.assert_close(dropped.executor_loss, through_mask.executor_loss)
    torch.testing.assert_close(dropped.planner_loss, plain.planner_loss)
    assert not torch.isclose(dropped.executor_loss, plain.executor_loss)
    with pytest.raises(ValueError, match="executor_z_dropout"):
        make_model(executor_z_dropout=1.0)
    with pytest.raises(ValueError, match="soft_mixture"):
        make_model(executor_z_dropout=0.1, concept_gradient="soft_mixture")


def test_generate_plans_then_executes_and_returns_concepts():
    model = make_model()
    u = text_batch(3, length=8)
    out = model.generate(u, max_new_tokens=5, return_concepts=True)
    assert torch.equal(out.concept_ids, model.plan(u))
    assert torch.equal(out.sequences, model.execute(out.concept_ids, max_new_tokens=5))
    assert torch.equal(model.generate(u, max_new_tokens=5), out.sequences)


def test_concept_id_outside_its_type_vocabulary_is_rejected():
    model = make_model()
    bad = CONCEPTS.clone()
    bad[0, 1, 0] = 10  # type "shape" has 7 + 3 = 10 ids
    with pytest.raises(ValueError, match="'shape' must lie in \\[0, 10\\)"):
        model.executor_forward(bad, text_batch())
    with pytest.raises(ValueError, match="shape"):
        model.executor_forward(CONCEPTS[:, :1], text_batch())


def test_empty_type_list_and_too_long_input_are_rejected():
    with pytest.raises(ValueError, match="concept_types"):
        PlannerExecutorConfig(concept_types=[], concept_vocab_sizes=[], concept_max_lengths=[])
    with pytest.raises(ValueError, match="concept_gradient"):
        PlannerExecutorConfig(concept_gradient="soft")
    with pytest.raises(ValueError, match="estep_prior_weight must be ≥ 0, got -0.5"):
        PlannerExecutorConfig(estep_prior_weight=-0.5)
    model = make_model()
    with pytest.raises(ValueError, match="max_input_length=16"):
        model.plan(torch.ones(1, 17, dtype=torch.long))


def test_all_mask_plan_is_valid_input():
    model = make_model()
    masked = torch.where(CONCEPTS >= 3, CONCEPT_MASK, CONCEPTS)
    assert model.executor_forward(masked, text_batch()).loss.isfinite()


def test_generic_tooling_can_call_the_model_on_its_dummy_inputs():
    model = make_model()
    out = model(**model.dummy_inputs)
    assert torch.isfinite(out.loss) and out.planner_loss is not None and out.executor_loss is not None


def test_a_misspelt_generate_argument_is_refused():
    model = make_model()
    u = torch.randint(3, VOCAB, (1, 4))
    with pytest.raises(ValueError, match=r"unknown generate arguments \['max_new_token'\]"):
        model.generate(u, max_new_token=4)


def test_execute_honours_the_generation_configs_processors_and_refuses_beams():
    """The processors come from transformers' own builder: a field the executor used to ignore silently
    (``no_repeat_ngram_size``) now acts, and beam search, which it does not do, is refused."""
    model = make_model()
    with torch.no_grad():  # an executor that loops: every step's favourite is token 7
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(VOCAB).index_fill(0, torch.tensor([7]), 50.0))
    looped = model.execute(CONCEPTS, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert (looped == 7).all()
    blocked = model.execute(CONCEPTS, max_new_tokens=6, min_new_tokens=6, do_sample=False, no_repeat_ngram_size=1)
    assert all(len(set(row)) == 6 for row in blocked.tolist()), blocked
    with pytest.raises(ValueError, match="num_beams must be 1, got 4"):
        model.execute(CONCEPTS, max_new_tokens=2, num_beams=4)


def test_a_streamer_gets_every_written_token_in_order():
    from transformers.generation.streamers import BaseStreamer

    class Collect(BaseStreamer):
        def __init__(self):
            self.tokens, self.ended = [], False

        def put(self, value):
            self.tokens += value.tolist()

        def end(self):
            self.ended = True

    model = make_model()
    u = torch.randint(3, VOCAB, (1, 4))
    streamer = Collect()
    out = model.generate(u, max_new_tokens=6, streamer=streamer)
    assert streamer.ended and streamer.tokens == out[0].tolist()
    with pytest.raises(ValueError, match="batch size 1"):
        model.generate(torch.randint(3, VOCAB, (2, 4)), max_new_tokens=2, streamer=Collect())


def test_slot_entropy_on_hand_made_distributions():
    from genlab.modeling_planner import IGNORE, slot_entropy

    floor = torch.finfo(torch.float32).min  # what planner_logits gives ids a type cannot emit
    uniform4 = torch.tensor([0.0, 0.0, 0.0, 0.0, floor, floor])
    certain = torch.tensor([50.0, 0.0, 0.0, 0.0, floor, floor])
    logits = torch.stack([uniform4, certain, uniform4])[None, None]  # (1, 1, 3 slots, 6)
    counted = torch.tensor([[[0, 1, IGNORE]]]) != IGNORE  # the third slot is not trained on
    assert float(slot_entropy(logits, counted)) == pytest.approx(torch.log(torch.tensor(4.0)).item() / 2, abs=1e-5)


def test_the_entropy_bonus_subtracts_lambda_times_the_planner_entropy_from_the_loss():
    from genlab.modeling_planner import IGNORE, slot_entropy

    model = make_model()
    u, y = torch.randint(6, VOCAB, (3, 12), generator=torch.Generator().manual_seed(5)), text_batch()
    plain = model(input_ids=u, concept_ids=CONCEPTS, text_ids=y)
    model.config.planner_entropy_weight = 0.5
    bonus = model(input_ids=u, concept_ids=CONCEPTS, text_ids=y)
    entropy = slot_entropy(bonus.planner_logits, model.planner_forward(u, None, CONCEPTS).labels != IGNORE)
    assert float(entropy) > 0
    torch.testing.assert_close(bonus.loss, plain.loss - 0.5 * entropy)
    with pytest.raises(ValueError, match="planner_entropy_weight must be ≥ 0, got -1.0"):
        make_model(planner_entropy_weight=-1)
