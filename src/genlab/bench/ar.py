"""`genlab bench ar`: the autoregressive yardstick's speed and quality (SPEC B, figures of ``ar``).

Greedy KV-cached ``generate`` tokens/s at batch 1 and 32 (64 new tokens, forced with ``min_new_tokens``),
training tokens/s (forward + backward + AdamW step), validation perplexity beside the unigram model's (the
frequency plateau it has to leave), and the KV-cache speed-up at
batch 1 (uncached over cached decoding time, timed back to back; the one ratio this baseline has of its own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM

from ..data import load_corpus
from ..runs import read_manifest
from ..tokenization import load_tokenizer
from ..timing import median_seconds, paired_seconds, random_ids, train_step_fn
from ..trainers.ar import pack_sentences
from . import target, write_result

NEW_TOKENS = 64


@dataclass
class ARBenchConfig:
    """`genlab bench ar`: what to measure; the run is trained first (``train_steps`` steps) when incomplete."""

    json: str | None = field(default=None, metadata={"help": "where to write the benchmark JSON"})
    run_dir: str = field(default="runs/bench/ar-tiny", metadata={
        "help": "a trained AR run; trained first (with --train-steps) when incomplete"})
    preset: str = field(default="tiny", metadata={"help": "AR preset of the run when it is trained first"})
    train_steps: int = field(default=600, metadata={"help": "steps of the run when it is trained first"})
    data: str = field(default="all", metadata={"help": "training corpus when the run is trained first"})
    repeats: int = field(default=5, metadata={"help": "timed repeats per figure (median)"})


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


def train_tok_s(model, vocab_size: int, batch: int, block: int, repeats: int) -> float:
    """Tokens per second of one optimisation step (forward + backward + AdamW) at (batch, block)."""
    seconds = median_seconds(train_step_fn(model, random_ids(vocab_size, batch, block)), warmup=2, repeats=repeats)
    model.eval()
    return batch * block / seconds


def unigram_perplexity(train_blocks, eval_blocks, vocab_size: int) -> float:
    """Perplexity on ``eval_blocks`` of the unigram model of ``train_blocks`` (add-one smoothed), over the tokens
    the AR's validation loss scores (every block position but the first): what knowing only token frequencies
    gives, the plateau a language model has to leave."""
    counts = torch.bincount(torch.tensor(train_blocks["input_ids"]).flatten(), minlength=vocab_size).double() + 1
    log_p = counts.log() - counts.sum().log()
    targets = torch.tensor(eval_blocks["input_ids"])[:, 1:]  # (blocks, block_size - 1)
    return math.exp(-float(log_p[targets].mean()))


def run(args: ARBenchConfig) -> dict:
    """Measure the AR run in ``args.run_dir`` (complete: see ``genlab.prepare``)."""
    manifest = read_manifest(args.run_dir)
    model = AutoModelForCausalLM.from_pretrained(args.run_dir).eval()
    tokenizer = load_tokenizer(args.run_dir)
    prompt = tokenizer("新华社北京一月一日电", return_tensors="pt")["input_ids"]
    corpus = load_corpus(manifest["data"])
    eval_blocks = pack_sentences(corpus["validation"], tokenizer, manifest["block_size"])
    eval_blocks = eval_blocks.select(range(min(manifest.get("eval_blocks", len(eval_blocks)), len(eval_blocks))))

    figures = {
        "gen_tok_s_b1": generate_tok_s(model, prompt, args.repeats),
        "gen_tok_s_b32": generate_tok_s(model, prompt.repeat(32, 1), args.repeats),
        "train_tok_s": train_tok_s(model, len(tokenizer), 16, 128, args.repeats),
        "val_ppl": manifest["val_ppl"],
        "unigram_val_ppl": unigram_perplexity(pack_sentences(corpus["train"], tokenizer, manifest["block_size"]),
                                              eval_blocks, len(tokenizer)),
        "kv_cache_speedup_b1": kv_cache_speedup(model, prompt, args.repeats),
    }
    result = write_result(
        args.json, "ar",
        config={"preset": args.preset, "run_dir": args.run_dir, "data": args.data, "new_tokens": NEW_TOKENS,
                "prompt_tokens": prompt.shape[1], "train_batch": [16, 128], "repeats": args.repeats,
                "parameters": manifest["parameters"]},
        budget={"train_steps": manifest["steps"], "block_size": manifest["block_size"]},
        figures=figures,
        targets={"val_ppl": target(figures["val_ppl"], "<", figures["unigram_val_ppl"]),  # beyond frequencies
                 "kv_cache_speedup_b1": target(figures["kv_cache_speedup_b1"], "≥", 1.0)},
    )
    print("\n".join(f"{k}: {v:.4g}" for k, v in result["figures"].items()))
    return result
