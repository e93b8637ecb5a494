"""`genlab probe SYSTEM RUN_DIR`: diagnostic experiments on a trained run.

``planner`` — the concept-drop experiment (SPEC P7; seed 003 "你可以做什么实验"): on held-out (u, y) pairs,
find z* with the E-step, then delete a random fraction of its concept tokens (the survivors keep their order)
and report how much the executor's reconstruction loss NLL(y | z) rises. A rise near zero means the
executor does not really use the concepts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from ..configuration_planner import CONCEPT_PAD
from ..data import load_corpus
from ..modeling_planner import PlannerExecutorModel, concept_slot_mask
from ..runs import read_manifest
from ..tokenization import load_tokenizer
from ..trainers.planner_data import build_pairs, collate
from ..trainers.planner_estep import RareCharacterProposer, estep

SPLITS = ("train", "validation", "test")


@dataclass
class PlannerProbeConfig:
    """`genlab probe planner RUN_DIR`: the concept-drop experiment's options."""

    run_dir: str | None = field(default=None, metadata={"help": "a planner run directory (or give it as RUN_DIR)"})
    pairs: int = field(default=256, metadata={"help": "held-out pairs to use"})
    split: str = field(default="validation", metadata={"choices": list(SPLITS)})
    drop_rates: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0],
                                    metadata={"help": "fractions of the concepts to drop"})
    batch_size: int = field(default=32, metadata={"help": "pairs per batch"})
    seed: int = field(default=0, metadata={"help": "seed of the pair sample and the drops"})
    json: str | None = field(default=None, metadata={"help": "also write the result here"})

    def __post_init__(self):
        if self.run_dir is None:
            raise ValueError("RUN_DIR is required: the planner run directory to probe")
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {list(SPLITS)}, got {self.split!r}")


def drop_concepts(concept_ids: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Delete each content concept with probability ``rate``; survivors move left in order, the rest is ``<pad>``."""
    keep = concept_slot_mask(concept_ids) & (torch.rand(concept_ids.shape, generator=generator) >= rate)
    order = torch.sort((~keep).long(), dim=-1, stable=True).indices  # kept slots first, in their order
    return concept_ids.masked_fill(~keep, CONCEPT_PAD).gather(-1, order)


@torch.no_grad()
def concept_drop(model, proposer, batches: list[dict], rates: list[float], seed: int) -> dict:
    """Mean NLL(y | z*) per token and its rise when concepts are dropped at each rate."""
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


def run_planner(args: PlannerProbeConfig) -> dict:
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
