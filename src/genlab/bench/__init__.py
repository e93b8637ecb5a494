"""Benchmarks in the shared format of SPEC section B.

``genlab bench SYSTEM --json PATH`` writes ``{"system", "machine", "config", "budget", "figures",
"targets"}``. Timings are medians after warm-up, and every speed figure is a ratio against a baseline
measured in the same run. ``genlab bench all`` (``make bench``) runs every system, writes
``benchmarks/results/SYSTEM.json`` and regenerates the README tables between
``<!-- bench:SYSTEM -->`` / ``<!-- /bench:SYSTEM -->`` markers — numbers are never typed by hand.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import transformers

REQUIRED_FIGURES = {
    "ar": ("gen_tok_s_b1", "gen_tok_s_b32", "train_tok_s", "val_ppl"),
    "merge": ("speedup_b1", "speedup_b32", "mean_rounds", "gen_ppl_ratio", "edit_exact_repair"),
    "concept": ("compression_ratio", "step_time_ratio", "decode_speedup_2048", "ppl_ratio"),
    "planner": ("delta_nll_shuffle", "nll_ratio_vs_ar", "executor_decode_ratio"),
    "speculative": ("lossless_speedup_vs_cloud", "speedup_vs_hf_assisted", "acceptance_rate",
                    "gated_cloud_call_rate", "gated_agreement", "punct_density"),
}
SYSTEMS = tuple(REQUIRED_FIGURES)


def machine_info() -> dict:
    """CPU model, threads and library versions, recorded with every result."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "device": "cpu"}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def median_seconds(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step_fn(model, ids: torch.Tensor, lr: float = 1e-5) -> Callable[[], None]:
    """One optimisation step (train mode; forward with ``labels=ids``, backward, AdamW over the trainable
    parameters) on ids (batch, seq), as a timeable call."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step():
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def steps_for_budget(step: Callable[[], object], budget_s: float) -> int:
    """Optimisation steps that fit ``budget_s`` seconds: 0.9·budget over the median time of ``step`` (≥ 10).

    A budget-bound run given this many steps gets a progress bar with the right total and an LR schedule
    that really decays; its time budget still stops it if the machine slows down.
    """
    return max(10, int(0.9 * budget_s / median_seconds(step, warmup=1, repeats=3)))


def paired_seconds(first: Callable[[], object], second: Callable[[], object], *, repeats: int,
                   warmup: int = 1) -> tuple[float, float, float]:
    """Time ``first`` then ``second`` back to back, ``repeats`` times after ``warmup`` untimed pairs.

    Returns (median s of first, median s of second, median of the per-pair ratio t(second) / t(first)):
    a load swing on a shared machine hits both sides of a pair alike, so the paired ratio is steadier
    than the ratio of two separate medians.
    """
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        first(), second()
    pairs = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        first()
        sync()
        middle = time.perf_counter()
        second()
        sync()
        pairs.append((middle - start, time.perf_counter() - middle))
    first_s, second_s = zip(*pairs)
    return statistics.median(first_s), statistics.median(second_s), statistics.median(b / a for a, b in pairs)


def target(value: float, op: str, goal: float) -> dict:
    """``{"goal": "≥ 3.0", "met": bool}`` for ``op`` in ``≥ ≤ > <``."""
    checks = {"≥": value >= goal, "≤": value <= goal, ">": value > goal, "<": value < goal}
    if op not in checks:
        raise ValueError(f"op must be one of {sorted(checks)}, got {op!r}")
    return {"goal": f"{op} {goal:g}", "met": bool(checks[op])}


def write_result(path: str | os.PathLike | None, system: str, *, config: dict, budget: dict, figures: dict,
                 targets: dict) -> dict:
    """Assemble, check (required figure names, finite numbers) and write one benchmark JSON."""
    if system not in REQUIRED_FIGURES:
        raise ValueError(f"system must be one of {SYSTEMS}, got {system!r}")
    missing = [name for name in REQUIRED_FIGURES[system] if name not in figures]
    if missing:
        raise ValueError(f"{system} benchmark is missing figures {missing}")
    result = {"system": system, "machine": machine_info(), "config": config, "budget": budget,
              "figures": {k: float(v) for k, v in figures.items()}, "targets": targets}
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


def render_table(result: dict) -> str:
    """A Markdown table of one result: figure, value, goal, met."""
    lines = ["| figure | value | target | met |", "|---|---|---|---|"]
    for name, value in result["figures"].items():
        tgt = result["targets"].get(name)
        goal, met = (tgt["goal"], "yes" if tgt["met"] else "no") if tgt else ("", "")
        lines.append(f"| `{name}` | {value:.4g} | {goal} | {met} |")
    m = result["machine"]
    lines.append("")
    lines.append(f"Measured on {m['cpu']} ({m['threads']} threads, {m['device']}), torch {m['torch']}, "
                 f"transformers {m['transformers']}.")
    return "\n".join(lines)


def update_readme(readme: str | os.PathLike, results: dict[str, dict]) -> None:
    """Replace the text between ``<!-- bench:SYSTEM -->`` and ``<!-- /bench:SYSTEM -->`` per result."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    for system, result in results.items():
        pattern = re.compile(rf"(<!-- bench:{system} -->\n).*?(<!-- /bench:{system} -->)", re.S)
        text = pattern.sub(lambda m: m.group(1) + render_table(result) + "\n" + m.group(2), text)
    path.write_text(text, encoding="utf-8")


def run_all(results_dir: str | os.PathLike, readme: str | os.PathLike | None) -> dict[str, dict]:
    """Run each available system benchmark with its defaults; write JSONs; refresh README tables."""
    from ..cli import BENCH_SYSTEMS, build_parser

    results = {}
    for system in BENCH_SYSTEMS:
        out = Path(results_dir) / f"{system}.json"
        args = build_parser().parse_args(["bench", system, "--json", str(out)])
        results[system] = importlib.import_module(f"genlab.bench.{system}").run(args)
    if readme:
        update_readme(readme, results)
    return results
