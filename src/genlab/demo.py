"""`genlab demo` (= `make demo`): the main job on the embedded Chinese corpus (SPEC H8).

Each stage trains (or reuses, when a previous demo left a complete run) one model under a stated time
budget, then shows what it does. Stage runs live in ``RUN_DIR/<stage>``; ``RUN_DIR/report.md`` collects
the results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .runs import is_complete, prepare_run_dir, read_manifest
from .trainers.common import positive_float

PROMPTS = ["新华社北京", "这本书", "中国经济", ""]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", default="runs/demo")
    parser.add_argument("--budget", type=positive_float, default=180.0,
                        help="training seconds per model (a resumed run continues its checkpoint)")
    parser.add_argument("--preset", default="tiny", help="AR preset of the baseline")


def train_ar(args: argparse.Namespace, run_dir: Path) -> dict:
    """The AR baseline: reused when complete, else trained for ``--budget`` seconds."""
    if is_complete(run_dir):
        print(f"[genlab demo] reusing {run_dir}")
        return read_manifest(run_dir)
    from .cli import build_parser
    from .trainers import ar

    return ar.run(build_parser().parse_args([
        "train", "ar", "--run-dir", str(run_dir), "--preset", args.preset, "--budget", str(args.budget),
        "--max-steps", "100000", "--report-to", "none"]))


def run(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM

    from .tokenization import load_tokenizer
    from .trainers.ar import sample

    root = prepare_run_dir(args.run_dir)
    ar_dir = root / "ar"
    manifest = train_ar(args, ar_dir)
    model = AutoModelForCausalLM.from_pretrained(ar_dir).eval()
    tokenizer = load_tokenizer(ar_dir)
    samples = [p + s for p, s in zip(PROMPTS, sample(model, tokenizer, PROMPTS))]

    lines = ["# genlab demo report", "", "## Autoregressive baseline (Qwen2)", "",
             f"- preset `{manifest['preset']}`, {manifest['parameters'] / 1e6:.1f} M parameters, "
             f"{manifest['steps']} steps, validation perplexity **{manifest['val_ppl']:.2f}**", "",
             "Samples:", ""] + [f"- {s}" for s in samples]
    report = root / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(f"\n[genlab demo] report: {report}")
    print(f"[genlab demo] load: AutoModelForCausalLM.from_pretrained('{ar_dir}')")
