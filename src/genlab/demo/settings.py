"""What a demo run is: its options (``DemoConfig``, the `genlab demo` flags), its sizes (``Scale``), its layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .console import Console

SAFETY_CAP_S = 1200.0  # per model: only stops a run on a far slower machine than the 2-core one the steps were sized on
PROMPTS = ["新华社北京", "这本书", "中国经济", "今天"]


@dataclass(frozen=True)
class Scale:
    """Model sizes, training steps and evaluation sizes of one demo preset (``tiny``: the demo; ``nano``:
    ``--quick`` smoke runs). Every model trains a fixed number of steps, so the same command gives the same
    models on any machine; MERGE's per-character baseline and the planner's AR get their system's steps."""

    ar_preset: str
    ar_steps: int
    merge_steps: int
    edge_layers: int  # the edge: the cloud's first layers
    edge_steps: int
    concept_layers: str  # shallow,middle,deep of the AR base
    concept_steps: int
    planner_hidden: int
    planner_steps: int
    planner_warmup: int
    logging_steps: int
    eval_blocks: int
    eval_pairs: int
    edit_sentences: int  # noised validation sentences MERGE's deletion threshold is chosen on
    sighan_sentences: int  # SIGHAN-15 sentences scored (0: all 707)
    samples: int  # MERGE/AR samples for generative perplexity
    bench_prompts: int  # speculative bench prompts
    shown: int  # examples printed per stage
    repeats: int
    contexts: str  # concept decode contexts
    new_tokens: int


SCALES = {
    "tiny": Scale(ar_preset="tiny", ar_steps=800, merge_steps=240, edge_layers=1, edge_steps=300,
                  concept_layers="2,3,1", concept_steps=300, planner_hidden=128, planner_steps=1000, planner_warmup=100,
                  logging_steps=5, eval_blocks=32, eval_pairs=128,
                  edit_sentences=64, sighan_sentences=300, samples=16, bench_prompts=16, shown=4, repeats=3,
                  contexts="512,2048", new_tokens=32),
    "nano": Scale(ar_preset="nano", ar_steps=30, merge_steps=20, edge_layers=1, edge_steps=10,
                  concept_layers="1,0,1", concept_steps=20, planner_hidden=32, planner_steps=20, planner_warmup=5,
                  logging_steps=1, eval_blocks=4, eval_pairs=8,
                  edit_sentences=4, sighan_sentences=8, samples=2, bench_prompts=2, shown=2, repeats=1,
                  contexts="2048", new_tokens=4),
}


@dataclass
class DemoConfig:
    """`genlab demo`: where it goes, which sizes (with their fixed training steps), where to push."""

    run_dir: str = field(default="runs/demo", metadata={"help": "where every model, the report and the plots go"})
    budget: float = field(default=SAFETY_CAP_S, metadata={
        "help": f"safety cap in seconds per model (default {SAFETY_CAP_S:g}): a model it stops short of its steps "
                "is reported as not representative"})
    preset: str = field(default="tiny", metadata={
        "choices": sorted(SCALES), "help": "model/evaluation sizes: 'tiny' (the demo) or 'nano' (a smoke run)"})
    quick: bool = field(default=False, metadata={"help": "a smoke run in about a minute: the same as --preset nano"})
    push: str | None = field(default=None, metadata={
        "metavar": "REPO_PREFIX", "help": "push each model to REPO_PREFIX-<stage> on the Hub at --endpoint / $HF_ENDPOINT"})
    endpoint: str | None = field(default=None, metadata={"help": "Hub URL for --push (default: $HF_ENDPOINT)"})

    def __post_init__(self):
        if not self.budget > 0:
            raise ValueError(f"--budget: must be > 0, got {self.budget:g}")
        if self.quick:
            self.preset = "nano"
        if self.preset not in SCALES:
            raise ValueError(f"--preset must be one of {sorted(SCALES)}, got {self.preset!r}")


@dataclass
class Demo:
    """One demo run: its root directory, safety cap per model, scale, terminal, and the runs the cap cut short."""

    root: Path
    budget: float
    scale: Scale
    preset: str
    console: Console = field(default_factory=Console)
    cut_short: list[str] = field(default_factory=list)

    def dir(self, name: str) -> Path:
        return self.root / name

    def quiet_training(self, max_steps: int, **fields) -> dict:
        """`TrainingArguments` fields every demo model trains with: its fixed steps, no reporters, the scale's
        logging, no Trainer progress bar (the stage's bar counts the steps)."""
        return dict(max_steps=max_steps, report_to="none", logging_steps=self.scale.logging_steps, disable_tqdm=True,
                    **fields)
