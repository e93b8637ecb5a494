"""MergeTrainer (SPEC M7, H6): schedules are pure functions of the step, staged freezing, each loss term logged
(both recipes), resume continues exactly, the per-character baseline learns, and the CLI trains/edits/generates
from a run directory."""

import json
import random

import pytest
import torch
from transformers import TrainerCallback

from genlab.configuration_merge import MergeConfig
from genlab.cli import _configs, build_parser, main
from genlab.tokenization import default_tokenizer
from genlab.trainers.merge import (MergeSchedule, aligned_loss, apply_freezing, build_trainer, trainable_modules,
                                   unrolled_loss)
from genlab.trainers.merge_data import collate, corrupt
from test_merge_model import DRAFTS, TARGETS, st_model, tiny_model

@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """Corpus sentences from every split as a text file (the 90/5/5 hash splits need all three)."""
    from genlab.data import load_corpus

    corpus = load_corpus("all")
    lines = corpus["train"]["text"][:300] + corpus["validation"]["text"][:30] + corpus["test"]["text"][:30]
    path = tmp_path_factory.mktemp("corpus") / "sentences.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def train_args(corpus_file, run_dir, steps=6, *extra):
    """(MergeTrainConfig, TrainingArguments) as `genlab train merge` parses them."""
    return _configs(build_parser().parse_args([
        "train", "merge", "--run-dir", str(run_dir), "--data", str(corpus_file), "--preset", "nano",
        "--max-steps", str(steps), "--save-steps", "3", "--batch-size", "4", "--logging-steps", "1",
        "--report-to", "none", "--rounds", "2", *extra]))


def test_schedules_are_pure_functions_of_the_step():
    s = MergeSchedule(rounds=3, stage1_steps=10, stage2_steps=20, teacher_forcing_steps=15, anneal_steps=100)
    assert [s.stage(t) for t in (0, 9, 10, 19, 20, 500)] == [1, 1, 2, 2, 3, 3]
    config = MergeConfig(tau_gate_start=2.0, tau_gate_end=0.2, tau_del_start=1.0, tau_del_end=0.5)
    tau = lambda t: s.tau_gate(t, config)  # noqa: E731
    assert tau(0) == 2.0 and tau(50) == pytest.approx(1.1) and tau(100) == pytest.approx(0.2) == tau(10**6)
    assert s.tau_del(0, config) == 1.0 and s.tau_del(100, config) == pytest.approx(0.5)  # the config's end points
    assert s.teacher_forcing(14) == 1.0 and s.teacher_forcing(15) == 0.5
    rounds = [s.unrolled_rounds(t) for t in range(200)]
    assert rounds == [s.unrolled_rounds(t) for t in range(200)] and set(rounds) == {1, 2, 3}


def test_staged_freezing_opens_modules_in_order():
    model = tiny_model()
    for stage, open_, closed in [(1, "encoder", ("picker", "inserter", "gate")), (2, "inserter", ("gate",)),
                                 (3, "gate", ())]:
        apply_freezing(model, stage)
        trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
        assert open_ in trainable and not trainable & set(closed)
        assert trainable == set(trainable_modules(stage)) & {n.split(".")[0] for n, _ in model.named_parameters()}


def test_corruption_always_changes_the_draft():
    rng = random.Random(0)
    ids = list(range(30, 60))
    for rate in (0.0, 0.1, 0.5):
        assert corrupt(ids, rate, rng, 100) != ids


@pytest.mark.parametrize("step", [0, 5, 9])
def test_unrolled_loss_returns_every_term(step):
    model = st_model().train()
    schedule = MergeSchedule(rounds=3, stage1_steps=1, stage2_steps=6, recipe="straight_through")
    batch = collate([{"draft_ids": [t for t in d.tolist() if t], "labels": [t for t in y.tolist() if t != -100],
                      "is_edit": True} for d, y in zip(DRAFTS, TARGETS)])
    terms = unrolled_loss(model, batch, schedule, step)
    terms["loss"].backward()
    expected = {"loss", "loss_mlm"} if step == 0 else {"loss", "loss_recon", "loss_gate", "loss_comp", "loss_ins",
                                                       "loss_count", "gate_rate", "deleted_per_row",
                                                       "inserted_per_row", "rounds"}
    assert expected <= set(terms) and all(torch.isfinite(torch.as_tensor(v)).all() for v in terms.values())


def test_per_character_baseline_learns_to_fix_a_substitution():
    """The baseline corrector (same filler, every position predicted from the unmasked draft) overfits one
    same-length pair: its argmax at every position is the target."""
    model = tiny_model(vocab_size=64).train()
    draft, target = [2, 10, 11, 40, 13, 14], [2, 10, 11, 12, 13, 14]
    batch = collate([{"draft_ids": draft, "labels": target, "delete_labels": [0] * 6, "insert_labels": [0] * 6,
                      "is_edit": True}])
    schedule = MergeSchedule(stage1_steps=0, recipe="aligned", objective="per_character", pack_width=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(150):
        aligned_loss(model, batch, schedule, step)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        logits = model(batch["input_ids"], edit=torch.zeros(1), num_insertions=torch.tensor([0])).logits
    assert logits[0, 1:].argmax(-1).tolist() == target[1:]


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_resume_continues_exactly(corpus_file, tmp_path):
    tokenizer = default_tokenizer()
    straight = build_trainer(*train_args(corpus_file, tmp_path / "a"), tmp_path / "a", tokenizer)
    straight.train()
    interrupted = build_trainer(*train_args(corpus_file, tmp_path / "b"), tmp_path / "b", tokenizer, [StopAt(3)])
    interrupted.train()
    assert interrupted.state.global_step == 3
    resumed = build_trainer(*train_args(corpus_file, tmp_path / "b"), tmp_path / "b", tokenizer)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoints" / "checkpoint-3"))
    assert resumed.state.global_step == straight.state.global_step == 6
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    logged = [entry for entry in straight.state.log_history if "merge/loss_recon" in entry]
    assert {"merge/loss_mlm", "merge/loss_gate", "merge/loss_comp", "merge/loss_count", "merge/detect_precision",
            "merge/detect_recall", "merge/gate_rate", "merge/stage"} <= set(logged[-1])


def test_straight_through_recipe_trains_and_logs_its_terms(corpus_file, tmp_path):
    trainer = build_trainer(*train_args(corpus_file, tmp_path / "st", 4, "--recipe", "straight_through",
                                        "--picker", "bottomk", "--inserter", "multinomial"),
                            tmp_path / "st", default_tokenizer())
    trainer.train()
    assert trainer.model.config.recipe == "straight_through"
    logged = [entry for entry in trainer.state.log_history if "merge/loss_ins" in entry]
    assert logged and {"merge/tau_gate", "merge/tau_del", "merge/inserted_per_row"} <= set(logged[-1])


def test_cli_trains_edits_and_generates(corpus_file, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "merge", "--run-dir", str(run_dir), "--data", str(corpus_file), "--preset", "nano",
                 "--max-steps", "2", "--batch-size", "4", "--report-to", "none", "--typo-fuzzy"]) == 0
    manifest = json.loads((run_dir / "genlab_run.json").read_text())
    assert manifest["system"] == "merge" and manifest["typo_noise"]["fuzzy"] is True  # the channel it trained on
    capsys.readouterr()
    assert main(["edit", "--model", str(run_dir), "--rounds", "2", "今天天汽很好。", "这本书很有意思"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(["generate", "--model", str(run_dir), "--max-new-tokens", "8", "今天"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    for fill in ("confusion", "lexicon"):
        assert main(["edit", "--model", str(run_dir), "--detector", "fill", "--fill", fill, "--threshold", "0.9",
                     "--lexicon-weight", "1", "今天天汽很好。"]) == 0
        assert len(capsys.readouterr().out.strip().splitlines()) == 1
    assert main(["edit", "--model", str(run_dir), "--threshold", "1.5", "今天"]) == 2
    assert "--threshold must be in [0, 1], got 1.5" in capsys.readouterr().err
    assert main(["edit", "--model", str(run_dir), ""]) == 2  # empty input in edit mode: one-line error
    assert main(["edit", "--model", str(run_dir), "--rounds", "0", "今天"]) == 2  # not "the default"
    assert "max_rounds must be >= 1" in capsys.readouterr().err
    assert main(["edit", "--model", str(tmp_path / "missing"), "今天"]) == 2
    assert "not a complete genlab run" in capsys.readouterr().err
    manifest = json.loads((run_dir / "genlab_run.json").read_text())
    (run_dir / "genlab_run.json").write_text(json.dumps({**manifest, "system": "ar"}))
    assert main(["edit", "--model", str(run_dir), "今天"]) == 2
    assert "is a 'ar' run; MERGE editing needs a MERGE run" in capsys.readouterr().err


def test_filler_init_copies_the_ar_and_reads_shifted_logits(corpus_file, tmp_path):
    """--filler-init: E's embeddings, layers and norm are the AR's, the t-conditioning starts at zero, and the
    logits at i are the head of the state at i − 1 (as the AR reads them); another preset is refused."""
    from genlab.trainers.ar import build_model

    tokenizer = default_tokenizer()
    ar = build_model("nano", tokenizer, seed=1)
    ar.save_pretrained(tmp_path / "ar")
    config, training = train_args(corpus_file, tmp_path / "m", 2, "--filler-init", str(tmp_path / "ar"))
    model = build_trainer(config, training, tmp_path / "m", tokenizer).model
    assert model.config.shifted_logits
    assert torch.equal(model.embed_tokens.weight, ar.model.embed_tokens.weight)
    for ours, theirs in zip(model.encoder.layers, ar.model.layers):
        assert torch.equal(ours.mlp.down_proj.weight, theirs.mlp.down_proj.weight)
    assert not model.mask_ratio_proj.weight.any() and not model.mask_ratio_proj.bias.any()
    ids = torch.tensor([[tokenizer.bos_token_id, 50, 51, 52]])
    none = torch.zeros(1)
    with torch.no_grad():
        out = model(ids, torch.ones_like(ids), edit=none, num_insertions=none.long())
        head = model.lm_head(out.hidden_states)
    assert torch.allclose(out.logits[:, 1:], head[:, :-1]) and torch.allclose(out.logits[:, 0], head[:, 0])
    build_model("tiny", tokenizer, seed=1).save_pretrained(tmp_path / "wide")
    config, training = train_args(corpus_file, tmp_path / "w", 2, "--filler-init", str(tmp_path / "wide"))
    with pytest.raises(ValueError, match="filler_init"):
        build_trainer(config, training, tmp_path / "w", tokenizer)
