"""The autoregressive yardstick: `genlab train ar` (issue: foundation §4, SPEC H6)."""

import os
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from genlab.cli import main
from genlab.presets import qwen2_config
from genlab.runs import CHECKPOINTS, MANIFEST, export_run, read_manifest


def train_args(run_dir, data, *extra):
    return ["train", "ar", "--preset", "nano", "--run-dir", str(run_dir), "--data", str(data),
            "--batch-size", "4", "--block-size", "32", "--eval-blocks", "8", "--report-to", "none",
            "--logging-steps", "2", *extra]


def weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def test_train_writes_a_loadable_checkpoint_with_measured_perplexity(tmp_path, small_corpus):
    run_dir = tmp_path / "ar"
    assert main(train_args(run_dir, small_corpus, "--max-steps", "6")) == 0
    manifest = read_manifest(run_dir)
    assert manifest["system"] == "ar" and manifest["steps"] == 6
    assert 1.0 < manifest["val_ppl"] < 1e5
    model = AutoModelForCausalLM.from_pretrained(run_dir)
    assert model.generation_config.max_new_tokens == 64
    assert main(["generate", "--model", str(run_dir), "--greedy", "--max-new-tokens", "5", "新华社"]) == 0
    weights = run_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # an interrupted copy: one clear error, no traceback
    assert main(["generate", "--model", str(run_dir), "--max-new-tokens", "5", "新华社"]) == 2


def test_resume_continues_at_the_same_step_and_matches_an_uninterrupted_run(tmp_path, small_corpus):
    full = tmp_path / "full"
    assert main(train_args(full, small_corpus, "--max-steps", "8", "--save-steps", "4")) == 0
    # An interrupted twin: the same run cut after its step-4 checkpoint, then resumed.
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(full / CHECKPOINTS / "checkpoint-4", cut / CHECKPOINTS / "checkpoint-4")
    assert main(train_args(cut, small_corpus, "--max-steps", "8", "--save-steps", "4")) == 0
    manifest = read_manifest(cut)
    assert manifest["steps"] == 8 and manifest["resumed_from"].endswith("checkpoint-4")
    # the manifest's loss is the whole run's, not only the 4 resumed steps' (the Trainer's own figure)
    assert manifest["train_loss"] == pytest.approx(read_manifest(full)["train_loss"], rel=1e-4)
    a, b = weights(full), weights(cut)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def test_same_seed_gives_the_same_model(tmp_path, small_corpus):
    for name in ("a", "b"):
        assert main(train_args(tmp_path / name, small_corpus, "--max-steps", "3", "--no-resume")) == 0
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_preset_is_rejected():
    with pytest.raises(ValueError, match="preset must be one of"):
        qwen2_config("huge", 100)
    with pytest.raises(SystemExit):
        main(["train", "ar", "--preset", "huge"])


@pytest.mark.parametrize("content, message", [(None, "not found"), (b"", "empty"), (b"\xff\xfe\xfa", "not UTF-8")])
def test_bad_data_file_is_one_clear_error_and_leaves_nothing_half_written(tmp_path, capsys, content, message):
    data = tmp_path / "data.txt"
    if content is not None:
        data.write_bytes(content)
    run_dir = tmp_path / "run"
    assert main(train_args(run_dir, data, "--max-steps", "2")) == 2
    assert message in capsys.readouterr().err
    assert not (run_dir / MANIFEST).exists() and not list(run_dir.glob(".export-*"))


def test_incomplete_tokenizer_directory_is_reported(tmp_path, small_corpus, capsys):
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer_config.json").write_text("{}")
    assert main(train_args(tmp_path / "run", small_corpus, "--tokenizer", str(tok_dir))) == 2
    assert "missing tokenizer.json" in capsys.readouterr().err


def test_unwritable_run_directory_is_reported(tmp_path, small_corpus, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(train_args(blocker / "run", small_corpus)) == 2
    assert "not writable" in capsys.readouterr().err


def test_export_interrupted_midway_leaves_no_manifest_and_no_temp_dir(tmp_path):
    def failing_save(tmp):
        (tmp / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_run(tmp_path / "run", failing_save, {"system": "ar"})
    assert not (tmp_path / "run" / MANIFEST).exists()
    assert not list((tmp_path / "run").glob(".export-*"))


def test_card_and_push_commands_on_an_ar_run(tmp_path, small_corpus, hub_server, capsys):
    run_dir = tmp_path / "ar"
    assert main([*train_args(run_dir, small_corpus, "--max-steps", "2"), "--report-to", "tensorboard"]) == 0
    assert main(["card", str(run_dir)]) == 0
    card = (run_dir / "README.md").read_text(encoding="utf-8")
    assert "library_name: transformers" in card and "genlab-ar" in card
    assert main(["push", str(run_dir), "local-user/ar-nano-cli", "--endpoint", hub_server.endpoint]) == 0
    pushed = set(hub_server.list_files("local-user/ar-nano-cli"))
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= pushed
    assert not any(name.startswith("checkpoints/") for name in pushed)
    assert any(name.startswith("runs/") and ".tfevents." in name for name in pushed)  # the Hub's TensorBoard tab
    capsys.readouterr()
    assert main(["push", str(run_dir), "local-user/x", "--endpoint", "http://127.0.0.1:9"]) == 2
    assert "could not reach the Hub at http://127.0.0.1:9" in capsys.readouterr().err


def test_schedule_flags_reach_training_arguments_and_bad_ones_are_refused(tmp_path):
    from genlab.cli import _configs, build_parser
    from genlab.trainers.common import finalize_training_arguments

    parse = lambda *extra: _configs(build_parser().parse_args(["train", "ar", "--preset", "nano", *extra]))  # noqa: E731
    config, default = parse("--max-steps", "400")
    assert (default.lr_scheduler_type, default.warmup_steps) == ("cosine", 20)
    assert finalize_training_arguments(default, tmp_path).output_dir == str(tmp_path / "checkpoints")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "ar", "--lr-scheduler", "cosine_with_restarts_and_sparkles"])


def test_every_trainer_option_reaches_the_command_line_and_short_flags_stay():
    from genlab.cli import _configs, build_parser

    config, training = _configs(build_parser().parse_args(
        ["train", "ar", "--gradient-accumulation-steps", "4", "--lr", "0.01", "--batch-size", "3", "--seed", "7",
         "--report-to", "none", "--block-size", "64"]))
    assert (training.gradient_accumulation_steps, training.learning_rate, training.per_device_train_batch_size,
            training.seed, training.report_to) == (4, 0.01, 3, 7, [])
    assert config.block_size == 64 and config.run_dir == "runs/ar-tiny"


def test_a_bad_option_value_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit):
        main(["train", "ar", "--budget", "-1"])
    assert "--budget: must be > 0" in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint_and_the_same_command_resumes_from_it(tmp_path, small_corpus, capsys, monkeypatch):
    from genlab.trainers.callbacks import StopOnInterrupt

    step_end = StopOnInterrupt.on_step_end

    def interrupt_at_step_3(self, args, state, control, **kwargs):
        if state.global_step == 3 and not self.interrupted:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C delivers; the handler runs before the next line
        return step_end(self, args, state, control, **kwargs)

    monkeypatch.setattr(StopOnInterrupt, "on_step_end", interrupt_at_step_3)
    handler_before = signal.getsignal(signal.SIGINT)
    run_dir = tmp_path / "ar"
    command = train_args(run_dir, small_corpus, "--max-steps", "6", "--save-steps", "100")
    assert main(command) == 130
    assert "interrupted at step 3" in capsys.readouterr().err
    assert (run_dir / CHECKPOINTS / "checkpoint-3").is_dir() and not (run_dir / MANIFEST).exists()
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler is put back
    monkeypatch.setattr(StopOnInterrupt, "on_step_end", step_end)
    assert main(command) == 0
    manifest = read_manifest(run_dir)
    assert manifest["steps"] == 6 and manifest["resumed_from"].endswith("checkpoint-3")
