"""MERGE decoding (SPEC M8, issue 12): modes force the gate, auto mode consults it, each stop rule fires,
confidence over filled masks only, Mask-Predict re-masking in gen mode, batch/padding invariance, bad input."""

import random

import pytest
import torch

from genlab.generation_refinement import RefinementState, changed_less_than, levenshtein
from test_merge_model import BOS, MASK, PAD, tiny_model

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
def test_modes_force_the_gate(mode, expected):
    bottom_k = tiny_model(seed=1, picker="bottomk").eval()  # K_del = 15 %: every edit round deletes
    out = bottom_k.generate(right_padded(ROWS), mode=mode, max_new_tokens=4, confidence_stop=1.0,
                            levenshtein_stop=0, max_rounds=3, return_dict_in_generate=True)
    assert out.gate.eq(expected).all()
    deleted = torch.stack([d.sum(-1) for d in out.deleted], 1)
    assert (deleted > 0).all() if mode == "edit" else (deleted == 0).all()


@pytest.mark.parametrize("threshold,expected", [(0.0, 1.0), (1.0, 0.0)])
def test_auto_mode_consults_the_gate_from_round_zero(model, threshold, expected):
    """The aligned Gate reads E's states of the input itself, so it decides round 0 too (issue 12: auto mode
    used to be the identity); σ > edit_threshold_base + step·round is its decision."""
    config = model.config
    saved = config.edit_threshold_base, config.edit_threshold_step
    config.edit_threshold_base, config.edit_threshold_step = threshold, 0.0
    try:
        out = model.generate(right_padded(ROWS), mode="auto", max_new_tokens=4, confidence_stop=1.0,
                             levenshtein_stop=0, max_rounds=2, return_dict_in_generate=True)
    finally:
        config.edit_threshold_base, config.edit_threshold_step = saved
    assert out.gate.eq(expected).all()


def test_confidence_stop_fires(model):
    out = model.generate(right_padded(ROWS), mode="edit", confidence_stop=1e-6, return_dict_in_generate=True)
    assert out.rounds.tolist() == [1, 1, 1]
    assert out.confidence[:, 0].gt(1e-6).all() and out.confidence[:, 1:].isnan().all()


def test_confidence_counts_filled_masks_only():
    """B4: a round that fills no mask (nothing deleted, nothing inserted) is fully confident, whatever the
    probabilities of the tokens it kept; <s> no longer drags the mean down."""
    model = tiny_model(seed=1).eval()
    with torch.no_grad():  # P(wrong) = σ(−s) ≈ 0 for every token, and every gap's count is 0
        model.picker.score[-1].weight.zero_()
        model.picker.score[-1].bias.fill_(20.0)
        model.inserter.gap_head.weight.zero_()
        model.inserter.gap_head.bias.zero_()[0] = 10.0
    out = model.generate(right_padded(ROWS), mode="edit", return_dict_in_generate=True)
    assert out.inserted[:, 0].eq(0).all() and out.confidence[:, 0].eq(1.0).all()
    assert out.rounds.tolist() == [1, 1, 1]
    assert all(strip(row) == r for row, r in zip(out.sequences, ROWS)), "an edit that changes nothing"


def test_levenshtein_stop_fires_when_a_round_changes_nothing(model):
    out = model.generate(None, mode="gen", max_new_tokens=12, min_new_tokens=12, confidence_stop=1.0,
                         return_dict_in_generate=True)
    texts = [strip(r[0]) for r in out.round_sequences]
    unchanged = [r for r in range(1, len(texts)) if texts[r] == texts[r - 1]]
    assert out.rounds.item() == (unchanged[0] + 1 if unchanged else model.generation_config.max_rounds)
    assert out.inserted[0, 0] == 12 and out.inserted[0, 1:out.rounds.item()].eq(0).all()  # Mask-Predict keeps L
    assert len(strip(out.sequences[0])) == 13


def test_gen_mode_remasks_the_least_confident_generated_tokens(model):
    """Mask-Predict: round r re-masks ⌊K·(R − r)/R⌋ of the K generated tokens, lowest probability first;
    prompt tokens are never re-masked."""
    ids = torch.tensor([[BOS, 10, 11, 12, 13, 14, 15], [BOS, 20, 21, 22, 23, PAD, PAD]])
    valid = ids != PAD
    generated = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    prob = torch.tensor([[0.1, 0.05, 0.9, 0.2, 0.8, 0.3, 0.7], [1.0, 0.4, 0.6, 0.1, 0.5, 1.0, 1.0]])
    state = RefinementState(ids=ids, valid=valid, prev_logits=None, prev_hidden=None, done=torch.zeros(2, dtype=bool),
                            rounds=torch.zeros(2, dtype=torch.long), generated=generated, token_prob=prob)
    settings = model._refinement_settings(None, dict(mode="gen", max_rounds=4))
    masked = model._remask(state, 2, settings) == MASK  # K = 5 and 4 → 2 and 2 re-masked
    assert masked.nonzero().tolist() == [[0, 3], [0, 5], [1, 1], [1, 3]]


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


def test_sampling_is_refused_rather_than_ignored(model):
    with pytest.raises(ValueError, match="do_sample / num_beams are not supported"):
        model.generate(right_padded(ROWS), mode="edit", do_sample=True, temperature=0.7)


def test_a_streamer_gets_the_input_then_the_final_sequence(model):
    class Recorder:  # the BaseStreamer protocol: put(ids), end()
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, ids):
            self.puts.append(ids.tolist())

        def end(self):
            self.ended = True

    recorder = Recorder()
    out = model.generate(right_padded(ROWS[1:2]), mode="gen", max_new_tokens=4, streamer=recorder)
    assert recorder.puts == [ROWS[1], strip(out[0])] and recorder.ended
    with pytest.raises(ValueError, match="streamer needs batch size 1, got 3"):
        model.generate(right_padded(ROWS), mode="edit", streamer=Recorder())


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
