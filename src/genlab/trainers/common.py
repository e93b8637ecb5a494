"""What every genlab trainer shares: command-line options, `TrainingArguments`, the time budget (SPEC H6)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from transformers import TrainerCallback, TrainingArguments

from ..distributed import any_process
from ..runs import CHECKPOINTS, last_checkpoint


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {text}")
    return value


LR_SCHEDULERS = ("cosine", "linear", "constant_with_warmup")


def add_common_arguments(parser: argparse.ArgumentParser, *, default_run_dir: str, max_steps: int,
                         batch_size: int, lr: float, lr_scheduler: str = "cosine") -> None:
    """Options every `genlab train SYSTEM` takes."""
    parser.add_argument("--run-dir", default=default_run_dir, help="where the checkpoint and logs go")
    parser.add_argument("--data", default="all",
                        help="'news', 'reviews', 'all' (the embedded corpus) or a .txt/.jsonl file")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the corpus tokenizer)")
    parser.add_argument("--max-steps", type=positive_int, default=max_steps)
    parser.add_argument("--budget", type=positive_float, default=None,
                        help="wall-clock training budget in seconds (stops early, checkpoint kept)")
    parser.add_argument("--batch-size", type=positive_int, default=batch_size)
    parser.add_argument("--lr", type=positive_float, default=lr)
    parser.add_argument("--lr-scheduler", default=lr_scheduler, choices=LR_SCHEDULERS,
                        help="TrainingArguments.lr_scheduler_type, laid out over --max-steps")
    parser.add_argument("--warmup-steps", type=int, default=None, help="default: min(100, max_steps // 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-steps", type=positive_int, default=200)
    parser.add_argument("--logging-steps", type=positive_int, default=20)
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="start over instead of resuming from RUN_DIR/checkpoints")
    parser.add_argument("--report-to", default="tensorboard", help="Trainer report_to ('none' to disable)")


def training_arguments(args: argparse.Namespace, run_dir: Path, **overrides) -> TrainingArguments:
    """`TrainingArguments` from the common options; trainers pass their own extras as overrides."""
    fields = dict(
        output_dir=str(run_dir / CHECKPOINTS),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type=args.lr_scheduler,
        warmup_steps=min(100, max(1, args.max_steps // 20)) if args.warmup_steps is None else args.warmup_steps,
        weight_decay=0.01,
        max_grad_norm=1.0,
        seed=args.seed,
        data_seed=args.seed,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        save_total_limit=2,
        eval_strategy="no",
        report_to=[] if args.report_to == "none" else [args.report_to],
        dataloader_num_workers=0,
        use_cpu=not _has_accelerator(),
    )
    fields.update(overrides)
    return TrainingArguments(**fields)


def resume_checkpoint(args: argparse.Namespace, run_dir: Path) -> str | None:
    """The checkpoint to resume from, unless ``--no-resume``."""
    return last_checkpoint(run_dir) if args.resume else None


def announce(message: str) -> None:
    """One line on the main process only (no duplicated logs under DDP)."""
    from ..distributed import is_main_process

    if is_main_process():
        print(f"[genlab] {message}")


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()


class TimeBudgetCallback(TrainerCallback):
    """Stop training (and save a checkpoint) once ``budget_s`` seconds of training have passed.

    The budget counts only this process's training time, so a resumed run gets a fresh budget. Under several
    processes every rank stops at the same step (any rank over budget stops all), or DDP would deadlock.
    """

    def __init__(self, budget_s: float | None):
        self.budget_s = budget_s
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.budget_s is not None and any_process(time.monotonic() - self.start >= self.budget_s):
            control.should_training_stop = True
            control.should_save = True
        return control
