"""Trainer callbacks every recipe shares: the wall-clock safety cap, Ctrl-C as "save and stop", and windowed
training metrics (SPEC H6)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import torch
from transformers import Trainer, TrainerCallback

from ..distributed import any_process, max_across_processes, sum_across_processes, sum_tensor_across_processes


class TimeBudgetCallback(TrainerCallback):
    """Stop training (and save a checkpoint) once ``budget_s`` seconds of training have passed: a safety cap,
    which says so when it cuts a run short of its ``max_steps``.

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
            if state.global_step < state.max_steps and state.is_world_process_zero:
                print(f"[genlab] the --budget safety cap ({self.budget_s:g} s) stopped training at step "
                      f"{state.global_step} of {state.max_steps}: results not representative", flush=True)
        return control


class StopOnInterrupt(TrainerCallback):
    """Ctrl-C (SIGINT) during training finishes the current step, saves a checkpoint and stops, so nothing since
    the last checkpoint is lost; a second Ctrl-C aborts at once. ``interrupted`` tells the caller not to export
    the run as complete. (Only the main thread can own the handler; elsewhere Ctrl-C keeps its default.)"""

    def __init__(self):
        self.interrupted = False
        self.previous = None

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum, frame):
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        print("\n[genlab] Ctrl-C: finishing this step and saving a checkpoint (Ctrl-C again to abort now)", flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


class WindowedMetrics(TrainerCallback):
    """Per-batch statistics, averaged over each logging window and added to the Trainer's log line.

    A trainer records with ``add`` (averaged), ``maximum`` (max over the window) and ``accumulate`` (a summed
    tensor, e.g. id counts, turned into numbers by a ``summaries`` function). Each log line that carries the
    training loss gets the window's values, reduced over processes so they describe the global batch, not rank
    0's (H6); ``extras(step)`` adds, to every log line, values that are functions of the step (schedules) or
    were read elsewhere (monitors). Install it with ``install`` so it runs before the reporting callbacks.
    """

    def __init__(self, prefix: str = "", extras: Callable[[int], dict] | None = None,
                 summaries: Callable[[dict[str, torch.Tensor]], dict] | None = None):
        self.prefix, self.extras, self.summaries = prefix, extras, summaries
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.maxima: dict[str, float] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        self.batches = 0

    def install(self, trainer: Trainer) -> WindowedMetrics:
        trainer.callback_handler.callbacks.insert(0, self)  # before the loggers read the line
        return self

    def add(self, name: str, value) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value)

    def maximum(self, name: str, value) -> None:
        self.maxima[name] = max(self.maxima.get(name, float("-inf")), float(value))

    def accumulate(self, name: str, tensor: torch.Tensor) -> None:
        self.tensors[name] = tensor if name not in self.tensors else self.tensors[name] + tensor

    def step_done(self) -> None:
        """One batch recorded (the denominator of the means)."""
        self.batches += 1

    def window(self) -> dict[str, float]:
        """The window's values (reduced over processes), then a fresh window."""
        sums = sum_across_processes({**self.sums, "batches": self.batches})
        batches = sums.pop("batches")
        values = {f"{self.prefix}{name}": total / batches for name, total in sums.items()}
        values.update({f"{self.prefix}{k}": v for k, v in max_across_processes(self.maxima).items()})
        if self.summaries is not None:
            values.update(self.summaries({k: sum_tensor_across_processes(v) for k, v in self.tensors.items()}))
        self.reset()
        return values

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return control
        values = self.window() if self.batches and "loss" in logs else {}
        if self.extras is not None:
            values.update(self.extras(state.global_step))
        logs.update(values)
        if state.log_history:  # the entry Trainer.log appended for this line
            state.log_history[-1].update(values)
        return control

