"""`genlab bench planner`: what hard-EM concept-first decoding buys, after a stated training budget (SPEC B, P4–P7).

Two models are trained on the same (u, y) pairs with the same batch and learning rate, the AR model for as many
optimiser steps as the planner run did (each under a wall-clock cap, both recorded in "budget"): the
planner–executor (`genlab train planner`) and an AR Qwen2 of the same total parameter count trained on
p(y | u) (``u <sep> y </s>``, loss on y only). On held-out pairs:

- ``nll_zstar`` NLL(y | z*) per y token, z* from the E-step (which sees y: an oracle plan);
- ``nll_planner_z`` NLL(y | ẑ) with ẑ the planner's greedy plan from u (the deployable path);
- ``nll_bound`` (−log p(y | z*) − log p(z* | u)) per y token, an upper bound on −log p(y | u);
- ``nll_ar`` the AR model's NLL(y | u); ``nll_ratio_vs_ar`` = nll_planner_z / nll_ar (the figure SPEC B names),
  with ``nll_zstar_ratio_vs_ar`` and ``nll_bound_ratio_vs_ar`` beside it;
- ``delta_nll_shuffle`` / ``_mask`` / ``_random``: NLL rise when z* is replaced (target ≥ 1 nat/token);
- ``concept_drop_50``: the P7 probe's rise when half the concepts are dropped;
- ``executor_decode_ratio``: executor KV-cached greedy decoding tokens/s over a plain ``Qwen2ForCausalLM`` of
  the executor's size with an equally long prompt, loaded the same way (batch 1; ``_b16`` too), target ≥ 0.95;
  the two are timed back to back and the ratio is the median of the per-pair ratios.

The monitor curves of the planner run (P6) are plotted by ``genlab.report.plot_planner_monitors``;
`genlab bench planner` puts them beside the JSON as ``<json stem>_monitors.png``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field

import torch
from transformers import Qwen2ForCausalLM

from ..data import load_corpus
from ..modeling_planner import PlannerExecutorModel, concept_slot_mask
from ..runs import read_manifest
from ..timing import paired_seconds
from ..tokenization import FIRST_ORDINARY_ID, load_tokenizer
from ..trainers.planner_baseline import ar_collate
from ..trainers.planner_data import build_pairs, collate
from ..trainers.planner_estep import RareCharacterProposer, estep
from ..trainers.planner_monitors import corrupt_concepts
from . import target, write_result
from .probe import concept_drop

NEW_TOKENS = 64


@dataclass
class PlannerBenchConfig:
    """`genlab bench planner`: what to measure; the planner and its AR baseline are trained first when incomplete."""

    json: str | None = field(default=None, metadata={"help": "where to write the benchmark JSON"})
    run_dir: str = field(default="runs/bench/planner", metadata={"help": "the planner run"})
    ar_run_dir: str = field(default="runs/bench/planner-ar", metadata={"help": "the AR p(y|u) baseline run"})
    steps: int = field(default=500, metadata={"help": "optimiser steps for each model"})
    budget: float = field(default=600, metadata={"help": "wall-clock cap of the planner's training (s)"})
    ar_steps: int | None = field(default=None, metadata={
        "help": "AR optimiser steps (default: as many as the planner run did)"})
    ar_budget: float = field(default=600, metadata={"help": "wall-clock cap of the AR training (s)"})
    batch_size: int = field(default=16, metadata={"help": "training batch of both models"})
    warmup_estep: int = field(default=250, metadata={"help": "W of the planner's E-step"})
    prior_weight: float = field(default=1.0, metadata={"help": "β_max of the E-step score (SPEC P4: 1)"})
    max_text_length: int = field(default=48, metadata={"help": "longest y, in tokens"})
    eval_pairs: int = field(default=256, metadata={"help": "held-out pairs"})
    repeats: int = field(default=7, metadata={"help": "timed repeats per figure (median)"})
    seed: int = field(default=0, metadata={"help": "seed of training and evaluation"})


@torch.no_grad()
def held_out_figures(model, ar, tokenizer, batches: list[dict], step: int) -> dict:
    """Per-y-token NLLs of the planner–executor (z*, planner z, bound), the AR model, and ΔNLL(z*)."""
    proposer = RareCharacterProposer(model.config, tokenizer)
    generator = torch.Generator().manual_seed(0)
    sums = dict.fromkeys(("nll_zstar", "nll_planner_z", "nll_bound", "nll_ar", "delta_nll_shuffle",
                          "delta_nll_mask", "delta_nll_random", "zstar_concepts"), 0.0)
    tokens = 0
    for batch in batches:
        y, y_mask = batch["text_ids"], batch["text_attention_mask"]
        nll = lambda z: float(model.executor_forward(z, y, y_mask).token_nll.sum())  # noqa: E731
        z_star = estep(model, proposer, batch, step, generator=generator)[0]
        base = nll(z_star)
        sums["nll_zstar"] += base
        sums["nll_bound"] += base - float(model.planner_forward(batch["input_ids"], batch["attention_mask"], z_star).log_prob.sum())
        sums["nll_planner_z"] += nll(model.plan(batch["input_ids"], batch["attention_mask"]))
        for kind in ("shuffle", "mask", "random"):
            sums[f"delta_nll_{kind}"] += nll(corrupt_concepts(z_star, kind, model.config.concept_vocab_sizes, generator)) - base
        sums["zstar_concepts"] += float(concept_slot_mask(z_star).sum())
        joined = ar_collate([{"input_ids": u[um.bool()].tolist() + [tokenizer.sep_token_id] + t[tm.bool()].tolist(),
                              "labels": [-100] * (int(um.sum()) + 1) + t[tm.bool()].tolist()}
                             for u, um, t, tm in zip(batch["input_ids"], batch["attention_mask"], y, y_mask)])
        sums["nll_ar"] += float(ar(**joined).loss) * int(y_mask.sum())
        tokens += int(y_mask.sum())
    figures = {k: v / tokens for k, v in sums.items() if k != "zstar_concepts"}
    figures["zstar_concepts_per_example"] = sums["zstar_concepts"] / sum(len(b["index"]) for b in batches)
    return figures


def decode_ratio(model: PlannerExecutorModel, concepts: torch.Tensor, batch: int, repeats: int) -> tuple[float, float, float]:
    """(executor tok/s, plain Qwen2 tok/s, median paired speed ratio) for greedy decoding of NEW_TOKENS tokens."""
    concepts = concepts[:1].expand(batch, -1, -1)
    prefix_length = model.executor_prefix(concepts).valid.shape[1]
    config = model.config.stack_config("executor", 1024)
    config.tie_word_embeddings = True
    with tempfile.TemporaryDirectory() as tmp:  # loaded like the executor: weights from safetensors, not fresh
        Qwen2ForCausalLM(config).save_pretrained(tmp)
        plain = Qwen2ForCausalLM.from_pretrained(tmp).eval()
    prompt = torch.randint(FIRST_ORDINARY_ID, config.vocab_size, (batch, prefix_length),
                           generator=torch.Generator().manual_seed(0))
    fixed = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    with torch.no_grad():
        executor_s, plain_s, ratio = paired_seconds(
            lambda: model.execute(concepts, **fixed),
            lambda: plain.generate(prompt, attention_mask=torch.ones_like(prompt), pad_token_id=0, **fixed),
            repeats=repeats)
    return batch * NEW_TOKENS / executor_s, batch * NEW_TOKENS / plain_s, ratio


def run(args: PlannerBenchConfig) -> dict:
    """Measure the planner run against its AR baseline (both complete: see ``genlab.prepare``)."""
    manifest, ar_manifest = read_manifest(args.run_dir), read_manifest(args.ar_run_dir)
    model = PlannerExecutorModel.from_pretrained(args.run_dir).eval()
    tokenizer = load_tokenizer(args.run_dir)
    ar = Qwen2ForCausalLM.from_pretrained(args.ar_run_dir).eval()

    pairs = build_pairs(load_corpus("all")["validation"], tokenizer, model.config.max_input_length,
                        model.config.max_text_length)
    pairs = pairs.shuffle(seed=args.seed).select(range(min(args.eval_pairs, len(pairs))))
    batches = [collate([pairs[j] for j in range(i, min(i + 32, len(pairs)))]) for i in range(0, len(pairs), 32)]
    step = manifest["steps"]
    figures = held_out_figures(model, ar, tokenizer, batches, step)
    figures["nll_ratio_vs_ar"] = figures["nll_planner_z"] / figures["nll_ar"]
    figures["nll_zstar_ratio_vs_ar"] = figures["nll_zstar"] / figures["nll_ar"]
    figures["nll_bound_ratio_vs_ar"] = figures["nll_bound"] / figures["nll_ar"]
    figures["concept_drop_50"] = concept_drop(model, RareCharacterProposer(model.config, tokenizer), batches[:2],
                                              [0.5], args.seed)["delta_nll"]["0.5"]
    concepts = model.plan(batches[0]["input_ids"][:1], batches[0]["attention_mask"][:1])
    figures["executor_tok_s_b1"], figures["plain_tok_s_b1"], figures["executor_decode_ratio"] = decode_ratio(
        model, concepts, 1, args.repeats)
    figures["executor_tok_s_b16"], figures["plain_tok_s_b16"], figures["executor_decode_ratio_b16"] = decode_ratio(
        model, concepts, 16, args.repeats)
    figures["monitor_warnings"] = len(manifest["monitor_warnings"])

    result = write_result(
        args.json, "planner",
        config={"run_dir": args.run_dir, "ar_run_dir": args.ar_run_dir, "eval_pairs": len(pairs), "split": "validation",
                "planner_parameters": manifest["parameters"], "ar_parameters": ar_manifest["parameters"],
                "ar_layers": ar.config.num_hidden_layers, "planner_config": model.config.to_diff_dict(),
                "new_tokens": NEW_TOKENS, "repeats": args.repeats,
                "monitor_warning_rules": sorted({w["rule"] for w in manifest["monitor_warnings"]})},
        budget={"planner_max_steps": args.steps, "planner_wall_clock_cap_s": args.budget,
                "planner_steps_done": manifest["steps"], "ar_max_steps": args.ar_steps or manifest["steps"],
                "ar_wall_clock_cap_s": args.ar_budget, "ar_steps_done": ar_manifest["steps"],
                "batch_size": args.batch_size, "learning_rate": 1e-3, "estep_warmup_steps": args.warmup_estep,
                "estep_prior_weight": args.prior_weight,
                "max_text_length": args.max_text_length},
        figures=figures,
        targets={"delta_nll_shuffle": target(figures["delta_nll_shuffle"], "≥", 1.0),
                 "executor_decode_ratio": target(figures["executor_decode_ratio"], "≥", 0.95)},
    )
    print("\n".join(f"{k}: {v:.4g}" for k, v in result["figures"].items()))
    return result
