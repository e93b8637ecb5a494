"""`genlab bench concept`: concept compression vs the plain Qwen2 it was built from (SPEC C10, B).

Both sides start from the same trained AR base and get the same LoRA fine-tuning (same steps, data,
batch, learning rate); the concept side also trains its ConceptHead/Embedding. Measured, for each target
ratio r of the sweep: one training step's time (forward + backward + AdamW; the ratio of the pair is
taken inside each repeat, the median reported), validation perplexity per normal token and the
achieved (noise-free) compression ratio. At r = 1/4 (the headline): greedy cached decode tokens/s
(the prefill untimed, each model through its own forward and cache; pairs timed back to back) at
contexts 512 and 2048, batch 1 and 8, and the KV-cache bytes
held after a 2048-token prompt. Beside each step-time ratio: the FLOPs-fraction prediction
(n_sh + n_deep·(1 + r) + n_mid·r) / N of the decoder layers (embedding, LM head, ConceptHead excluded),
and the same formula at the concept rows a training step really processes (the packed width: sampled
decisions plus forced boundaries, padded to the batch's longest row).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, DynamicCache, Trainer, default_data_collator

from ..configuration_concept import Qwen2ConceptCompressionConfig
from ..data import load_corpus
from ..modeling_concept import Qwen2ConceptCompressionForCausalLM
from ..tokenization import load_tokenizer
from ..trainers.ar import pack_sentences
from ..trainers.common import training_arguments
from ..trainers.concept import ConceptCompressionTrainer, add_concept_lora, evaluate_concepts
from . import ar as ar_bench
from . import paired_seconds, target, train_step_fn, write_result

HEADLINE_RATIO = 0.25
HEADLINE_CONTEXT = 2048  # SPEC B's decode_speedup_2048


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", default=None, help="where to write the benchmark JSON")
    parser.add_argument("--base", default="runs/bench/concept/ar-tiny",
                        help="a trained AR run (tiny preset); trained here first (with --base-steps) when incomplete")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--base-steps", type=int, default=200)
    parser.add_argument("--finetune-steps", type=int, default=100, help="LoRA steps, the same for both sides")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--layers", default="2,3,1", help="shallow,middle,deep (half the layers in the middle)")
    parser.add_argument("--ratios", default="0.125,0.25,0.5")
    parser.add_argument("--concept-vocab", type=int, default=512)
    parser.add_argument("--ratio-weight", type=float, default=5.0,
                        help="the C7 rate penalty (off in the model's defaults): without it the sampled rate drifts up")
    parser.add_argument("--contexts", default="512,2048")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--eval-blocks", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work-dir", default="runs/bench/concept")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared, oversubscribed CPU more threads made both sides erratic)")


def base_lora_config() -> LoraConfig:
    """The LoRA the base gets: the concept model's defaults (r = 16, attention + MLP linears)."""
    defaults = Qwen2ConceptCompressionConfig()
    return LoraConfig(r=defaults.lora_r, lora_alpha=defaults.lora_alpha, target_modules=list(defaults.lora_target_modules))


def flops_fraction(layers: tuple[int, int, int], r: float) -> float:
    """(n_sh + n_deep·(1 + r) + n_mid·r) / N: the decoder-layer FLOPs per token relative to the base (C10)."""
    shallow, middle, deep = layers
    return (shallow + deep * (1 + r) + middle * r) / sum(layers)


@torch.no_grad()
def concept_rows_fraction(model, ids: torch.Tensor, samples: int = 5) -> float:
    """Rows the middle blocks really process in a training step, per token: the batch's packed concept width
    (max over rows, forced boundaries included, sampled decisions) / sequence length, averaged over samples."""
    model.train()
    widths = [int(model(input_ids=ids).is_concept.sum(1).max()) for _ in range(samples)]
    return statistics.mean(widths) / ids.shape[1]


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def finetune(model, trainer_class, args, run_dir: Path, train_blocks) -> list[dict]:
    """LoRA fine-tuning with the same arguments for both sides; returns the Trainer's log history."""
    namespace = argparse.Namespace(max_steps=args.finetune_steps, batch_size=args.batch_size, lr=args.lr, seed=0,
                                   lr_scheduler="cosine", warmup_steps=None,
                                   logging_steps=max(1, args.finetune_steps // 4), save_steps=10**9,
                                   report_to="none")
    trainer = trainer_class(model=model, args=training_arguments(namespace, run_dir, remove_unused_columns=False,
                                                                   save_strategy="no"),
                            train_dataset=train_blocks, data_collator=default_data_collator)
    trainer.train()
    return trainer.state.log_history


@torch.no_grad()
def decode_fn(model, prompt: torch.Tensor, new_tokens: int):
    """A greedy decoding loop of ``new_tokens`` cached steps after an untimed prefill (fresh cache each call).

    Both models go through their own forward with their own cache (DynamicCache / ConceptCache); the
    prefill is done in ``prepare`` so only the decode steps are timed.
    """
    ones = torch.ones_like(prompt)
    state = {}

    def prepare():
        out = model(input_ids=prompt, attention_mask=ones, use_cache=True)
        state.update(cache=out.cache, token=out.logits[:, -1:].argmax(-1))

    def decode():
        cache, token, mask = state["cache"], state["token"], ones
        for _ in range(new_tokens):
            mask = torch.cat([mask, ones[:, :1]], 1)
            out = model(input_ids=token, attention_mask=mask, cache=cache, use_cache=True)
            cache, token = out.cache, out.logits[:, -1:].argmax(-1)

    return prepare, decode


def paired_decode_ratio(concept, base, prompt: torch.Tensor, new_tokens: int, repeats: int) -> tuple[float, float, float]:
    """Median of t(base)/t(concept) over repeats (each pair back to back), and the median seconds per step."""
    (prep_c, run_c), (prep_b, run_b) = decode_fn(concept, prompt, new_tokens), decode_fn(base, prompt, new_tokens)
    speedups, concept_times, base_times = [], [], []
    for repeat in range(repeats + 1):  # the first pair is the warm-up
        prep_b()
        base_s = _seconds(run_b)
        prep_c()
        concept_s = _seconds(run_c)
        if repeat:
            speedups.append(base_s / concept_s)
            concept_times.append(concept_s / new_tokens)
            base_times.append(base_s / new_tokens)
    return statistics.median(speedups), statistics.median(concept_times), statistics.median(base_times)


@torch.no_grad()
def kv_bytes(model, prompt: torch.Tensor) -> int:
    out = model(prompt, use_cache=True)
    cache = out.cache
    if isinstance(cache, DynamicCache):
        return sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers)
    return cache.nbytes()


def validation_ppl(model, blocks, batch_size: int) -> float:
    return evaluate_concepts(model, blocks, batch_size)["val_ppl"] if isinstance(
        model, Qwen2ConceptCompressionForCausalLM) else _plain_ppl(model, blocks, batch_size)


@torch.no_grad()
def _plain_ppl(model, blocks, batch_size: int) -> float:
    model.eval()
    nll, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        ids = torch.tensor(blocks[start : start + batch_size]["input_ids"])
        nll += float(model(input_ids=ids, labels=ids).loss) * ids[:, 1:].numel()
        count += ids[:, 1:].numel()
    return math.exp(nll / count)


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    layers = tuple(int(n) for n in args.layers.split(","))
    ratios = [float(r) for r in args.ratios.split(",")]
    contexts = [int(c) for c in args.contexts.split(",")]
    if HEADLINE_RATIO not in ratios:
        raise ValueError(f"--ratios must include the headline ratio {HEADLINE_RATIO}, got {args.ratios}")
    if HEADLINE_CONTEXT not in contexts:
        raise ValueError(f"--contexts must include {HEADLINE_CONTEXT} (decode_speedup_{HEADLINE_CONTEXT} is measured "
                         f"there), got {args.contexts}")
    base_manifest = ar_bench.ensure_trained(args.base, args.preset, args.base_steps)
    tokenizer = load_tokenizer(args.base)
    corpus = load_corpus("all")
    train_blocks = pack_sentences(corpus["train"], tokenizer, args.block_size)
    eval_blocks = pack_sentences(corpus["validation"], tokenizer, args.block_size).select(range(args.eval_blocks))
    work = Path(args.work_dir)
    step_ids = torch.tensor(train_blocks[: args.batch_size]["input_ids"])

    base_lora = get_peft_model(AutoModelForCausalLM.from_pretrained(args.base), base_lora_config())
    finetune(base_lora, Trainer, args, work / "base-lora", train_blocks)
    base = base_lora.merge_and_unload().eval()
    figures = {"base_val_ppl": validation_ppl(base, eval_blocks, args.batch_size)}
    base_lora_for_steps = get_peft_model(copy.deepcopy(base), base_lora_config())  # `base` stays plain for decoding

    headline = None
    for r in ratios:
        concept = add_concept_lora(Qwen2ConceptCompressionForCausalLM.from_base_pretrained(
            args.base, num_shallow_layers=layers[0], num_middle_layers=layers[1], num_deep_layers=layers[2],
            concept_vocab_size=args.concept_vocab, target_compression_ratio=r, gumbel_anneal_steps=args.finetune_steps,
            ratio_loss_weight=args.ratio_weight))
        history = finetune(concept, ConceptCompressionTrainer, args, work / f"concept-r{r:g}", train_blocks)
        train_rates = [entry["compression_ratio"] for entry in history if "compression_ratio" in entry]
        base_s, concept_s, ratio = paired_seconds(train_step_fn(base_lora_for_steps, step_ids),
                                                  train_step_fn(concept, step_ids), repeats=args.repeats)
        merged = concept.merge_and_unload().eval()
        evaluation = evaluate_concepts(merged, eval_blocks, args.batch_size)
        rows = concept_rows_fraction(concept, step_ids)
        figures.update({f"step_time_ratio_r{r:g}": ratio, f"flops_fraction_pred_r{r:g}": flops_fraction(layers, r),
                        f"concept_rows_fraction_r{r:g}": rows,
                        f"flops_fraction_achieved_r{r:g}": flops_fraction(layers, rows),
                        f"ppl_ratio_r{r:g}": evaluation["val_ppl"] / figures["base_val_ppl"],
                        f"compression_ratio_r{r:g}": evaluation["val_compression_ratio"],
                        f"train_compression_ratio_r{r:g}": train_rates[-1],
                        f"val_ppl_r{r:g}": evaluation["val_ppl"]})
        print(f"r={r:g}: step time ratio {ratio:.3f} (predicted FLOPs fraction {flops_fraction(layers, r):.3f}; "
              f"{concept_s:.3f}s vs {base_s:.3f}s), ppl {evaluation['val_ppl']:.2f} vs {figures['base_val_ppl']:.2f}, "
              f"compression {evaluation['val_compression_ratio']:.3f}")
        if r == HEADLINE_RATIO:
            headline = merged

    figures.update({"compression_ratio": figures[f"compression_ratio_r{HEADLINE_RATIO:g}"],
                    "step_time_ratio": figures[f"step_time_ratio_r{HEADLINE_RATIO:g}"],
                    "ppl_ratio": figures[f"ppl_ratio_r{HEADLINE_RATIO:g}"],
                    "flops_fraction_pred": flops_fraction(layers, HEADLINE_RATIO)})
    figures.update(decode_figures(headline, base, eval_blocks, contexts, args))
    figures[f"decode_speedup_{HEADLINE_CONTEXT}"] = figures[f"decode_speedup_{HEADLINE_CONTEXT}_b1"]

    result = write_result(
        args.json, "concept",
        config={"base": args.base, "preset": args.preset, "layers": list(layers), "ratios": ratios,
                "headline_ratio": HEADLINE_RATIO, "concept_vocab_size": args.concept_vocab,
                "ratio_loss_weight": args.ratio_weight,
                "contexts": contexts, "decode_batches": [1, 8], "new_tokens": args.new_tokens,
                "train_batch": [args.batch_size, args.block_size], "lora_r": 16, "lr": args.lr,
                "repeats": args.repeats, "eval_blocks": args.eval_blocks, "threads": args.threads,
                "max_position_embeddings_for_decode": 2 * max(contexts),
                "note": "decode speed on a text prompt tiled to the context; RoPE extended past the trained length"},
        budget={"base_steps": base_manifest["steps"], "finetune_steps": args.finetune_steps,
                "wall_s": time.perf_counter() - started},
        figures=figures,
        targets={"step_time_ratio": target(figures["step_time_ratio"], "≤", 0.65),
                 "decode_speedup_2048": target(figures["decode_speedup_2048"], "≥", 1.5),
                 "ppl_ratio": target(figures["ppl_ratio"], "≤", 1.05)},
    )
    print("\n".join(f"{k}: {v:.4g}" for k, v in result["figures"].items()))
    return result


def decode_figures(concept, base, eval_blocks, contexts: list[int], args) -> dict:
    """Decode speed-ups (concept / base tokens per second) per context and batch, and the KV-cache ratio."""
    for model in (concept, base):
        model.config.max_position_embeddings = 2 * max(contexts)
    stream = torch.tensor([i for block in eval_blocks["input_ids"] for i in block])
    figures = {}
    for context in contexts:
        prompt_row = stream.repeat(context // len(stream) + 1)[:context]
        for batch in (1, 8):
            prompt = torch.stack([prompt_row.roll(-17 * b) for b in range(batch)])  # rows differ, fire at different times
            speedup, concept_s, base_s = paired_decode_ratio(concept, base, prompt, args.new_tokens, args.repeats)
            figures[f"decode_speedup_{context}_b{batch}"] = speedup
            figures[f"decode_tok_s_{context}_b{batch}"] = batch / concept_s
            print(f"decode context {context} batch {batch}: {batch / concept_s:.1f} tok/s vs base {batch / base_s:.1f}")
        figures[f"kv_cache_ratio_{context}"] = kv_bytes(concept, prompt[:1]) / kv_bytes(base, prompt[:1])
    return figures
