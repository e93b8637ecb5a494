"""``cover_plan``: the text may not end before it holds every text concept of its plan (P8). The processor on
hand-made ids, and ``execute`` / ``generate`` with it on an executor whose favourite token is always ``</s>``."""

import pytest
import torch

from genlab.generation_planner import PlanCoverageLogitsProcessor

from test_planner_copy import PLANS, make_copy_model

EOS = 3


def test_eos_is_suppressed_exactly_where_a_required_token_is_missing_from_the_text():
    processor = PlanCoverageLogitsProcessor(torch.tensor([[5, 6], [7, -1]]), EOS, prompt_length=1)
    input_ids = torch.tensor([[6, 5, 9],  # 6 is only in the prompt column: still missing
                              [2, 7, 4]])  # 7 written; -1 requires nothing
    scores = torch.zeros(2, 10)
    out = processor(input_ids, scores)
    assert out[0, EOS] == torch.finfo(out.dtype).min and out[1, EOS] == 0
    out[0, EOS] = 0
    assert torch.equal(out, scores) and (scores == 0).all()  # nothing else changed, the input untouched
    with pytest.raises(ValueError, match="2 rows of required tokens, got a batch of 4"):
        processor(input_ids.repeat(2, 1), scores.repeat(2, 1))


@torch.no_grad()
def test_execute_writes_its_plan_before_it_may_stop():
    model = make_copy_model(executor_copy=False)  # the plan's text tokens need no copy head
    assert model.config.eos_token_id == EOS
    # PLANS' rows hold tokens (10, 11), (20, <mask>, 22), (30): each row likes </s> best, then its plan in order
    favourite = torch.zeros(3, 1, model.config.vocab_size)
    favourite[:, :, EOS] = 10.0
    for row, tokens in enumerate([[10, 11], [20, 22], [30]]):
        for rank, token in enumerate(tokens):
            favourite[row, :, token] = 5.0 - rank
    model.text_logits = lambda hidden, slots, *checklist: favourite[: hidden.shape[0]].expand(-1, hidden.shape[1], -1)
    fixed = dict(max_new_tokens=5, do_sample=False, no_repeat_ngram_size=1)
    assert model.execute(PLANS, **fixed)[:, 0].tolist() == [EOS] * 3
    covered = model.execute(PLANS, cover_plan=True, **fixed)
    assert covered.tolist() == [[10, 11, EOS], [20, 22, EOS], [30, EOS, 0]]  # 0: padding after </s>
    cut = model.execute(PLANS, cover_plan=True, **{**fixed, "max_new_tokens": 1})  # max_new_tokens still cuts
    assert cut[:, 0].tolist() == [10, 20, 30]
    model.plan = lambda *args, **kwargs: PLANS
    assert torch.equal(model.generate(torch.ones(3, 4, dtype=torch.long), cover_plan=True, **fixed), covered)
