"""The demo's terminal (issue 16): one progress bar per stage and the lines a newcomer must read (reuse,
corruption, a safety cap that cut a run short); everything else a stage prints — the Trainer's logs, the
benchmarks' figures, warnings, load/save progress bars — goes to that stage's log file ``RUN_DIR/<stage>.log``."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TextIO

import datasets
import huggingface_hub
import transformers
from tqdm.auto import tqdm
from transformers import TrainerCallback

LIBRARY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "accelerate", "peft")


class StageProgress(TrainerCallback):
    """Advances the stage's bar by every optimisation step a `Trainer` takes (resumed steps included)."""

    def __init__(self, bar: tqdm):
        self.bar, self.seen = bar, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.seen = state.global_step  # resumed: the steps before were counted by the run that took them
        self.bar.update(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(state.global_step - self.seen)
        self.seen = state.global_step


class Console:
    """Where the demo writes: ``say`` reaches the terminal and the stage log; all other output only the log.
    Outside a stage (no bar) it is plain ``print``."""

    def __init__(self, terminal: TextIO | None = None):
        self.terminal = terminal or sys.stdout
        self.bar: tqdm | None = None

    def say(self, message: str) -> None:
        print(message)  # the stage log while a stage runs
        if self.bar is not None:
            self.bar.write(message, file=self.terminal)

    def progress(self) -> StageProgress:
        return StageProgress(self.bar)

    def skip(self, steps: int) -> None:
        """Count the planned steps of a model that was reused instead of trained."""
        if self.bar is not None:
            self.bar.update(steps)

    def measuring(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str("measuring")

    @contextmanager
    def stage(self, name: str, log_path: Path, planned_steps: int):
        """Run a stage with its bar (``planned_steps`` of training, then measuring) and its output in ``log_path``."""
        with logged_to(log_path), tqdm(total=planned_steps, desc=f"[genlab demo] {name}", unit="step",
                                       file=self.terminal, dynamic_ncols=True, leave=True) as bar:
            self.bar = bar
            try:
                yield
            finally:
                self.bar = None
        print(f"[genlab demo] {name}: log in {log_path}", file=self.terminal)


@contextmanager
def logged_to(log_path: Path):
    """Everything printed, warned or logged inside goes to ``log_path`` (appended); no library progress bars."""
    with open(log_path, "a", encoding="utf-8") as log, quiet_libraries(log), redirect_stdout(log), \
            redirect_stderr(log):
        yield


@contextmanager
def quiet_libraries(log: TextIO):
    """The libraries' log handlers write to ``log``; their load/save/map progress bars are off."""
    handlers = [h for name in LIBRARY_LOGGERS for h in logging.getLogger(name).handlers
                if isinstance(h, logging.StreamHandler)]
    streams = [h.setStream(log) for h in handlers]
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
    try:
        yield
    finally:
        for handler, stream in zip(handlers, streams):
            handler.setStream(stream)
        transformers.utils.logging.enable_progress_bar()
        datasets.enable_progress_bars()
        huggingface_hub.utils.enable_progress_bars()
