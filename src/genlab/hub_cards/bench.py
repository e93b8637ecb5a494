"""Benchmark JSON (SPEC section B) -> model-index results and a Markdown table (SPEC H5).

Every number a card shows comes from one of these files; nothing here invents or rounds a figure that ends up in
the model-index.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult


@dataclass(frozen=True)
class BenchReport:
    """One ``genlab bench SYSTEM --json PATH`` result, checked on load."""

    path: Path
    system: str
    machine: dict
    config: dict
    budget: dict
    figures: dict  # NAME -> number
    targets: dict  # NAME -> {"goal": "≥ 3.0", "met": bool}


def load_bench(path: str | os.PathLike) -> BenchReport:
    """Read and check one bench JSON; ``ValueError`` naming the file and the field when it is malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a bench result must be a JSON object, got {type(data).__name__}")
    missing = [key for key in ("system", "machine", "figures") if key not in data]
    if missing:
        raise ValueError(f"{path}: missing {missing}; expected the SPEC B format "
                         "{system, machine, config, budget, figures, targets}")
    figures = data["figures"]
    for name, value in figures.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{path}: figure {name!r} must be a finite number, got {value!r}")
    targets = data.get("targets") or {}
    for name, spec in targets.items():
        if not isinstance(spec, dict) or "goal" not in spec or not isinstance(spec.get("met"), bool):
            raise ValueError(f"{path}: target {name!r} must be {{'goal': str, 'met': bool}}, got {spec!r}")
    return BenchReport(path=path, system=str(data["system"]), machine=dict(data["machine"]),
                       config=dict(data.get("config") or {}), budget=dict(data.get("budget") or {}),
                       figures=dict(figures), targets=dict(targets))


def eval_results(report: BenchReport, *, task_type: str) -> list[EvalResult]:
    """One ``EvalResult`` per figure, its value copied from the JSON. The "dataset" is the bench itself
    (``config["dataset"]`` when the bench names one), so results group per system in the model-index."""
    dataset = str(report.config.get("dataset") or f"genlab-bench-{report.system}")
    return [
        EvalResult(task_type=task_type, task_name=f"genlab bench {report.system}", dataset_type=dataset,
                   dataset_name=dataset, metric_type=name, metric_name=name, metric_value=value)
        for name, value in report.figures.items()
    ]


def _format(value) -> str:
    """The JSON value as written, unless it is long (then 6 significant digits)."""
    text = repr(value)
    return text if len(text) <= 10 else f"{value:.6g}"


def results_markdown(report: BenchReport) -> str:
    """The results section for one report: machine line, figures with goal and met, the config to rerun it."""
    machine = report.machine
    lines = [
        f"### `{report.system}` (from `{report.path.name}`)",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('threads', '?')} threads, "
        f"torch {machine.get('torch', '?')}, transformers {machine.get('transformers', '?')}.",
        "",
        "| Figure | Value | Goal | Met |",
        "|---|---|---|---|",
    ]
    for name, value in report.figures.items():
        target = report.targets.get(name)
        goal, met = (target["goal"], "yes" if target["met"] else "no") if target else ("", "")
        lines.append(f"| `{name}` | {_format(value)} | {goal} | {met} |")
    if report.config or report.budget:
        rerun = json.dumps({"config": report.config, "budget": report.budget}, indent=2, ensure_ascii=False)
        lines += ["", "<details><summary>Benchmark config and budget</summary>", "", "```json", rerun, "```", "",
                  "</details>"]
    return "\n".join(lines)
