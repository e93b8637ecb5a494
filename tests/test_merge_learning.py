"""MERGE's aligned recipe learns what it exists for (issue 12): edit scripts on hand-made examples, aligned
fill targets, gradients into every head, and a tiny model that overfits a few (draft, target) pairs repairs
them exactly, leaves a clean sentence alone and ranks the planted wrong character first."""

import math
import random
from collections import Counter

import pytest
import torch

from genlab.bench.csc import auc, csc_scores, padded, rate_upper_bound
from genlab.bench.merge import best_row, edit_sweep, fitting_pairs, merge_correct, validation_pairs
from genlab.bench.merge_diagnostics import confusion_coverage, diagnose_batch
from genlab.data import load_corpus
from genlab.edits import apply_edit_labels, changed_positions, edit_labels
from genlab.generation_refinement import substitution_candidates
from genlab.spelling import (LexiconFillProcessor, TypoNoise, character_frequencies, confusion_sets, fill_rule,
                             fuzzy_readings, pycorrector_eval500, sighan15, substitute, typo_noise)
from genlab.tokenization import default_tokenizer
from genlab.trainers.merge import MergeSchedule, aligned_loss
from genlab.trainers.merge_data import collate, pack_rows
from test_merge_model import BOS, MASK, PAD, grad_norm, tiny_model

# -- edit scripts -----------------------------------------------------------------------------------------------------
SCRIPTS = [  # (draft, target, delete, insert): <s> = 2
    ([2, 10, 11, 40, 13], [2, 10, 11, 12, 13], [0, 0, 0, 1, 0], [0, 0, 1, 0, 0]),  # substitution: delete + refill
    ([2, 20, 41, 21], [2, 20, 21], [0, 0, 1, 0], [0, 0, 0, 0]),  # a stray character
    ([2, 30, 32], [2, 30, 31, 32], [0, 0, 0], [0, 1, 0]),  # a missing one
    ([2, 33], [2, 50, 51, 33], [0, 0], [2, 0]),  # missing at the start: the gap after <s>
    ([2, 60, 61], [2, 60, 61], [0, 0, 0], [0, 0, 0]),  # clean
    ([2], [2, 70, 71, 72], [0], [3]),  # generation from <s>
]


@pytest.mark.parametrize("draft,target,delete,insert", SCRIPTS)
def test_edit_labels_on_hand_made_scripts(draft, target, delete, insert):
    labels = edit_labels(draft, target)
    assert (labels.delete, labels.insert) == (delete, insert)
    assert apply_edit_labels(draft, labels) == target
    with_masks = apply_edit_labels(draft, labels, mask_id=MASK)
    assert len(with_masks) == len(target) and with_masks.count(MASK) == sum(insert)
    assert [t for m, t in zip(with_masks, target) if m == MASK] == labels.fill  # each mask's own target


def test_edit_labels_need_a_shared_first_token():
    with pytest.raises(ValueError, match="bos"):
        edit_labels([10, 11], [2, 11])


def test_changed_positions_are_the_source_indices_an_output_edits():
    assert changed_positions(list("今天天汽很好"), list("今天天气很好")) == {3}
    assert changed_positions(list("abc"), list("abc")) == set()
    assert changed_positions(list("abc"), list("ac")) == {1}


def pairs_batch(pairs):
    features = []
    for draft, target in pairs:
        script = edit_labels(draft, target)
        features.append({"draft_ids": draft, "labels": target, "delete_labels": script.delete,
                         "insert_labels": script.insert, "is_edit": True})
    return collate(features)


def test_aligned_round_scores_each_mask_against_its_own_target():
    """B1: with the edit script as the round's decisions, Ŝ holds the kept tokens and one mask per missing
    target token, so Y* at the same index IS each mask's target — and the kept tokens equal Y* too."""
    model = tiny_model().train()
    batch = pairs_batch([(d, t) for d, t, _, _ in SCRIPTS[:4]])
    out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"],
                delete_labels=batch["delete_labels"], insert_labels=batch["insert_labels"])
    valid = out.attention_mask.bool()
    target = torch.nn.functional.pad(batch["labels"], (0, out.fused_ids.shape[1] - batch["labels"].shape[1]),
                                     value=-100)
    assert torch.equal(valid, target != -100)
    assert torch.equal(out.fused_ids[valid & ~out.mask_positions], target[valid & ~out.mask_positions])
    assert out.mask_positions.sum().item() == batch["insert_labels"].sum().item()


def test_aligned_losses_reach_picker_inserter_gate_and_filler():
    model = tiny_model().train()
    batch = pairs_batch([(d, t) for d, t, _, _ in SCRIPTS[:4]])
    out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"],
                delete_labels=batch["delete_labels"], insert_labels=batch["insert_labels"])
    assert torch.allclose(out.loss, out.loss_recon + out.loss_comp + out.loss_count + out.loss_gate)
    out.loss.backward()
    for name in ("picker.score.0.weight", "inserter.gap_head.weight", "inserter.deleted_embedding.weight",
                 "inserter.encoder.layers.0.self_attn.q_proj.weight", "gate.mlp.0.weight",
                 "encoder.layers.0.mlp.up_proj.weight", "mask_ratio_proj.weight"):
        assert grad_norm(model, name) > 0, name


def test_aligned_training_needs_the_edit_script():
    model = tiny_model().train()
    batch = pairs_batch([(d, t) for d, t, _, _ in SCRIPTS[:2]])
    with pytest.raises(ValueError, match="delete_labels and insert_labels"):
        model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])


# -- learning ---------------------------------------------------------------------------------------------------------
TRAIN = [([BOS, 10, 11, 40, 13, 14], [BOS, 10, 11, 12, 13, 14]),  # a wrong character
         ([BOS, 20, 21, 22, 41, 23, 24], [BOS, 20, 21, 22, 23, 24]),  # a stray one
         ([BOS, 30, 31, 33, 34], [BOS, 30, 31, 32, 33, 34]),  # a missing one
         ([BOS, 50, 51, 52, 53], [BOS, 50, 51, 52, 53])]  # clean


def train_on_pairs(pairs=TRAIN, steps: int = 300, **overrides):
    """A tiny MERGE trained for a fixed number of aligned steps on ``pairs`` (packed MLM + one teacher-forced
    round)."""
    model = tiny_model(**{"vocab_size": 64, **overrides}).train()
    batch = pairs_batch(pairs)
    schedule = MergeSchedule(stage1_steps=0, recipe="aligned", pack_width=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        aligned_loss(model, batch, schedule, step)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), batch


@pytest.fixture(scope="module")
def overfit():
    return train_on_pairs()


@pytest.mark.parametrize("mode", ["edit", "auto"])
def test_overfit_model_repairs_its_training_pairs_exactly(overfit, mode):
    model, batch = overfit
    out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], mode=mode, max_rounds=3)
    assert [row[row != PAD].tolist() for row in out] == [target for _, target in TRAIN]


def test_shifted_logits_filler_learns_the_same_repairs():
    """shifted_logits (the AR-initialised filler's read-out): trained the same way, it repairs every pair."""
    model, batch = train_on_pairs(shifted_logits=True)
    out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], mode="edit", max_rounds=3)
    assert [row[row != PAD].tolist() for row in out] == [target for _, target in TRAIN]


def test_overfit_model_leaves_a_clean_sentence_unchanged(overfit):
    model, _ = overfit
    clean = torch.tensor([TRAIN[3][1]])
    out = model.generate(clean, mode="auto", max_rounds=3, return_dict_in_generate=True)
    assert out.sequences[0].tolist() == TRAIN[3][1] and out.rounds.item() == 1
    assert out.deleted[0].sum() == 0 and out.inserted[0, 0] == 0


def test_picker_ranks_the_planted_wrong_character_first(overfit):
    model, batch = overfit
    with torch.no_grad():
        out = model(batch["input_ids"][:2], batch["attention_mask"][:2], edit=torch.ones(2))
    planted = [3, 4]  # 40 in row 0, 41 in row 1
    assert out.delete_prob.argmax(-1).tolist() == planted
    assert (out.delete_prob[[0, 1], planted] > model.config.delete_threshold).all()


def progression(start: int, wrong_at: int | None = None, wrong: int = 0) -> list[int]:
    """<s> s, s+1, …, s+5: a language where every token follows from its neighbours; ``wrong_at`` (1..6)
    substitutes ``wrong`` there."""
    row = [BOS] + list(range(start, start + 6))
    if wrong_at is not None:
        row[wrong_at] = wrong
    return row


@pytest.fixture(scope="module")
def progressions():
    """Trained on 24 progressions, each clean and with one token substituted (by 40..63) at two places; the
    filler learns a language in which a token is predictable from its context, what a masked-LM detector needs."""
    pairs = []
    for start in range(10, 34):
        pairs += [(progression(start, 1 + start % 6, 40 + start * 7 % 24), progression(start)),
                  (progression(start, 1 + (start + 2) % 6, 40 + start * 5 % 24), progression(start)),
                  (progression(start), progression(start))]
    return train_on_pairs(pairs)[0]


def test_fill_detector_finds_and_repairs_unseen_substitutions(progressions):
    """detector='fill' on drafts not trained on (another place, another wrong token): the filler alone, each
    token masked in turn, gives the substituted token P(wrong) ≈ 1 and every token of a clean row < 0.5, and
    one edit round with it repairs each draft and leaves the clean rows as they are."""
    model = progressions
    places = [1 + (start + 4) % 6 for start in range(12, 28, 3)]
    drafts = [progression(start, at, 40 + start * 11 % 24) for start, at in zip(range(12, 28, 3), places)]
    rows = drafts + [progression(start) for start in (11, 17, 23)]
    ids = torch.tensor(rows)
    wrong = model.fill_wrong_prob(ids, torch.ones_like(ids))
    assert wrong[: len(drafts)].argmax(-1).tolist() == places
    assert (wrong[: len(drafts)].amax(-1) > 0.99).all() and (wrong[len(drafts):] < 0.5).all()
    out = model.generate(ids, mode="edit", max_rounds=1, detector="fill")
    assert out.tolist() == [progression(row[1]) for row in rows]


@pytest.fixture(scope="module")
def sweep_model():
    """A model trained a little on four texts, so P(wrong) is spread and rows edit over different numbers of rounds."""
    tokenizer = default_tokenizer()
    texts = ["今天天气很好。", "我们去公园散步", "这本书很有意思啊", "好"]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    model, _ = train_on_pairs([(row[:2] + row[3:2:-1] + row[2:3] + row[4:], row) for row in ids if len(row) > 4]
                              + [(row, row) for row in ids], steps=40, vocab_size=len(tokenizer))
    return model, tokenizer, texts


@pytest.mark.parametrize("detector", ["fill", "picker"])
def test_edit_sweep_equals_one_run_per_threshold_and_round_cap(sweep_model, detector):
    """The bench's sweep gives, at every (threshold, round cap), what edit mode gives when run with that threshold
    and max_rounds (the fill detector's from a single run at the lowest threshold)."""
    model, tokenizer, texts = sweep_model
    batch = padded(tokenizer, texts)
    first = model.generate(**batch, mode="edit", max_rounds=1, detector=detector, return_dict_in_generate=True)
    tops = first.top_delete_prob[:, 0].sort().values.tolist()  # the rows' highest P(wrong) in round 1
    grid = [tops[0] - 1e-4] + [(a + b) / 2 for a, b in zip(tops, tops[1:])] + [1.0]
    swept = edit_sweep(model, tokenizer, texts, grid, batch_size=3, mode="edit", max_rounds=3, detector=detector)
    assert sorted(swept) == [(t, r) for t in grid for r in (1, 2, 3)]
    for (threshold, rounds), outputs in swept.items():
        model.config.delete_threshold = threshold
        assert outputs == merge_correct(model, tokenizer, texts, 3, detector=detector, mode="edit",
                                        max_rounds=rounds), (threshold, rounds)
    assert swept[grid[-1], 3] == texts and len({tuple(v) for v in swept.values()}) > 2


def test_confusion_candidates_keep_the_repair_or_forbid_it(overfit):
    """fill_candidates: with 40 → 12 allowed the planted character is still repaired; with every token allowed
    only itself the substitution is undone and row 0 comes back as it went in."""
    model, batch = overfit
    itself = torch.eye(64, dtype=torch.bool)
    confusable = itself.clone()
    confusable[40, 12] = True
    kwargs = dict(mode="edit", max_rounds=3)
    repaired = model.generate(batch["input_ids"][:1], fill_candidates=confusable, **kwargs)
    assert repaired[0].tolist() == TRAIN[0][1]
    kept = model.generate(batch["input_ids"][:1], fill_candidates=itself, **kwargs)
    assert kept[0].tolist() == TRAIN[0][0]
    overruled = model.generate(batch["input_ids"][:1], fill_candidates=confusable, fill_processor=ruling_out(12),
                               **kwargs)  # the processor's scores decide the fill: 12 is out, 40 is what is left
    assert overruled[0].tolist() == TRAIN[0][0]


def ruling_out(token: int):
    """A FillProcessor that forbids ``token``."""
    return lambda input_ids, positions, scores: scores.index_fill(-1, torch.tensor([token]),
                                                                  torch.finfo(scores.dtype).min)


def test_lexicon_prior_rewards_the_candidate_that_forms_a_word():
    """今天天汽很好 with 汽 being filled, candidates 气 / 汽 / 器: only 气 forms words with its neighbours (天气 100,
    天气很好 1000: the most frequent counts), so only it gains 0.5 · log(1001); 汽车 needs a 车 that is not
    there; tokens ruled out before stay ruled out."""
    tokenizer = default_tokenizer()
    processor = LexiconFillProcessor(tokenizer, weight=0.5, words={"天气": 100, "天气很好": 1000, "汽车": 50})
    ids = torch.tensor([tokenizer("今天天汽很好")["input_ids"]])  # <s> 今 天 天 汽 很 好
    vocab, lowest = tokenizer.get_vocab(), torch.finfo(torch.float).min
    scores = torch.full((1, len(tokenizer)), lowest)
    scores[0, [vocab[c] for c in "气汽器"]] = torch.tensor([1.0, 2.0, 3.0])
    out = processor(ids, torch.tensor([4]), scores)
    assert out[0, [vocab[c] for c in "气汽器"]].tolist() == pytest.approx([1.0 + 0.5 * math.log(1001), 2.0, 3.0])
    assert (out == lowest).sum() == len(tokenizer) - 3
    assert processor.bonus("", "车", "汽") == pytest.approx(math.log(51)) and processor.bonus("", "", "汽") == 0
    doubled = processor.reweighted(1.0)  # the same word table at twice the weight; the original keeps its own
    assert doubled(ids, torch.tensor([4]), scores)[0, vocab["气"]] == pytest.approx(1.0 + math.log(1001))
    assert doubled.log_counts is processor.log_counts and processor.weight == 0.5
    with pytest.raises(ValueError, match="fill must be one of"):
        fill_rule(tokenizer, "kenlm")


def test_substitution_candidates_on_a_hand_made_round():
    """<s> 10 [11] 12 [13] with 11 and 13 deleted; two masks after 10 (the first substitutes 11, the second is a
    pure insertion) and one after 12 (substitutes 13); then <s> M 10 M over <s> 10 [11]: the mask after <s>
    inserts, the one after 10 substitutes 11."""
    table = torch.eye(20, dtype=torch.bool)
    table[11, 15] = True
    ids, valid = torch.tensor([[BOS, 10, 11, 12, 13]]), torch.ones(1, 5, dtype=torch.bool)
    deletions = torch.tensor([[0.0, 0, 1, 0, 1]])
    masks = torch.tensor([[False, False, True, True, False, True]])
    allowed = substitution_candidates(ids, valid, deletions, masks, table)
    assert allowed[0, 2].nonzero().flatten().tolist() == [11, 15]
    assert allowed[0, 5].nonzero().flatten().tolist() == [13]
    assert allowed[0, [0, 1, 3, 4]].all()
    ids, valid = torch.tensor([[BOS, 10, 11]]), torch.ones(1, 3, dtype=torch.bool)
    allowed = substitution_candidates(ids, valid, torch.tensor([[0.0, 0, 1]]),
                                      torch.tensor([[False, True, False, True]]), table)
    assert allowed[0, 1].all() and allowed[0, 3].nonzero().flatten().tolist() == [11, 15]


def test_auc_on_hand_made_scores():
    wrong = torch.tensor([True, False, False, True])
    assert auc(torch.tensor([0.9, 0.1, 0.2, 0.8]), wrong) == 1.0
    assert auc(torch.tensor([0.1, 0.9, 0.8, 0.2]), wrong) == 0.0
    assert auc(torch.tensor([0.5, 0.5, 0.1, 0.3]), wrong) == 0.625  # (1 + 0.5 + 1 + 0) / 4: a tie counts half


def test_the_fpr_cap_is_on_the_upper_end_of_a_wilson_interval():
    # 10 % of 500 clean sentences: (0.1 + z²/1000 + z·sqrt(0.09/500 + z²/10⁶)) / (1 + z²/500), z = 1.645
    assert rate_upper_bound(0.1, 500, 0.95) == pytest.approx(0.12427, abs=1e-4)
    assert rate_upper_bound(0.1, 500, 0.5) == pytest.approx(0.1) and rate_upper_bound(0.0, 500, 0.95) > 0
    assert rate_upper_bound(0.0, 0, 0.95) == 1.0
    curve = [{"threshold": 0.9, "correction_f1": 0.5, "clean_fpr": 0.09, "clean_fpr_bound": 0.115},
             {"threshold": 0.99, "correction_f1": 0.4, "clean_fpr": 0.07, "clean_fpr_bound": 0.092}]
    assert best_row(curve, 0.1)["threshold"] == 0.99  # 9 % measured is not enough: the bound must be under 10 %
    assert best_row(curve, 0.05)["threshold"] == 0.99  # none qualifies: the lowest bound


def test_diagnostics_find_and_fill_the_planted_character(overfit):
    """TRAIN[0] has 40 where 12 belongs, TRAIN[3] is clean: the overfit Picker ranks 40 above every other token
    (AUC 1), and told where the error is, the filler writes 12 when 40 → 12 is allowed and cannot when only 40
    itself is — the oracle figure follows the candidates, it is not read off the gold row."""
    model, _ = overfit
    rows = [TRAIN[0][0], TRAIN[3][0] + [PAD]]  # (draft, gold) pairs of equal length
    ids, gold = torch.tensor(rows), torch.tensor([TRAIN[0][1], TRAIN[3][1] + [PAD]])
    valid = ids != PAD
    confusable = torch.eye(64, dtype=torch.bool)
    confusable[40, 12] = True
    found = diagnose_batch(model, model, ids, valid, gold, confusable, unk_id=1, fill_processor=ruling_out(12))
    assert found["wrong"].sum() == 1 and auc(found["merge_score"], found["wrong"]) == 1.0
    assert found["merge_right"].tolist() == [True]
    assert found["merge_lexicon_right"].tolist() == [False]  # the processor's fill: 12 ruled out
    kept = diagnose_batch(model, model, ids, valid, gold, torch.eye(64, dtype=torch.bool), unk_id=1,
                          fill_processor=ruling_out(50))
    assert kept["merge_right"].tolist() == [False] and kept["baseline_right"].tolist() == [False]


def test_confusion_coverage_counts_the_wrong_characters_the_candidates_can_reach():
    tokenizer = default_tokenizer()
    sources, targets = ["他很好", "应为下雨", "我很好", "天汽好"], ["她很好", "因为下雨", "我很好", "天马好"]
    fuzzy = fill_rule(tokenizer, "fuzzy")["fill_candidates"]
    assert confusion_coverage(tokenizer, sources[:2], targets[:2], fuzzy) == 1.0  # ta / ta; ying / yin
    assert confusion_coverage(tokenizer, sources, targets, fuzzy) == 2 / 3  # the clean pair has none; 汽 → 马 no
    plain = fill_rule(tokenizer, "confusion")["fill_candidates"]  # pycorrector's lists: 他 has no line
    assert confusion_coverage(tokenizer, sources[:1], targets[:1], plain) == 0.0


def test_untrained_model_does_not_already_repair(overfit):
    """The repair above is learned: the same architecture before training does not do it."""
    _, batch = overfit
    model = tiny_model(vocab_size=64).eval()
    out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], mode="edit", max_rounds=3)
    assert [row[row != PAD].tolist() for row in out] != [target for _, target in TRAIN]


# -- data ---------------------------------------------------------------------------------------------------------------
def test_pack_rows_lays_the_batch_text_end_to_end():
    labels = torch.tensor([[2, 10, 11, 12, -100], [2, 20, 21, 22, 23]])
    assert pack_rows(labels, bos_id=2, width=4).tolist() == [[2, 10, 11, 12], [2, 20, 21, 22], [2, 23, -100, -100]]


def test_typo_noise_uses_confusion_sets_and_leaves_clean_rows():
    table = confusion_sets()
    assert "气" in table["汽"] or "汽" in table["气"]
    sentence = "我们今天下午去公园散步，天气很好。"
    frequencies = dict.fromkeys(set(sentence) | {c for similar in table.values() for c in similar}, 1)
    rng = random.Random(0)
    drafts = [typo_noise(sentence, rng, frequencies, TypoNoise(clean_fraction=0.25)) for _ in range(400)]
    clean = sum(d == sentence for d in drafts) / len(drafts)
    assert 0.15 < clean < 0.4
    substituted = [d for d in drafts if len(d) == len(sentence) and d != sentence]
    assert len(substituted) > 0.5 * len(drafts)
    for draft in substituted[:50]:
        for wrong, right in zip(draft, sentence):
            # a substitute is confusable with the character it replaced (or a transposition of neighbours)
            assert wrong == right or wrong in table.get(right, ()) or wrong in sentence


def test_fuzzy_readings_swap_one_initial_pair_and_one_final_pair():
    assert fuzzy_readings("shang") == {"shang", "sang", "shan", "san"}
    assert fuzzy_readings("lin") == {"lin", "ling", "nin", "ning", "rin", "ring"}  # l/n, l/r; in/ing
    assert fuzzy_readings("hu") == {"hu", "fu"} and fuzzy_readings("ma") == {"ma"}


def test_fuzzy_confusion_sets_keep_the_plain_lists_first_and_add_what_they_miss():
    plain, fuzzy = confusion_sets(), confusion_sets(fuzzy=True)
    assert all(fuzzy[char][: len(similar)] == similar for char, similar in plain.items())
    assert "她" in fuzzy["他"] and "她" not in plain.get("他", ())  # same reading, missing from pycorrector's list
    assert "因" in fuzzy["应"] and "因" not in plain["应"]  # ying / yin
    assert substitute("他", random.Random(0), {"她": 5}, TypoNoise(fuzzy=True)) == "她"
    assert substitute("他", random.Random(0), {"她": 5}, TypoNoise()) is None
    tokenizer = default_tokenizer()
    wide, narrow = fill_rule(tokenizer, "fuzzy", 2.0), fill_rule(tokenizer, "lexicon")
    assert bool((wide["fill_candidates"] >= narrow["fill_candidates"]).all())
    assert wide["fill_candidates"].sum() > narrow["fill_candidates"].sum() and wide["fill_processor"].weight == 2.0


def test_character_frequencies_count_only_writable_characters():
    assert character_frequencies(["天气好", "天天"], vocabulary="天气汽") == {"天": 3, "气": 1, "汽": 0}


def test_typo_substitutes_are_drawn_by_frequency_then_rank():
    char = "气"
    first, second = [c for c in confusion_sets()[char] if c != char][:2]  # ranks 0 and 1 of 气's list
    def draws(frequencies, power):
        rng = random.Random(0)
        return Counter(substitute(char, rng, frequencies, TypoNoise(frequency_power=power)) for _ in range(2000))
    by_frequency = draws({first: 0, second: 999}, power=1.0)
    assert by_frequency[second] > 50 * by_frequency[first]  # weights 1 : 1000·e^-0.3 ≈ 1 : 740
    by_rank = draws({first: 0, second: 999}, power=0.0)
    assert 1.1 < by_rank[first] / by_rank[second] < 1.7  # e^0.3 ≈ 1.35, whatever the counts
    assert substitute(char, random.Random(0), {"天": 5}, TypoNoise()) is None  # no writable confusable


def test_the_fuzzy_training_channel_writes_confusions_the_narrow_lists_lack():
    """``--typo-fuzzy``: 他 → 她 (same reading, missing from pycorrector's lists) is a typo of the fuzzy channel
    only, and the trainer's channel follows the flag."""
    from genlab.trainers.merge import MergeTrainConfig, typo_channel

    only_she = {"她": 100}
    assert substitute("他", random.Random(0), only_she, TypoNoise()) is None
    fuzzy = typo_channel(MergeTrainConfig(typo_fuzzy=True))
    assert fuzzy.fuzzy and substitute("他", random.Random(0), only_she, fuzzy) == "她"
    assert not typo_channel(MergeTrainConfig()).fuzzy


def test_sighan15_is_the_published_test_set():
    pairs = sighan15()
    assert len(pairs) == 707 and sum(s != t for s, t in pairs) == 373


def test_pycorrector_eval500_is_a_second_test_set_apart_from_sighan15():
    pairs = pycorrector_eval500()
    assert len(pairs) == 500 and sum(s != t for s, t in pairs) == 299
    assert all(len(s) == len(t) for s, t in pairs)  # substitutions only
    assert not {text for pair in pairs for text in pair} & {text for pair in sighan15() for text in pair}
    fitting = fitting_pairs(default_tokenizer(), pairs, 256)  # what the bench scores: <s> + text within 256
    assert len(fitting) == 498 and sum(s != t for s, t in fitting) == 299  # the two dropped are clean
    assert fitting_pairs(default_tokenizer(), [("今天天汽很好", "今天天气很好")], 7) == [("今天天汽很好", "今天天气很好")]
    assert fitting_pairs(default_tokenizer(), [("今天天汽很好", "今天天气很好")], 6) == []


def test_validation_pairs_sample_the_whole_split_half_clean():
    corpus = load_corpus("all")["validation"]
    source = {text: kind for text, kind in zip(corpus["text"], corpus["source"])}
    drafts, sentences = validation_pairs(default_tokenizer(), 200)
    kinds = Counter(source[s] for s in sentences)
    assert len(sentences) == 200 and all(8 <= len(s) <= 64 for s in sentences)
    assert kinds["news"] >= 40 and kinds["reviews"] >= 80  # the split is about 35 % news, 65 % reviews
    assert 70 <= sum(d == s for d, s in zip(drafts, sentences)) <= 130  # half stay clean


def test_csc_scores_on_hand_made_outputs():
    sources = ["今天天汽很好", "我很高兴", "他门来了"]
    targets = ["今天天气很好", "我很高兴", "他们来了"]
    predictions = ["今天天气很好", "我很高心", "他门来了"]  # one fixed, one clean broken, one missed
    scores = csc_scores(sources, targets, predictions)
    assert scores["correction_precision"] == 0.5 and scores["correction_recall"] == 0.5  # TP 1, FP 1, FN 1
    assert scores["clean_fpr"] == 1.0
    assert scores["detection_precision"] == 0.5 and scores["detection_recall"] == 0.5
    assert csc_scores(sources, targets, sources)["correction_f1"] == 0.0  # the identity corrects nothing
