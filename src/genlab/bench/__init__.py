"""Benchmarks in the shared format of SPEC section B.

``genlab bench SYSTEM --json PATH`` writes ``{"system", "machine", "config", "budget", "figures",
"targets"}``. Timings are medians after warm-up, and every speed figure is a ratio against a baseline
measured in the same run. ``genlab bench all`` (``make bench``) runs every system, writes
``benchmarks/results/SYSTEM.json`` and regenerates the README tables between
``<!-- bench:SYSTEM -->`` / ``<!-- /bench:SYSTEM -->`` markers — numbers are never typed by hand.
"""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

import torch
import transformers

from ..timing import median_seconds, paired_seconds, random_ids, train_step_fn  # noqa: F401 (re-exported)

REQUIRED_FIGURES = {
    "ar": ("gen_tok_s_b1", "gen_tok_s_b32", "train_tok_s", "val_ppl"),
    "merge": ("sighan15_correction_f1", "sighan15_detection_f1", "sighan15_clean_fpr", "sighan15_sentences_per_s_b1",
              "baseline_correction_f1", "speedup_b1", "speedup_b32", "gen_ppl_ratio", "distinct2_ratio",
              "mean_rounds", "train_steps"),
    "concept": ("compression_ratio", "step_time_ratio", "decode_speedup_2048", "kv_cache_ratio_2048", "ppl_ratio",
                "inference_rate_ratio", "natural_fire_fraction", "delta_nll_concepts_permuted", "flops_fraction_pred",
                "train_steps"),
    "planner": ("delta_nll_shuffle", "nll_ratio_vs_ar", "keyword_coverage", "ar_keyword_coverage",
                "executor_decode_ratio", "train_steps", "ar_train_steps"),
    "planner-keywords": ("delta_nll_shuffle", "nll_ratio_vs_ar", "keyword_coverage", "ar_keyword_coverage",
                         "executor_decode_ratio", "train_steps", "ar_train_steps"),
    "speculative": ("lossless_equals_cloud", "acceptance_rate", "edge_cost_ratio", "lossless_speedup_vs_cloud",
                    "speedup_vs_hf_assisted", "gated_cloud_call_rate", "gated_agreement", "gated_latency_ratio_50ms"),
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


def target(value: float, op: str, goal: float) -> dict:
    """``{"goal": "≥ 3.0", "met": bool}`` for ``op`` in ``≥ ≤ > <``."""
    checks = {"≥": value >= goal, "≤": value <= goal, ">": value > goal, "<": value < goal}
    if op not in checks:
        raise ValueError(f"op must be one of {sorted(checks)}, got {op!r}")
    return {"goal": f"{op} {goal:g}", "met": bool(checks[op])}


def write_result(path: str | os.PathLike | None, system: str, *, config: dict, budget: dict, figures: dict,
                 targets: dict, extra: dict | None = None) -> dict:
    """Assemble, check (required figure names, finite numbers) and write one benchmark JSON; ``extra`` holds
    what is not a single number (curves), beside the figures."""
    if system not in REQUIRED_FIGURES:
        raise ValueError(f"system must be one of {SYSTEMS}, got {system!r}")
    missing = [name for name in REQUIRED_FIGURES[system] if name not in figures]
    if missing:
        raise ValueError(f"{system} benchmark is missing figures {missing}")
    result = {"system": system, "machine": machine_info(), "config": config, "budget": budget,
              "figures": {k: float(v) for k, v in figures.items()}, "targets": targets, **(extra or {})}
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


def render_comparison(results: dict[str, dict], figures: list[str]) -> str:
    """A Markdown table of runs of one bench side by side (ablations): a column per result, named by its key (the
    JSON's file stem), a row per figure, and the figure's target ("—": the run did not measure it)."""
    unknown = sorted(set(figures) - {name for result in results.values() for name in result["figures"]})
    if unknown:
        raise ValueError(f"figures {unknown} are in none of the results {list(results)}")
    lines = ["| figure | " + " | ".join(f"`{name}`" for name in results) + " | target |",
             "|---" * (len(results) + 2) + "|"]
    for name in figures:
        goal = next((result["targets"][name]["goal"] for result in results.values() if name in result["targets"]), "")
        cells = [f"{result['figures'][name]:.4g}" if name in result["figures"] else "—" for result in results.values()]
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {goal} |")
    return "\n".join(lines)


def write_block(readme: str | os.PathLike, name: str, body: str) -> None:
    """Replace the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` with ``body``."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(rf"(<!-- bench:{re.escape(name)} -->\n).*?(<!-- /bench:{re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no <!-- bench:{name} --> … <!-- /bench:{name} --> block")
    path.write_text(pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text), encoding="utf-8")


def update_readme(readme: str | os.PathLike, results: dict[str, dict]) -> None:
    """Each result's table (``render_table``) into its ``<!-- bench:SYSTEM -->`` block."""
    for system, result in results.items():
        write_block(readme, system, render_table(result))
