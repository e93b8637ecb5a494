"""`genlab demo` (= `make demo`): every system trained small and shown working on the embedded corpus (SPEC H8).

It orchestrates train → bench → cards → report: one function per stage (``stages``) trains (or reuses) its
model(s) with the recipes of ``genlab.trainers`` for the preset's fixed steps (``--budget`` seconds per model is
only a safety cap, and a model it stops short is reported as not representative), measures them
with ``genlab.bench``, and returns a JSON-able dict that ``genlab.report`` renders into ``RUN_DIR/report.md``,
``report.html`` and PNG plots:

- ``ar``          the Qwen2 baseline (also the cloud of speculative decoding and the judge/base elsewhere);
- ``merge``       MERGE (and its per-character baseline) correcting SIGHAN-15 sentences and generating, round
                  by round (M8), against the AR;
- ``concept``     concept compression on the AR base: achieved ratio, step time and decode speed vs the base;
- ``planner``     the planner's concepts next to the executor's text, and the text from shuffled concepts;
- ``speculative`` an edge distilled from the AR (cloud): speed-up, acceptance and cloud-call rates with and
                  without the CJK processors, side by side with cloud-only output.

The terminal shows one progress bar per stage, the lines that matter and the verdicts (``console``); each
stage's full output goes to ``RUN_DIR/<stage>.log``.

Reuse: a stage whose run directory is complete (``genlab.runs.is_complete``) is loaded instead of retrained (the
root records its preset, ``demo_scale.json``, and refuses another, whose steps and sizes differ);
when its model files fail to load, the run is reported as corrupted, deleted and retrained. Measurements are
cached next to the run (``RUN_DIR/<stage>/demo.json``) under a key made of the manifests they were taken on,
so a rerun recomputes nothing unless a model changed (``reuse``). Every figure comes from the benchmark code
(``genlab.bench.*``) and is written as SPEC-B JSON into the run directory, where the model card reads it.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict

from ..hub_cards import push_with_card, write_card
from ..report import section_verdicts, write_report
from ..runs import prepare_run_dir
from .reuse import claim_root, training_log
from .console import Console, logged_to
from .settings import SCALES, Demo, DemoConfig
from .stages import STAGES, planned_steps

# stage → (run directory name, Auto class, needs remote code); every one gets a card and a load command
MODELS = {"ar": ("ar", "AutoModelForCausalLM", False), "merge": ("merge", "AutoModel", True),
          "concept": ("concept", "AutoModelForCausalLM", True), "planner": ("planner", "AutoModel", True),
          "edge": ("edge", "AutoModelForCausalLM", False)}


def load_command(run_dir, auto_class: str, remote: bool) -> str:
    trust = ", trust_remote_code=True" if remote else ""
    return f"{auto_class}.from_pretrained({str(run_dir)!r}{trust})"


def write_cards(demo: Demo, push: str | None) -> dict[str, str]:
    """A model card per trained model, its results read from the ``bench.json`` the demo measured (SPEC H5)."""
    return {name: str(write_card(demo.dir(folder), repo_id=f"{push}-{name}" if push else None))
            for name, (folder, _, _) in MODELS.items()}


def push_all(demo: Demo, prefix: str, endpoint: str | None) -> dict[str, str]:
    endpoint = endpoint or os.environ.get("HF_ENDPOINT")
    return {name: f"{prefix}-{name} ({push_with_card(demo.dir(folder), f'{prefix}-{name}', endpoint=endpoint)})"
            for name, (folder, _, _) in MODELS.items()}


def run(config: DemoConfig) -> dict:
    """Train/reuse, measure and show every stage; write cards, the report and the plots; optionally push."""
    root = prepare_run_dir(config.run_dir)
    demo = Demo(root=root, budget=config.budget, scale=SCALES[config.preset], preset=config.preset,
                console=Console())
    claim_root(demo)
    steps = planned_steps(demo.scale)
    print(f"[genlab demo] preset {config.preset}: 7 models trained for fixed steps ("
          + ", ".join(f"{name} {n}" for name, n in steps.items()) + f"), each capped at {config.budget:g} s; "
          f"then measured. Logs, models and the report go to {root}")
    started = time.monotonic()
    results = {}
    for name, stage in STAGES.items():
        stage_started = time.monotonic()
        with demo.console.stage(name, root / f"{name}.log", steps[name]):
            results[name] = stage(demo)
        results[name]["stage_s"] = round(time.monotonic() - stage_started, 1)
    with logged_to(root / "publish.log"):
        cards = write_cards(demo, config.push)
        pushed = push_all(demo, config.push, config.endpoint) if config.push else {}
    models = {name: {"run_dir": str(demo.dir(folder)), "card": cards[name], "pushed": pushed.get(name),
                     "load": load_command(demo.dir(folder), auto, remote)}
              for name, (folder, auto, remote) in MODELS.items()}
    logs = {name: training_log(demo.dir(name)) for name in ("ar", "merge", "concept", "planner", "planner-ar", "edge")}
    summary = {"preset": config.preset, "budget_s": config.budget, "scale": asdict(demo.scale),
               "total_s": round(time.monotonic() - started, 1), "cut_short": demo.cut_short}
    report = write_report(root, results, logs, models, summary)
    print("\n" + report["terminal"])
    print(f"\n[genlab demo] report: {report['markdown']} and {report['html']}; plots in {root / 'plots'}")
    for name, model in models.items():
        print(f"[genlab demo] {name}: {model['run_dir']} (card {model['card']}"
              + (f", pushed: {model['pushed']}" if model["pushed"] else "") + f")\n    from transformers import "
              f"{MODELS[name][1]}; model = {model['load']}")
    print("\n" + "\n".join(section_verdicts(results, demo.cut_short)))  # the last thing a newcomer reads
    return {"results": results, "models": models, "report": report}
