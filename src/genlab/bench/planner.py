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

The monitor curves of the planner run (P6) are plotted beside the JSON as ``<json stem>_monitors.png``
(``planner_monitors.png`` for ``planner.json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Trainer, set_seed

from ..data import load_corpus
from ..hub import write_card
from ..modeling_planner import PlannerExecutorModel
from ..probe import concept_drop
from ..runs import export_run, is_complete, prepare_run_dir, read_manifest
from ..tokenization import FIRST_ORDINARY_ID, load_tokenizer, resolve_tokenizer
from ..trainers.common import TimeBudgetCallback, training_arguments
from ..trainers.planner import TRAINER_LOG, RareCharacterProposer, build_pairs, collate, estep
from ..trainers.planner_monitors import corrupt_concepts
from . import paired_seconds, target, write_result

NEW_TOKENS = 64
MONITOR_KEYS = ("delta_nll_shuffle", "top1_margin", "flip_rate", "staleness_gap", "planner_entropy",
                "planner_max_prob", "soft_hard_cosine", "planner_grad_norm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", default=None, help="where to write the benchmark JSON")
    parser.add_argument("--run-dir", default="runs/bench/planner")
    parser.add_argument("--ar-run-dir", default="runs/bench/planner-ar")
    parser.add_argument("--steps", type=int, default=500, help="optimiser steps for each model")
    parser.add_argument("--budget", type=float, default=600, help="wall-clock cap of the planner's training (s)")
    parser.add_argument("--ar-steps", type=int, default=None,
                        help="AR optimiser steps (default: as many as the planner run did)")
    parser.add_argument("--ar-budget", type=float, default=600, help="wall-clock cap of the AR training (s)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup-estep", type=int, default=250)
    parser.add_argument("--prior-weight", type=float, default=1.0, help="β_max of the E-step score (SPEC P4: 1)")
    parser.add_argument("--max-text-length", type=int, default=48)
    parser.add_argument("--eval-pairs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)


def ensure_planner(args: argparse.Namespace) -> dict:
    if not is_complete(args.run_dir):
        from ..cli import build_parser
        from ..trainers import planner

        planner.run(build_parser().parse_args([
            "train", "planner", "--run-dir", args.run_dir, "--max-steps", str(args.steps), "--budget", str(args.budget),
            "--batch-size", str(args.batch_size), "--warmup-estep", str(args.warmup_estep), "--prior-weight", str(args.prior_weight),
            "--estep-top-k", "2",
            "--refresh-steps", "100", "--monitor-steps", "50", "--logging-steps", "25", "--save-steps", "100000",
            "--max-text-length", str(args.max_text_length), "--seed", str(args.seed), "--report-to", "none"]))
    return read_manifest(args.run_dir)


def ar_pairs(pairs, sep_id: int):
    """``u <sep> y``: labels only on y (its ``</s>`` included)."""
    def join(row):
        ids = row["u_ids"] + [sep_id] + row["y_ids"]
        return {"input_ids": ids, "labels": [-100] * (len(row["u_ids"]) + 1) + row["y_ids"]}

    return pairs.map(join, remove_columns=pairs.column_names)


def ar_collate(features: list[dict]) -> dict[str, torch.Tensor]:
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), width, dtype=torch.long)
    labels = torch.full((len(features), width), -100)
    mask = torch.zeros(len(features), width, dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def ar_config(model: PlannerExecutorModel, target_params: int) -> Qwen2Config:
    """The executor's Qwen2 shape with as many layers as bring the AR model to ``target_params``."""
    stack = model.config.executor
    per_layer = sum(p.numel() for p in model.executor.layers[0].parameters())
    base = model.config.vocab_size * stack["hidden_size"] + stack["hidden_size"]  # tied embedding + final norm
    layers = max(1, round((target_params - base) / per_layer))
    return Qwen2Config(**{**stack, "num_hidden_layers": layers}, vocab_size=model.config.vocab_size,
                       tie_word_embeddings=True, max_position_embeddings=512, pad_token_id=model.config.pad_token_id,
                       bos_token_id=model.config.bos_token_id, eos_token_id=model.config.eos_token_id)


def ensure_ar(args: argparse.Namespace, model: PlannerExecutorModel, target_params: int, steps: int) -> dict:
    if not is_complete(args.ar_run_dir):
        tokenizer = resolve_tokenizer(None)
        pairs = build_pairs(load_corpus("all")["train"], tokenizer, model.config.max_input_length,
                            model.config.max_text_length)
        set_seed(args.seed)
        ar = Qwen2ForCausalLM(ar_config(model, target_params))
        run_dir = prepare_run_dir(args.ar_run_dir)
        namespace = argparse.Namespace(max_steps=steps, batch_size=args.batch_size, lr=1e-3, seed=args.seed,
                                       lr_scheduler="constant_with_warmup", warmup_steps=None, logging_steps=25,
                                       save_steps=100000, report_to="none")
        trainer = Trainer(model=ar, args=training_arguments(namespace, run_dir),
                          train_dataset=ar_pairs(pairs, tokenizer.sep_token_id), data_collator=ar_collate,
                          callbacks=[TimeBudgetCallback(args.ar_budget)])
        trainer.train()
        manifest = {"system": "ar", "role": "planner baseline p(y|u)", "steps": trainer.state.global_step,
                    "parameters": sum(p.numel() for p in ar.parameters())}
        export_run(run_dir, lambda tmp: (ar.save_pretrained(tmp), tokenizer.save_pretrained(tmp)), manifest)
    return read_manifest(args.ar_run_dir)


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
        sums["zstar_concepts"] += float((z_star >= 3).sum())
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


def plot_monitors(log_history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("executor_loss", "planner_loss") + MONITOR_KEYS
    fig, axes = plt.subplots(2, 5, figsize=(20, 7))
    for ax, key in zip(axes.flat, keys):
        points = [(e["step"], e[f"monitor/{key}" if key in MONITOR_KEYS else key]) for e in log_history
                  if (f"monitor/{key}" if key in MONITOR_KEYS else key) in e]
        if points:
            ax.plot(*zip(*points), marker=".")
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.suptitle("planner–executor hard-EM monitors (SPEC P6)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    manifest = ensure_planner(args)
    model = PlannerExecutorModel.from_pretrained(args.run_dir).eval()
    tokenizer = load_tokenizer(args.run_dir)
    ar_manifest = ensure_ar(args, model, manifest["parameters"], args.ar_steps or manifest["steps"])
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

    json_path = Path(args.json) if args.json else Path(args.run_dir) / "bench.json"
    plot = json_path.with_name(f"{json_path.stem}_monitors.png")  # planner.json → planner_monitors.png
    plot_monitors(json.loads((Path(args.run_dir) / TRAINER_LOG).read_text(encoding="utf-8")), plot)
    result = write_result(
        args.json, "planner",
        config={"run_dir": args.run_dir, "ar_run_dir": args.ar_run_dir, "eval_pairs": len(pairs), "split": "validation",
                "planner_parameters": manifest["parameters"], "ar_parameters": ar_manifest["parameters"],
                "ar_layers": ar.config.num_hidden_layers, "planner_config": model.config.to_diff_dict(),
                "new_tokens": NEW_TOKENS, "repeats": args.repeats, "monitor_plot": str(plot),
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
    if args.json:  # the card reads RUN_DIR/bench.json (SPEC H5)
        shutil.copyfile(args.json, Path(args.run_dir) / "bench.json")
        write_card(args.run_dir)
    print("\n".join(f"{k}: {v:.4g}" for k, v in result["figures"].items()))
    return result
