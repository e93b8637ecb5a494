"""`genlab bench concept`: concept compression vs the plain Qwen2 it was built from (SPEC C10, B).

Both sides start from the same base and get the same LoRA fine-tuning (same steps, data, batch, learning rate);
the concept side also trains its ConceptHead/Embedding. Two sizes: ``--preset tiny`` (an AR base trained here,
fast, for regressions) and ``--preset smollm2`` (SmolLM2-135M converted to Qwen2: the real 30-layer base). Every
timing is in eval mode with noise-free decisions, paired back to back on one thread. Measured, per target ratio
r: one training step's time (forward + backward + AdamW, both sides with the same LoRA), validation perplexity
per normal token (CE only), the rate the model actually runs at (noise-free, as decoding fires), the share of
concepts the head chose itself (not forced), and ΔNLL when the concept vectors are permuted across positions or
zeroed. At r = 1/4 (the headline): greedy cached decode tokens/s at each context, batch 1 and 8, the KV-cache bytes
after the prompt, and the noise-free forward at 2048 tokens with flex attention (block-sparse, from the same C4
mask function) against the dense boolean mask. ``flops_fraction_pred`` counts the LM head, the ConceptHead and the
concept embedding besides the decoder layers; ``decoder_flops_fraction`` is the layers alone.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, DynamicCache

from ..data import load_corpus
from ..modeling_concept import Qwen2ConceptCompressionForCausalLM
from ..runs import TRAINER_LOG, read_manifest
from ..timing import paired_seconds, train_step_fn
from ..tokenization import load_tokenizer
from ..trainers.ar import pack_sentences
from ..trainers.concept import add_concept_lora, base_lora_config, evaluate_concepts, load_concept_run
from . import target, write_result

HEADLINE_RATIO = 0.25
HEADLINE_CONTEXT = 2048  # SPEC B's decode_speedup_2048
HEADLINE_FIGURES = ("compression_ratio", "step_time_ratio", "ppl_ratio", "val_ppl", "flops_fraction_pred",
                    "inference_rate_ratio", "natural_fire_fraction", "delta_nll_concepts_permuted",
                    "delta_nll_concepts_zeroed", "train_steps")


@dataclass
class ConceptBenchConfig:
    """`genlab bench concept`: what to measure; the base, its LoRA fine-tune and one concept run per ratio are
    trained first (under ``work_dir``) when incomplete."""

    json: str | None = field(default=None, metadata={"help": "where to write the benchmark JSON"})
    base: str = field(default="runs/bench/concept/ar-tiny", metadata={
        "help": "a trained AR run (tiny preset); trained first (with --base-steps) when incomplete"})
    preset: str = field(default="tiny", metadata={
        "help": "the base when it is made first: an AR preset trained here, or 'smollm2' (SmolLM2-135M converted)"})
    base_steps: int = field(default=200, metadata={"help": "steps of the base when it is trained first"})
    finetune_steps: int = field(default=100, metadata={"help": "LoRA steps, the same for both sides"})
    batch_size: int = field(default=8, metadata={"help": "training batch of both fine-tunes and of the timed step"})
    block_size: int = field(default=128, metadata={"help": "tokens per packed block"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate of both fine-tunes"})
    layers: str = field(default="2,3,1", metadata={"help": "shallow,middle,deep (half the layers in the middle)"})
    ratios: str = field(default="0.125,0.25,0.5", metadata={"help": "target ratios r, comma-separated"})
    concept_vocab: int = field(default=512, metadata={"help": "concept vocabulary size K"})
    ratio_weight: float = field(default=1.0, metadata={"help": "weight of the C7 rate loss"})
    firing: str = field(default="threshold", metadata={"help": "threshold (one rule everywhere) or sampled (ablation)"})
    contexts: str = field(default="512,2048", metadata={"help": "decode contexts, comma-separated (must include 2048)"})
    new_tokens: int = field(default=32, metadata={"help": "decoded tokens per timing"})
    eval_blocks: int = field(default=32, metadata={"help": "validation blocks for perplexity"})
    repeats: int = field(default=5, metadata={"help": "timed repeats per figure (median)"})
    work_dir: str = field(default="runs/bench/concept", metadata={"help": "where the fine-tuned runs go"})
    threads: int = field(default=1, metadata={
        "help": "torch threads (1: on a shared, oversubscribed CPU more threads made both sides erratic)"})
    base_lora_run: str | None = field(default=None, metadata={
        "help": "the base to compare with (default: WORK_DIR/base-lora, the base after the same LoRA fine-tuning)"})
    concept_run: str | None = field(default=None, metadata={
        "help": "the concept run of the headline ratio (default: WORK_DIR/concept-r0.25)"})

    def __post_init__(self):
        if HEADLINE_RATIO not in self.ratio_list():
            raise ValueError(f"--ratios must include the headline ratio {HEADLINE_RATIO}, got {self.ratios}")
        if HEADLINE_CONTEXT not in self.context_list():
            raise ValueError(f"--contexts must include {HEADLINE_CONTEXT} (decode_speedup_{HEADLINE_CONTEXT} is "
                             f"measured there), got {self.contexts}")

    def layer_split(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.layers.split(","))

    def ratio_list(self) -> list[float]:
        return [float(r) for r in self.ratios.split(",")]

    def context_list(self) -> list[int]:
        return [int(c) for c in self.contexts.split(",")]

    def base_lora_dir(self) -> Path:
        return Path(self.base_lora_run or Path(self.work_dir) / "base-lora")

    def concept_dir(self, r: float) -> Path:
        if r == HEADLINE_RATIO and self.concept_run is not None:
            return Path(self.concept_run)
        return Path(self.work_dir) / f"concept-r{r:g}"


def flops_fraction(layers: tuple[int, int, int], r: float) -> float:
    """(n_sh + n_deep·(1 + r) + n_mid·r) / N: the decoder-layer FLOPs per token relative to the base (C10)."""
    shallow, middle, deep = layers
    return (shallow + deep * (1 + r) + middle * r) / sum(layers)


def model_flops_fraction(model, r: float) -> float:
    """Predicted FLOPs per token of the concept model over its base's, with everything counted: the decoder layers
    (2·params each; the deep ones also see r concept rows, the middle ones only those), the LM head, the ConceptHead
    (K + 1 logits per token) and the concept embedding (a (K)-wide matmul per concept)."""
    config = model.config
    layer = 2 * sum(p.numel() for p in model.model.layers[0].parameters())
    lm_head = 2 * config.hidden_size * config.vocab_size
    layers = (config.num_shallow_layers, config.num_middle_layers, config.num_deep_layers)
    concept = flops_fraction(layers, r) * sum(layers) * layer + lm_head
    concept += 2 * config.hidden_size * (config.concept_vocab_size + 1) + r * 2 * config.hidden_size * config.concept_vocab_size
    return concept / (sum(layers) * layer + lm_head)


@torch.no_grad()
def concept_rows_fraction(model, ids: torch.Tensor, samples: int = 5) -> float:
    """Rows the middle blocks really process in a training step, per token: the batch's packed concept width
    (max over rows, forced boundaries included, sampled decisions) / sequence length, averaged over samples.
    ``model`` is put in train mode: pass the copy that is timed for training steps, not one timed for decoding."""
    model.train()
    widths = [int(model(input_ids=ids).is_concept.sum(1).max()) for _ in range(samples)]
    return statistics.mean(widths) / ids.shape[1]


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decode_fn(model, prompt: torch.Tensor, new_tokens: int):
    """A greedy decoding loop of ``new_tokens`` cached steps after an untimed prefill (fresh cache each call).

    Both models go through their own forward with their own cache (DynamicCache / ConceptCache); the
    prefill is done in ``prepare`` so only the decode steps are timed. Both closures run without autograd (a
    decorator on this factory would not reach them: the first release timed decoding with the graph recorded,
    and a SmolLM2 prefill of 8 × 2048 tokens then held ~10 GB of activations).
    """
    ones = torch.ones_like(prompt)
    state = {}

    @torch.no_grad()
    def prepare():
        out = model(input_ids=prompt, attention_mask=ones, use_cache=True, logits_to_keep=1)  # as generate's prefill
        state.update(cache=out.cache, token=out.logits[:, -1:].argmax(-1))

    @torch.no_grad()
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


def run(args: ConceptBenchConfig) -> dict:
    """Measure the runs under ``args.work_dir`` against their base (complete: see ``genlab.prepare``)."""
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    layers, ratios, contexts = args.layer_split(), args.ratio_list(), args.context_list()
    base_manifest = read_manifest(args.base)
    tokenizer = load_tokenizer(args.base)
    corpus = load_corpus("all")
    train_blocks = pack_sentences(corpus["train"], tokenizer, args.block_size)
    eval_blocks = pack_sentences(corpus["validation"], tokenizer, args.block_size).select(range(args.eval_blocks))
    step_ids = torch.tensor(train_blocks[: args.batch_size]["input_ids"])

    base = AutoModelForCausalLM.from_pretrained(args.base_lora_dir()).eval()
    figures = {"base_val_ppl": validation_ppl(base, eval_blocks, args.batch_size)}
    base_lora_for_steps = get_peft_model(copy.deepcopy(base), base_lora_config())  # `base` stays plain for decoding

    headline = None
    for r in ratios:
        run_dir = args.concept_dir(r)
        merged = load_concept_run(run_dir).eval()
        history = json.loads((run_dir / TRAINER_LOG).read_text(encoding="utf-8"))
        train_rates = [entry["compression_ratio"] for entry in history if "compression_ratio" in entry]
        concept = add_concept_lora(copy.deepcopy(merged))  # timed like the base: the same LoRA on top
        base_s, concept_s, ratio = paired_seconds(train_step_fn(base_lora_for_steps, step_ids),
                                                  train_step_fn(concept, step_ids), repeats=args.repeats)
        evaluation = evaluate_concepts(merged, eval_blocks, args.batch_size)
        rows = concept_rows_fraction(concept, step_ids)
        runs_at = evaluation["val_compression_ratio"]  # the rate the model really runs at (noise-free)
        figures.update({f"step_time_ratio_r{r:g}": ratio,
                        f"flops_fraction_pred_r{r:g}": model_flops_fraction(merged, runs_at),
                        f"decoder_flops_fraction_r{r:g}": flops_fraction(layers, runs_at),
                        f"concept_rows_fraction_r{r:g}": rows,
                        f"flops_fraction_achieved_r{r:g}": model_flops_fraction(merged, rows),
                        f"ppl_ratio_r{r:g}": evaluation["val_ppl"] / figures["base_val_ppl"],
                        f"compression_ratio_r{r:g}": runs_at,
                        f"inference_rate_ratio_r{r:g}": runs_at / r,
                        f"natural_fire_fraction_r{r:g}": evaluation["natural_fire_fraction"],
                        f"delta_nll_concepts_permuted_r{r:g}": evaluation["delta_nll_concepts_permuted"],
                        f"delta_nll_concepts_zeroed_r{r:g}": evaluation["delta_nll_concepts_zeroed"],
                        f"train_compression_ratio_r{r:g}": train_rates[-1],
                        f"train_steps_r{r:g}": read_manifest(run_dir)["steps"],
                        f"val_ppl_r{r:g}": evaluation["val_ppl"]})
        print(f"r={r:g}: step time ratio {ratio:.3f} (predicted FLOPs fraction {figures[f'flops_fraction_pred_r{r:g}']:.3f}; "
              f"{concept_s:.3f}s vs {base_s:.3f}s), ppl {evaluation['val_ppl']:.2f} vs {figures['base_val_ppl']:.2f}, "
              f"runs at {runs_at:.3f} concepts/token ({evaluation['natural_fire_fraction']:.0%} natural), "
              f"ΔNLL permuted {evaluation['delta_nll_concepts_permuted']:+.3f}")
        if r == HEADLINE_RATIO:
            headline = merged

    figures.update({name: figures[f"{name}_r{HEADLINE_RATIO:g}"] for name in HEADLINE_FIGURES})
    figures.update(decode_figures(headline, base, eval_blocks, contexts, args.new_tokens, args.repeats))
    figures[f"decode_speedup_{HEADLINE_CONTEXT}"] = figures[f"decode_speedup_{HEADLINE_CONTEXT}_b1"]
    figures["flex_vs_dense_forward_2048"] = flex_vs_dense(headline, eval_blocks, args.repeats)

    result = write_result(
        args.json, "concept",
        config={"base": args.base, "compared_with": str(args.base_lora_dir()), "preset": args.preset,
                "firing": headline.config.firing, "ratio_loss": "H-Net ratio loss on the hard decisions"
                if headline.config.firing == "threshold" else "(soft rate - r)^2", "layers": list(layers), "ratios": ratios,
                "headline_ratio": HEADLINE_RATIO, "concept_vocab_size": args.concept_vocab,
                "ratio_loss_weight": args.ratio_weight,
                "contexts": contexts, "decode_batches": [1, 8], "new_tokens": args.new_tokens,
                "train_batch": [args.batch_size, args.block_size], "lora_r": headline.config.lora_r, "lr": args.lr,
                "repeats": args.repeats, "eval_blocks": args.eval_blocks, "threads": args.threads,
                "max_position_embeddings_for_decode": 2 * max(contexts),
                "note": "decode speed on a text prompt tiled to the context; RoPE extended past the trained length"},
        budget={"base_steps": base_manifest["steps"], "finetune_steps": args.finetune_steps,
                "wall_s": time.perf_counter() - started},
        figures=figures,
        targets={"step_time_ratio": target(figures["step_time_ratio"], "≤", 0.6),
                 "decode_speedup_2048": target(figures["decode_speedup_2048"], "≥", 2.0),
                 "decode_speedup_2048_b8": target(figures["decode_speedup_2048_b8"], "≥", 2.0),
                 "kv_cache_ratio_2048": target(figures["kv_cache_ratio_2048"], "≤", 0.4),
                 "ppl_ratio": target(figures["ppl_ratio"], "≤", 1.05),
                 "inference_rate_ratio": {"goal": "0.75–1.25 (±25 % of r)",
                                          "met": bool(0.75 <= figures["inference_rate_ratio"] <= 1.25)},
                 "delta_nll_concepts_permuted": target(figures["delta_nll_concepts_permuted"], ">", 0.0)},
    )
    print("\n".join(f"{k}: {v:.4g}" for k, v in result["figures"].items()))
    return result


@torch.no_grad()
def flex_vs_dense(model, eval_blocks, repeats: int) -> float:
    """t(flex) / t(dense sdpa) of the noise-free forward over 2048 tokens (batch 1): the C4 mask as a block-sparse
    ``BlockMask`` against the dense boolean mask, both from ``genlab.masking``'s rule (flex compiled first)."""
    stream = torch.tensor([i for block in eval_blocks["input_ids"] for i in block])
    ids = stream.repeat(HEADLINE_CONTEXT // len(stream) + 1)[:HEADLINE_CONTEXT][None]
    flex = copy.deepcopy(model).eval()
    flex.set_attn_implementation("flex_attention")
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False):  # torch 2.13 CPU: see tests/test_masking.py
        _, _, ratio = paired_seconds(lambda: model(input_ids=ids), lambda: flex(input_ids=ids), repeats=repeats)
    return ratio


def decode_figures(concept, base, eval_blocks, contexts: list[int], new_tokens: int, repeats: int) -> dict:
    """Decode speed-ups (concept / base tokens per second) per context and batch, and the KV-cache ratio."""
    for model in (concept, base):
        model.config.max_position_embeddings = 2 * max(contexts)
    stream = torch.tensor([i for block in eval_blocks["input_ids"] for i in block])
    figures = {}
    for context in contexts:
        prompt_row = stream.repeat(context // len(stream) + 1)[:context]
        for batch in (1, 8):
            prompt = torch.stack([prompt_row.roll(-17 * b) for b in range(batch)])  # rows differ, fire at different times
            speedup, concept_s, base_s = paired_decode_ratio(concept, base, prompt, new_tokens, repeats)
            figures[f"decode_speedup_{context}_b{batch}"] = speedup
            figures[f"decode_tok_s_{context}_b{batch}"] = batch / concept_s
            print(f"decode context {context} batch {batch}: {batch / concept_s:.1f} tok/s vs base {batch / base_s:.1f}")
        figures[f"kv_cache_ratio_{context}"] = kv_bytes(concept, prompt[:1]) / kv_bytes(base, prompt[:1])
    return figures
