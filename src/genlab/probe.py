"""`genlab probe SYSTEM RUN_DIR`: diagnostic experiments on a trained run.

``planner`` — the concept-drop experiment (SPEC P7; seed 003 "你可以做什么实验"): on held-out (u, y) pairs,
find z* with the E-step, then delete a random fraction of its concept tokens (the survivors keep their order)
and report how much the executor's reconstruction loss NLL(y | z) rises. A rise near zero means the
executor does not really use the concepts.
"""

from __future__ import annotations

import argparse
import json

import torch


def add_parsers(subparsers) -> None:
    parser = subparsers.add_parser("planner", help="concept-drop experiment on a planner run (P7)",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--pairs", type=int, default=256, help="held-out pairs to use")
    parser.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    parser.add_argument("--drop-rates", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.set_defaults(handler=run_planner)


def drop_concepts(concept_ids: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Delete each content concept with probability ``rate``; survivors move left in order, the rest is ``<pad>``."""
    from .configuration_planner import CONCEPT_PAD
    from .modeling_planner import concept_slot_mask

    keep = concept_slot_mask(concept_ids) & (torch.rand(concept_ids.shape, generator=generator) >= rate)
    order = torch.sort((~keep).long(), dim=-1, stable=True).indices  # kept slots first, in their order
    return concept_ids.masked_fill(~keep, CONCEPT_PAD).gather(-1, order)


@torch.no_grad()
def concept_drop(model, proposer, batches: list[dict], rates: list[float], seed: int) -> dict:
    """Mean NLL(y | z*) per token and its rise when concepts are dropped at each rate."""
    from .trainers.planner import estep

    generator = torch.Generator().manual_seed(seed)
    totals = {"nll": 0.0, **{rate: 0.0 for rate in rates}}
    tokens = 0
    for batch in batches:
        z, _, _ = estep(model, proposer, batch, step=model.config.estep_warmup_steps, generator=generator)
        count = int(batch["text_attention_mask"].sum())
        nll = lambda plans: float(model.executor_forward(plans, batch["text_ids"],  # noqa: E731
                                                         batch["text_attention_mask"]).loss) * count
        totals["nll"] += nll(z)
        for rate in rates:
            totals[rate] += nll(drop_concepts(z, rate, generator))
        tokens += count
    base = totals["nll"] / tokens
    return {"nll_per_token": base, "pairs": sum(len(b["index"]) for b in batches),
            "delta_nll": {str(rate): totals[rate] / tokens - base for rate in rates}}


def run_planner(args: argparse.Namespace) -> dict:
    from .data import load_corpus
    from .modeling_planner import PlannerExecutorModel
    from .runs import read_manifest
    from .tokenization import load_tokenizer
    from .trainers.planner import RareCharacterProposer, build_pairs, collate

    manifest = read_manifest(args.run_dir)
    if manifest.get("system") != "planner":
        raise ValueError(f"{args.run_dir} is a {manifest.get('system')!r} run; `genlab probe planner` needs a planner run")
    model = PlannerExecutorModel.from_pretrained(args.run_dir).eval()
    tokenizer = load_tokenizer(args.run_dir)
    config = model.config
    pairs = build_pairs(load_corpus(manifest.get("data", "all"))[args.split], tokenizer, config.max_input_length,
                        config.max_text_length)
    if len(pairs) == 0:
        raise ValueError(f"the {args.split} split of {manifest.get('data')!r} has no (u, y) pairs to probe")
    pairs = pairs.shuffle(seed=args.seed).select(range(min(args.pairs, len(pairs))))
    batches = [collate([pairs[j] for j in range(i, min(i + args.batch_size, len(pairs)))])
               for i in range(0, len(pairs), args.batch_size)]
    result = concept_drop(model, RareCharacterProposer(config, tokenizer), batches, args.drop_rates, args.seed)
    print(f"NLL(y | z*) = {result['nll_per_token']:.3f} nats/token on {result['pairs']} {args.split} pairs")
    for rate, delta in result["delta_nll"].items():
        print(f"drop {float(rate):.0%} of concepts: ΔNLL = {delta:+.3f} nats/token")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result
