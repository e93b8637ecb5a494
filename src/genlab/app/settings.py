"""What `genlab app` serves (its flags, ``AppConfig``) — importable without Gradio, for the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModel, AutoModelForCausalLM

# tab → (run directory name, Auto class)
MODELS = {"merge": ("merge", AutoModel), "concept": ("concept", AutoModelForCausalLM),
          "planner": ("planner", AutoModel), "cloud": ("ar", AutoModelForCausalLM), "edge": ("edge", AutoModelForCausalLM)}
EXAMPLES = {"merge": "今天天汽很好，我们去公园散布。", "concept": "新华社北京一月一日电，国家主席发表新年讲话。",
            "planner": "经济、发展、稳定", "edge": "新华社北京"}


@dataclass
class AppConfig:
    """`genlab app`: which models to serve and where."""

    run_dir: str = field(default="runs/demo", metadata={"help": "the demo's run directory (one folder per model)"})
    merge: str | None = field(default=None, metadata={"help": "a MERGE run directory or Hub repo (default RUN_DIR/merge)"})
    concept: str | None = field(default=None, metadata={"help": "a concept run directory or Hub repo"})
    planner: str | None = field(default=None, metadata={"help": "a planner run directory or Hub repo"})
    cloud: str | None = field(default=None, metadata={"help": "the cloud (an AR run directory or Hub repo)"})
    edge: str | None = field(default=None, metadata={"help": "the edge (a run directory or Hub repo)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to serve on (0.0.0.0 in a Space)"})
    port: int = field(default=7860, metadata={"help": "port to serve on"})
    space_dir: str | None = field(default=None, metadata={
        "help": "write app.py + requirements.txt for a Space serving these models (given as Hub repos) and exit"})
    genlab_requirement: str = field(default="genlab", metadata={
        "help": "how the Space installs genlab, a pip requirement (e.g. 'genlab @ git+https://…' of your copy)"})

    def location(self, name: str) -> str:
        return getattr(self, name) or str(Path(self.run_dir) / MODELS[name][0])
