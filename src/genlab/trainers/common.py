"""What every genlab recipe shares: the options beside `TrainingArguments`, their defaults, resuming (SPEC H6).

A recipe is ``train_<system>(config: <System>TrainConfig, training: TrainingArguments | None) -> RunDir``.
The config dataclasses hold every option that is not a `Trainer` option; `TrainingArguments` holds the rest,
so the command line (``HfArgumentParser`` over both, as transformers' example scripts do) reaches every
Trainer option — gradient accumulation, bf16, ``report_to``, … — without re-declaring them here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerState, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME

from ..distributed import is_main_process
from ..runs import CHECKPOINTS, TRAINER_LOG, last_checkpoint
from .callbacks import StopOnInterrupt

LR_SCHEDULERS = ("cosine", "linear", "constant_with_warmup")

# genlab's defaults for the `TrainingArguments` fields every recipe sets; each recipe adds its own
# (``max_steps``, ``learning_rate``, …) in its ``TRAINING_DEFAULTS``.
COMMON_TRAINING_DEFAULTS = dict(
    per_device_train_batch_size=16, weight_decay=0.01, max_grad_norm=1.0, save_steps=200, logging_steps=20,
    save_total_limit=2, eval_strategy="no", report_to="tensorboard", dataloader_num_workers=0,
    lr_scheduler_type="cosine", seed=0,
)


def check_positive(config, *names: str) -> None:
    """``ValueError`` naming the flag of the first field among ``names`` that is set and not > 0."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise ValueError(f"--{name.replace('_', '-')}: must be > 0, got {value}")


def check_choice(config, name: str, allowed) -> None:
    value = getattr(config, name)
    if value not in allowed:
        raise ValueError(f"--{name.replace('_', '-')} must be one of {sorted(allowed)}, got {value!r}")


@dataclass
class TrainConfig:
    """Options every `genlab train SYSTEM` takes besides `TrainingArguments`."""

    run_dir: str = field(default="runs/run", metadata={"help": "where the checkpoint and logs go"})
    data: str = field(default="all", metadata={
        "help": "'news', 'reviews', 'all' (the embedded corpus) or a .txt/.jsonl file"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer directory (default: the corpus tokenizer)"})
    budget: float | None = field(default=None, metadata={
        "help": "wall-clock training budget in seconds: a safety cap (stops early, checkpoint kept)"})
    resume: bool = field(default=True, metadata={
        "help": "resume from RUN_DIR/checkpoints (--no-resume: start over)"})

    def __post_init__(self):
        check_positive(self, "budget")


def default_warmup_steps(max_steps: int) -> int:
    """The warm-up a run gets unless told otherwise: 5 % of the steps, at most 100, at least 1."""
    return min(100, max(1, max_steps // 20))


def default_training_arguments(recipe_defaults: dict, **overrides) -> TrainingArguments:
    """`TrainingArguments` with genlab's defaults, the recipe's, then ``overrides``; the warm-up follows
    ``default_warmup_steps`` unless given."""
    fields = {**COMMON_TRAINING_DEFAULTS, **recipe_defaults, **overrides}
    fields.setdefault("warmup_steps", default_warmup_steps(fields["max_steps"]))
    return TrainingArguments(**fields)


def finalize_training_arguments(training: TrainingArguments, run_dir: Path, **recipe_fields) -> TrainingArguments:
    """The arguments a recipe trains with: checkpoints under ``RUN_DIR/checkpoints``, the data order seeded
    with the run, evaluation batches as large as training ones, the GPU when there is one, and the recipe's
    own fixed fields (``remove_unused_columns``, ``ddp_find_unused_parameters``, …)."""
    return dataclasses.replace(training, output_dir=str(run_dir / CHECKPOINTS), data_seed=training.seed,
                               per_device_eval_batch_size=training.per_device_train_batch_size,
                               use_cpu=not _has_accelerator(), **recipe_fields)


def resume_checkpoint(config: TrainConfig, run_dir: Path) -> str | None:
    """The checkpoint to resume from, unless ``resume`` is off."""
    return last_checkpoint(run_dir) if config.resume else None


class TrainingInterrupted(Exception):
    """Training stopped by Ctrl-C after saving a checkpoint; the run is not exported (rerun to resume)."""


def run_training(trainer, resume: str | None = None):
    """``trainer.train`` with Ctrl-C turned into "save a checkpoint and stop" (``TrainingInterrupted``); the log
    history is written to ``RUN_DIR/trainer_log.json`` and a resumed run's loss covers all its steps."""
    guard = StopOnInterrupt()
    trainer.add_callback(guard)
    result = trainer.train(resume_from_checkpoint=resume)
    if guard.interrupted:
        raise TrainingInterrupted(f"interrupted at step {trainer.state.global_step}; the checkpoint is in "
                                  f"{trainer.args.output_dir}: run the same command again to resume")
    if is_main_process():  # the run's curves, beside the model (plots, cards and the demo read them)
        log = Path(trainer.args.output_dir).parent / TRAINER_LOG
        log.write_text(json.dumps(trainer.state.log_history, indent=1), encoding="utf-8")
    return result if resume is None else result._replace(training_loss=whole_run_loss(trainer, result, resume))


def whole_run_loss(trainer, result, checkpoint: str) -> float:
    """The mean training loss over every step of a resumed run. The Trainer averages only the steps it took
    itself; the steps before ``checkpoint`` come from its logged losses (each the mean of its logging interval)."""
    start = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME)).global_step
    total, logged = 0.0, 0
    for entry in trainer.state.log_history:
        if "loss" in entry and logged < entry["step"] <= start:
            total += entry["loss"] * (entry["step"] - logged)
            logged = entry["step"]
    resumed_steps = result.global_step - start
    return (total + result.training_loss * resumed_steps) / max(logged + resumed_steps, 1)


def announce(message: str) -> None:
    """One line on the main process only (no duplicated logs under DDP)."""
    if is_main_process():
        print(f"[genlab] {message}")


def _has_accelerator() -> bool:
    return torch.cuda.is_available()
