"""MERGE decoding (SPEC M8, issue 12): modes force the gate, auto mode consults it, each stop rule fires,
confidence over filled masks only, Mask-Predict re-masking in gen mode, batch/padding invariance, bad input."""

import math
import random

import pytest
import torch

from genlab.generation_refinement import RefinementState, bag_distance, changed_less_than, levenshtein, token_chunks
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


def brute_force_wrong_prob(model, row: list[int]) -> list[float]:
    """1 − p(x_i) read off ``encode_draft`` of the row with x_i masked, one forward per token (tokens the filler
    never writes excluded, as in generation)."""
    wrong = [0.0]
    for i in range(1, len(row)):
        probe = torch.tensor([row[:i] + [MASK] + row[i + 1:]])
        logits, _ = model.encode_draft(probe, torch.ones_like(probe, dtype=torch.bool))
        logits = logits[0, i].index_fill(0, torch.tensor(model._never_filled), float("-inf"))
        wrong.append(1.0 - logits.softmax(-1)[row[i]].item())
    return wrong


def test_token_chunks_fill_the_budget_at_each_chunks_widest_row():
    assert token_chunks(torch.tensor([3, 3, 5, 5, 5, 9]), 10) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    assert token_chunks(torch.tensor([12, 12]), 10) == [(0, 1), (1, 2)]  # wider than the budget: one row each
    assert token_chunks(torch.tensor([], dtype=torch.long), 10) == []


@pytest.mark.parametrize("shifted", [False, True])
def test_fill_detector_masks_each_token_alone_whatever_the_padding(shifted):
    """fill_wrong_prob equals one masked forward per token, and a row's values do not depend on the other rows
    or on the side it is padded on."""
    model = tiny_model(seed=2, shifted_logits=shifted).eval()
    expected = [brute_force_wrong_prob(model, row) for row in ROWS]
    with torch.no_grad():
        # 60 tokens a chunk: the 8 probes of the two shorter rows cut to 6 wide, the longest row's in two chunks
        right = model.fill_wrong_prob(right_padded(ROWS), right_padded(ROWS).ne(PAD), chunk_tokens=60)
        left = model.fill_wrong_prob(left_padded(ROWS, 12), left_padded(ROWS, 12).ne(PAD))
    for i, row in enumerate(ROWS):
        assert right[i, : len(row)].tolist() == pytest.approx(expected[i], abs=1e-5)
        assert right[i, len(row):].eq(0).all()
        assert left[i, 12 - len(row):].tolist() == pytest.approx(expected[i], abs=1e-5)
    nothing_to_score = torch.tensor([[BOS, PAD]])  # a row edit mode has emptied: no token to mask
    assert model.fill_wrong_prob(nothing_to_score, nothing_to_score.ne(PAD)).eq(0).all()


def test_fill_detector_renormalises_over_the_candidates(model):
    """With each token allowed only itself nothing can be wrong; allowing one more token for 11 gives
    P(wrong) = p(other) / (p(11) + p(other)) at that position."""
    itself = torch.eye(model.config.vocab_size, dtype=torch.bool)
    ids = right_padded(ROWS)
    assert model.fill_wrong_prob(ids, ids.ne(PAD), itself).eq(0).all()
    table = itself.clone()
    table[11, 40] = True
    probe = torch.tensor([[BOS, 10, MASK, 12, 13, 14, 15, 16, 17]])
    with torch.no_grad():
        p = model.encode_draft(probe, torch.ones_like(probe, dtype=torch.bool))[0][0, 2].softmax(-1)
    wrong = model.fill_wrong_prob(ids, ids.ne(PAD), table)
    assert wrong[0, 2].item() == pytest.approx((p[40] / (p[11] + p[40])).item(), rel=1e-4)
    assert wrong.count_nonzero() == 1
    free, restricted = model.fill_wrong_probs(ids, ids.ne(PAD), (None, table))  # one pass, both rules
    assert torch.equal(restricted, wrong) and torch.equal(free, model.fill_wrong_prob(ids, ids.ne(PAD)))
    tripled = model.fill_wrong_prob(ids, ids.ne(PAD), table, fill_processor=adding_to(40, math.log(3)))
    assert tripled[0, 2].item() == pytest.approx((3 * p[40] / (p[11] + 3 * p[40])).item(), rel=1e-4)


def adding_to(token: int, value: float):
    """A FillProcessor that adds ``value`` to ``token``'s logit (a prior weight e^value)."""
    def processor(input_ids, positions, scores):
        scores = scores.clone()
        scores[:, token] += value
        return scores
    return processor


def test_fill_detector_deletes_the_likeliest_wrong_token_above_the_threshold(model):
    """detector='fill' deletes one token per row and round: the one fill_wrong_prob scores highest, when it
    exceeds delete_threshold (a row whose highest is below deletes nothing)."""
    ids = right_padded(ROWS)
    wrong = model.fill_wrong_prob(ids, ids.ne(PAD))
    highest = wrong.amax(-1).sort().values
    threshold = highest[:2].mean().item()  # between the lowest row maximum and the next
    model.config.delete_threshold = threshold
    try:
        out = model.generate(ids, mode="edit", max_rounds=1, detector="fill", return_dict_in_generate=True)
    finally:
        model.config.delete_threshold = 0.5
    expected = (wrong == wrong.amax(-1, keepdim=True)) & (wrong > threshold)
    assert out.deleted[0].equal(expected) and out.deleted[0].sum() == 2


def test_fill_detector_rows_stop_when_a_round_edits_nothing(model):
    """One edit per round: confidence does not stop a row that edited (with the Picker, confidence_stop=0 stops
    every row after round 1); it stops when a round changes nothing, or at max_rounds."""
    ids = right_padded(ROWS)
    settings = dict(mode="edit", max_rounds=3, confidence_stop=0.0, return_dict_in_generate=True)
    model.config.delete_threshold = 0.0
    try:
        picker = model.generate(ids, **settings)
        fill = model.generate(ids, detector="fill", **settings)
    finally:
        model.config.delete_threshold = 0.5
    assert picker.rounds.tolist() == [1, 1, 1]
    edited = [strip(after) != strip(before) for after, before in zip(fill.round_sequences[0], ids)]
    assert any(edited)
    for row, did_edit in enumerate(edited):
        assert (fill.rounds[row] > 1) == did_edit


def test_unknown_detector_is_rejected(model):
    with pytest.raises(ValueError, match="detector must be 'picker' or 'fill', got 'oracle'"):
        model.generate(right_padded(ROWS), mode="edit", detector="oracle")
    for picker in ("none", "bottomk"):  # the fill detector replaces the scores of the threshold rule only
        other = tiny_model(seed=1, picker=picker).eval()
        with pytest.raises(ValueError, match=f"picker='{picker}'"):
            other.generate(right_padded(ROWS), mode="edit", detector="fill")
    bottomk = tiny_model(seed=1, picker="bottomk").eval()
    with pytest.raises(ValueError, match="picker must be 'threshold', got 'bottomk'"):
        bottomk(right_padded(ROWS), edit=torch.ones(3), wrong_prob=torch.full(right_padded(ROWS).shape, 0.9))


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
    for threshold in range(5):
        assert torch.equal(changed_less_than(a, a_len, b, b_len, threshold), expected < threshold), threshold
    assert bool((bag_distance(a, a_len, b, b_len) <= expected).all())  # a lower bound, so no row is misjudged


def test_bag_distance_on_hand_made_rows():
    a_rows = [[1, 2, 3, 3], [1, 2, 3], [1, 2]]
    b_rows = [[3, 3, 2, 1], [1, 2, 3, 4], [3, 4]]  # a permutation; one insertion; two substitutions
    a_len, b_len = (torch.tensor([len(r) for r in rows]) for rows in (a_rows, b_rows))
    assert bag_distance(right_padded(a_rows, 4), a_len, right_padded(b_rows, 4), b_len).tolist() == [0, 1, 2]
