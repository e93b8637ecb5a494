"""`genlab bench ar`: the autoregressive yardstick's speed and quality (SPEC B, figures of ``ar``).

Greedy KV-cached ``generate`` tokens/s at batch 1 and 32 (64 new tokens, forced with ``min_new_tokens``),
training tokens/s (forward + backward + AdamW step), validation perplexity, and the KV-cache speed-up at
batch 1 (uncached over cached decoding time, timed back to back; the one ratio this baseline has of its own).
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM

from ..runs import is_complete, read_manifest
from ..tokenization import FIRST_ORDINARY_ID, default_tokenizer, load_tokenizer
from ..trainers import ar as ar_trainer
from . import median_seconds, paired_seconds, steps_for_budget, target, train_step_fn, write_result

NEW_TOKENS = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", default=None, help="where to write the benchmark JSON")
    parser.add_argument("--run-dir", default="runs/bench/ar-tiny",
                        help="a trained AR run; trained here first (with --train-steps) when incomplete")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--data", default="all", help="training corpus when the run is trained here")
    parser.add_argument("--repeats", type=int, default=5)


def ensure_trained(run_dir: str, preset: str, steps: int, data: str = "all") -> dict:
    """Reuse a complete run, else train one with the stock trainer and a stated step budget."""
    if not is_complete(run_dir):
        from ..cli import build_parser

        ar_trainer.run(build_parser().parse_args(["train", "ar", "--run-dir", run_dir, "--preset", preset,
                                                  "--max-steps", str(steps), "--data", data, "--report-to", "none"]))
    return read_manifest(run_dir)


def greedy_decode_fn(model, prompt_ids: torch.Tensor, use_cache: bool = True):
    """Greedy decoding of exactly NEW_TOKENS tokens after ``prompt_ids`` (batch, prompt), as a timeable call."""
    attention_mask = torch.ones_like(prompt_ids)

    def decode():
        with torch.no_grad():
            model.generate(prompt_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS,
                           min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=use_cache)

    return decode


def generate_tok_s(model, prompt_ids: torch.Tensor, repeats: int) -> float:
    """Generated tokens per second (whole batch) for KV-cached greedy decoding of NEW_TOKENS tokens."""
    return prompt_ids.shape[0] * NEW_TOKENS / median_seconds(greedy_decode_fn(model, prompt_ids), repeats=repeats)


def kv_cache_speedup(model, prompt_ids: torch.Tensor, repeats: int) -> float:
    """Median over back-to-back pairs of t(uncached) / t(cached) greedy decoding."""
    _, _, speedup = paired_seconds(greedy_decode_fn(model, prompt_ids), greedy_decode_fn(model, prompt_ids, False),
                                   repeats=repeats)
    return speedup


def random_ids(vocab_size: int, batch: int, block: int) -> torch.Tensor:
    """(batch, block) ids above the special range: a step's speed does not depend on the text."""
    return torch.randint(FIRST_ORDINARY_ID, vocab_size, (batch, block), generator=torch.Generator().manual_seed(0))


def train_tok_s(model, vocab_size: int, batch: int, block: int, repeats: int) -> float:
    """Tokens per second of one optimisation step (forward + backward + AdamW) at (batch, block)."""
    seconds = median_seconds(train_step_fn(model, random_ids(vocab_size, batch, block)), warmup=2, repeats=repeats)
    model.eval()
    return batch * block / seconds


def budget_training_flags(budget_s: float, preset: str, batch: int = 16, block: int = 128) -> list[str]:
    """`genlab train ar` flags for a run of ``budget_s`` seconds (pass ``--budget`` too): the steps that fit it,
    a 100-step warm-up, then a constant learning rate.

    A few hundred steps is far from convergence, where a decaying LR only slows learning: at 228 tiny-preset
    steps, validation perplexity came out 216 with this schedule, 232 warmup-stable-decay, 283 cosine with the same
    warm-up and 412 cosine with the default 11-step warm-up.
    """
    tokenizer = default_tokenizer()
    model = ar_trainer.build_model(preset, tokenizer, seed=0)
    steps = steps_for_budget(train_step_fn(model, random_ids(len(tokenizer), batch, block)), budget_s)
    return ["--max-steps", str(steps), "--lr-scheduler", "constant_with_warmup",
            "--warmup-steps", str(min(100, steps // 2))]


def run(args: argparse.Namespace) -> dict:
    manifest = ensure_trained(args.run_dir, args.preset, args.train_steps, args.data)
    model = AutoModelForCausalLM.from_pretrained(args.run_dir).eval()
    tokenizer = load_tokenizer(args.run_dir)
    prompt = tokenizer("新华社北京一月一日电", return_tensors="pt")["input_ids"]

    figures = {
        "gen_tok_s_b1": generate_tok_s(model, prompt, args.repeats),
        "gen_tok_s_b32": generate_tok_s(model, prompt.repeat(32, 1), args.repeats),
        "train_tok_s": train_tok_s(model, len(tokenizer), 16, 128, args.repeats),
        "val_ppl": manifest["val_ppl"],
        "kv_cache_speedup_b1": kv_cache_speedup(model, prompt, args.repeats),
    }
    result = write_result(
        args.json, "ar",
        config={"preset": args.preset, "run_dir": args.run_dir, "data": args.data, "new_tokens": NEW_TOKENS,
                "prompt_tokens": prompt.shape[1], "train_batch": [16, 128], "repeats": args.repeats,
                "parameters": manifest["parameters"]},
        budget={"train_steps": manifest["steps"], "block_size": manifest["block_size"]},
        figures=figures,
        targets={"kv_cache_speedup_b1": target(figures["kv_cache_speedup_b1"], "≥", 1.0)},
    )
    print("\n".join(f"{k}: {v:.4g}" for k, v in result["figures"].items()))
    return result
