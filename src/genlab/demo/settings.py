"""What a demo run is: its options (``DemoConfig``, the `genlab demo` flags), its sizes (``Scale``), its layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BUDGET_S = 90.0  # per model; AR, MERGE (+ its baseline, same steps), concept, planner + its AR, edge ≈ 10 min
PROMPTS = ["新华社北京", "这本书", "中国经济", "今天"]


@dataclass(frozen=True)
class Scale:
    """Model sizes and evaluation sizes of one demo preset (``tiny``: the demo; ``nano``: smoke tests)."""

    ar_preset: str
    edge_layers: int  # the edge: the cloud's first layers
    concept_layers: str  # shallow,middle,deep of the AR base
    concept_steps: int  # the Gumbel/LoRA schedule length; the budget usually stops earlier
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
    "tiny": Scale(ar_preset="tiny", edge_layers=1, concept_layers="2,3,1", concept_steps=300, planner_hidden=128,
                  planner_steps=400, planner_warmup=100, logging_steps=5, eval_blocks=32, eval_pairs=128,
                  edit_sentences=64, sighan_sentences=0, samples=16, bench_prompts=16, shown=4, repeats=3,
                  contexts="512,2048", new_tokens=32),
    "nano": Scale(ar_preset="nano", edge_layers=1, concept_layers="1,0,1", concept_steps=20, planner_hidden=32,
                  planner_steps=20, planner_warmup=5, logging_steps=1, eval_blocks=4, eval_pairs=8,
                  edit_sentences=4, sighan_sentences=8, samples=2, bench_prompts=2, shown=2, repeats=1,
                  contexts="2048", new_tokens=4),
}


@dataclass
class DemoConfig:
    """`genlab demo`: where it goes, how long each model trains, which sizes, where to push."""

    run_dir: str = field(default="runs/demo", metadata={"help": "where every model, the report and the plots go"})
    budget: float = field(default=DEFAULT_BUDGET_S, metadata={
        "help": f"training seconds per model (default {DEFAULT_BUDGET_S:g}; 7 models are trained)"})
    preset: str = field(default="tiny", metadata={
        "choices": sorted(SCALES), "help": "model/evaluation sizes: 'tiny' (the demo) or 'nano' (seconds, for smoke tests)"})
    push: str | None = field(default=None, metadata={
        "metavar": "REPO_PREFIX", "help": "push each model to REPO_PREFIX-<stage> on the Hub at --endpoint / $HF_ENDPOINT"})
    endpoint: str | None = field(default=None, metadata={"help": "Hub URL for --push (default: $HF_ENDPOINT)"})

    def __post_init__(self):
        if not self.budget > 0:
            raise ValueError(f"--budget: must be > 0, got {self.budget:g}")
        if self.preset not in SCALES:
            raise ValueError(f"--preset must be one of {sorted(SCALES)}, got {self.preset!r}")


@dataclass
class Demo:
    """One demo run: its root directory, budget per model and scale."""

    root: Path
    budget: float
    scale: Scale
    preset: str

    def dir(self, name: str) -> Path:
        return self.root / name

    def quiet_training(self, **fields) -> dict:
        """`TrainingArguments` fields every demo model trains with: no reporters, the scale's logging."""
        return dict(report_to="none", logging_steps=self.scale.logging_steps, **fields)
