"""genlab's `evaluate` metric modules (SPEC H7): one folder per metric, loadable offline with
``evaluate.load(metric_path(name))`` — the Hub's metric scripts cannot be fetched here."""

from __future__ import annotations

from pathlib import Path

SPECULATIVE_METRICS = ("punctuation_density", "cjk_repetition", "cloud_call_rate", "acceptance_rate")  # S6


def metric_path(name: str) -> str:
    """The folder of metric ``name`` (``ValueError`` naming the metrics shipped otherwise)."""
    folder = Path(__file__).parent / name
    if not (folder / f"{name}.py").is_file():
        shipped = sorted(p.name for p in Path(__file__).parent.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"metric must be one of {shipped}, got {name!r}")
    return str(folder)


def speculative_metric_paths() -> dict[str, str]:
    """Folders of the edge/cloud regression metrics (S6), by name."""
    return {name: metric_path(name) for name in SPECULATIVE_METRICS}
