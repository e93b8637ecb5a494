"""MERGE decoding (SPEC M8): modes force the gate, each stop rule fires, batch/padding invariance, bad input."""

import random

import pytest
import torch

from genlab.generation_refinement import changed_less_than, levenshtein
from test_merge_model import BOS, PAD, tiny_model

ROWS = [[BOS, 10, 11, 12, 13, 14, 15, 16, 17], [BOS, 20, 21, 22], [BOS, 30, 31, 32, 33, 34]]


def right_padded(rows, width=None):
    width = width or max(map(len, rows))
    return torch.tensor([r + [PAD] * (width - len(r)) for r in rows])


def left_padded(rows, width):
    return torch.tensor([[PAD] * (width - len(r)) + r for r in rows])


def strip(row: torch.Tensor) -> list[int]:
    return row[row != PAD].tolist()


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1).eval()


@pytest.mark.parametrize("mode,expected", [("edit", 1.0), ("gen", 0.0)])
def test_modes_force_the_gate(model, mode, expected):
    out = model.generate(right_padded(ROWS), mode=mode, max_new_tokens=4, confidence_stop=1.0, levenshtein_stop=0,
                         max_rounds=3, return_dict_in_generate=True)
    assert out.gate.eq(expected).all()
    deleted = torch.stack([d.sum(-1) for d in out.deleted], 1)
    assert (deleted > 0).all() if mode == "edit" else (deleted == 0).all()


def test_auto_mode_starts_with_generate(model):
    out = model.generate(right_padded(ROWS), mode="auto", max_new_tokens=4, confidence_stop=1.0, levenshtein_stop=0,
                         max_rounds=3, return_dict_in_generate=True)
    assert out.gate[:, 0].eq(0).all() and out.deleted[0].sum() == 0
    assert torch.isin(out.gate[:, 1:], torch.tensor([0.0, 1.0])).all()


def test_confidence_stop_fires(model):
    out = model.generate(right_padded(ROWS), mode="edit", confidence_stop=1e-6, return_dict_in_generate=True)
    assert out.rounds.tolist() == [1, 1, 1]
    assert out.confidence[:, 0].gt(1e-6).all() and out.confidence[:, 1:].isnan().all()


def test_levenshtein_stop_fires_when_a_round_changes_nothing(model):
    # gen mode with the length fixed: round 0 fills the masks, round 1 may insert none → no change → stop
    out = model.generate(None, mode="gen", max_new_tokens=12, min_new_tokens=12, confidence_stop=1.0,
                         return_dict_in_generate=True)
    assert out.rounds.tolist() == [2]
    assert out.inserted[0].tolist() == [12.0, 0.0]
    assert len(strip(out.sequences[0])) == 13


def test_max_rounds_stop_fires(model):
    out = model.generate(right_padded(ROWS), mode="edit", confidence_stop=1.0, levenshtein_stop=0, max_rounds=4,
                         return_dict_in_generate=True)
    assert out.rounds.tolist() == [4, 4, 4] and out.gate.shape == (3, 4)


def test_generate_uses_generation_config_defaults(model):
    model.generation_config.max_rounds = 2
    try:
        out = model.generate(right_padded(ROWS), mode="edit", confidence_stop=1.0, levenshtein_stop=0,
                             return_dict_in_generate=True)
    finally:
        model.generation_config.max_rounds = 6
    assert out.rounds.max() == 2


@pytest.mark.parametrize("mode", ["edit", "auto", "gen"])
def test_batch_and_padding_invariance(model, mode):
    settings = dict(mode=mode, max_new_tokens=6)
    alone = [strip(model.generate(torch.tensor([row]), **settings)[0]) for row in ROWS]
    batched = model.generate(right_padded(ROWS), **settings)
    left = model.generate(left_padded(ROWS, 12), attention_mask=left_padded(ROWS, 12).ne(PAD).long(), **settings)
    reordered = model.generate(right_padded(ROWS[::-1]), **settings)
    for i in range(3):
        assert strip(batched[i]) == alone[i]
        assert strip(left[i]) == alone[i]
        assert strip(reordered[2 - i]) == alone[i]


def test_output_is_right_padded_and_starts_with_bos(model):
    out = model.generate(left_padded(ROWS, 12), mode="edit")
    lengths = out.ne(PAD).sum(-1)
    assert torch.equal(out.ne(PAD), torch.arange(out.shape[1])[None] < lengths[:, None])
    assert out[:, 0].eq(BOS).all()


def test_empty_input_in_edit_mode_is_rejected(model):
    with pytest.raises(ValueError, match="edit"):
        model.generate(torch.tensor([[BOS]]), mode="edit")


def test_unknown_mode_is_rejected(model):
    with pytest.raises(ValueError, match="mode must be 'edit', 'gen' or 'auto', got 'fix'"):
        model.generate(right_padded(ROWS), mode="fix")


def test_input_longer_than_max_positions_is_rejected(model):
    too_long = torch.tensor([[BOS] + [10] * model.config.max_position_embeddings])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(too_long, mode="edit")


def test_more_deletions_than_tokens_is_rejected(model):
    with pytest.raises(ValueError, match="num_deletions"):
        model.generate(right_padded(ROWS), mode="edit", num_deletions=4)  # the shortest row has 3 characters


def test_unknown_generate_argument_is_rejected(model):
    with pytest.raises(ValueError, match="num_beams_typo"):
        model.generate(right_padded(ROWS), num_beams_typo=2)


def python_levenshtein(a, b):
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def test_batched_levenshtein_matches_dynamic_programming():
    rng = random.Random(0)
    pairs = [([rng.randrange(4) for _ in range(rng.randrange(0, 9))], [rng.randrange(4) for _ in range(rng.randrange(0, 9))])
             for _ in range(40)]
    a = right_padded([p[0] for p in pairs], 9)
    b = right_padded([p[1] for p in pairs], 9)
    a_len = torch.tensor([len(p[0]) for p in pairs])
    b_len = torch.tensor([len(p[1]) for p in pairs])
    expected = torch.tensor([python_levenshtein(x, y) for x, y in pairs])
    assert torch.equal(levenshtein(a, a_len, b, b_len), expected)
    assert torch.equal(changed_less_than(a, a_len, b, b_len, 2), expected < 2)
