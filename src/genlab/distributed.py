"""What the trainers need to run unchanged under ``accelerate launch`` / ``torchrun`` (SPEC H6).

Multi-process training itself is the ``Trainer``'s (accelerate's DDP, FSDP, DeepSpeed); these helpers only
keep the few things a genlab run does around it correct when several processes run the same script:

- ``main_process_first``: dataset preparation (tokeniser training, ``datasets`` map caches) happens once, on
  each node's local main process; the others then read the caches, with their progress bars switched off;
- ``is_main_process`` / ``wait_for_everyone``: the run directory (export, manifest) is written by one process;
- ``any_process``: a decision every rank must share (the wall-clock budget stop), or DDP deadlocks;
- ``sum_across_processes`` / ``max_across_processes``: monitor sums and maxima reduced over ranks, so a logged monitor describes the global batch.

In a single process every helper is a no-op. The state is accelerate's ``PartialState``, created for the CPU
when no CUDA device exists — as ``TrainingArguments(use_cpu=True)`` does — so a CPU run launched with
several processes gets the gloo backend.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from accelerate import PartialState


def process_state() -> PartialState:
    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return process_state().is_main_process


def wait_for_everyone() -> None:
    process_state().wait_for_everyone()


@contextmanager
def main_process_first():
    """Run the block on each node's local main process first, then on the others (which read its caches)."""
    state = process_state()
    if not state.is_local_main_process:
        import datasets

        datasets.disable_progress_bars()  # the main process already showed them
    with state.local_main_process_first():
        yield


def any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is true on any of them."""
    state = process_state()
    if state.num_processes == 1:
        return flag
    value = torch.tensor([float(flag)], device=state.device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def sum_across_processes(values: dict[str, float]) -> dict[str, float]:
    """Per-key sums over every process (a key missing on some process counts 0 there)."""
    return _combine(values, sum)


def max_across_processes(values: dict[str, float]) -> dict[str, float]:
    """Per-key maxima over every process (over the processes that have the key)."""
    return _combine(values, max)


def _combine(values: dict[str, float], combine) -> dict[str, float]:
    state = process_state()
    if state.num_processes == 1:
        return dict(values)
    gathered = [None] * state.num_processes
    torch.distributed.all_gather_object(gathered, dict(values))
    names = {name for part in gathered for name in part}
    return {name: combine(part[name] for part in gathered if name in part) for name in names}


def sum_tensor_across_processes(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``tensor`` over every process (the tensor itself on one process)."""
    state = process_state()
    if state.num_processes == 1:
        return tensor
    tensor = tensor.to(state.device)
    torch.distributed.all_reduce(tensor)
    return tensor
