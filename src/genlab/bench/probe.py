"""`genlab probe SYSTEM RUN_DIR`: diagnostic experiments on a trained run.

``concept`` — where the ConceptHead fires in a text (the boundaries, forced ones apart) and, for each frequent
concept id, the tokens it fired on: what a researcher looks at first (SPEC C2, C7).

``planner`` — the concept-drop experiment (SPEC P7; seed 003 "你可以做什么实验"): on held-out (u, y) pairs,
take the plan the executor trains on (hard-EM: z* from the E-step; straight-through / soft mixture: the
planner's own plan, with its embeddings), then delete a random fraction of its concept tokens (the survivors
keep their order) and report how much the executor's reconstruction loss NLL(y | z) rises. A rise near zero
means the executor does not really use the concepts.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import torch

from ..configuration_planner import CONCEPT_PAD
from ..data import load_corpus
from ..modeling_planner import PlannerExecutorModel, concept_slot_mask
from ..runs import read_manifest
from ..tokenization import load_tokenizer
from ..trainers.concept import load_concept_run
from ..trainers.planner_data import collate, run_pairs
from ..trainers.planner_estep import estep, make_proposer

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


def drop_concepts(concept_ids: torch.Tensor, rate: float, generator: torch.Generator,
                  concept_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Delete each content concept with probability ``rate``; survivors move left in order, the rest is ``<pad>``.
    → (ids, their ``concept_embeds`` moved the same way, or None)."""
    keep = concept_slot_mask(concept_ids) & (torch.rand(concept_ids.shape, generator=generator) >= rate)
    order = torch.sort((~keep).long(), dim=-1, stable=True).indices  # kept slots first, in their order
    kept = concept_ids.masked_fill(~keep, CONCEPT_PAD).gather(-1, order)
    if concept_embeds is None:
        return kept, None
    return kept, concept_embeds.gather(2, order[..., None].expand_as(concept_embeds))


def training_plans(model, proposer):
    """(batch, generator) → (z, its embeddings or None): what the executor trained on reads for a batch — hard-EM's
    z* (E-step past its warm-up), or a straight-through / soft-mixture model's own noise-free plan."""
    if model.config.concept_gradient == "hard_em":
        return lambda batch, generator: (estep(model, proposer, batch, step=model.config.estep_warmup_steps,
                                               generator=generator).plans, None)
    return lambda batch, generator: model.relaxed_plan(batch["input_ids"], batch["attention_mask"])[:2]


@torch.no_grad()
def concept_drop(model, plans_fn, batches: list[dict], rates: list[float], seed: int) -> dict:
    """Mean NLL(y | z) per token, z = ``plans_fn(batch, generator)`` (``training_plans``), and its rise when
    concepts are dropped at each rate."""
    generator = torch.Generator().manual_seed(seed)
    totals = {"nll": 0.0, **{rate: 0.0 for rate in rates}}
    tokens = 0
    for batch in batches:
        z, embeds = plans_fn(batch, generator)
        count = int(batch["text_attention_mask"].sum())
        text = batch["text_ids"], batch["text_attention_mask"]
        nll = lambda ids, read: float(model.executor_forward(ids, *text, read).loss) * count  # noqa: E731
        totals["nll"] += nll(z, embeds)
        for rate in rates:
            totals[rate] += nll(*drop_concepts(z, rate, generator, embeds))
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
    pairs = run_pairs(manifest, args.split, tokenizer, config)
    if len(pairs) == 0:
        raise ValueError(f"the {args.split} split of {manifest.get('data')!r} has no (u, y) pairs to probe")
    pairs = pairs.shuffle(seed=args.seed).select(range(min(args.pairs, len(pairs))))
    batches = [collate([pairs[j] for j in range(i, min(i + args.batch_size, len(pairs)))])
               for i in range(0, len(pairs), args.batch_size)]
    result = concept_drop(model, training_plans(model, make_proposer(model, tokenizer)), batches, args.drop_rates,
                          args.seed)
    print(f"NLL(y | z) = {result['nll_per_token']:.3f} nats/token on {result['pairs']} {args.split} pairs")
    for rate, delta in result["delta_nll"].items():
        print(f"drop {float(rate):.0%} of concepts: ΔNLL = {delta:+.3f} nats/token")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


# -- concept (C2, C7) -------------------------------------------------------------------------------------------------
@dataclass
class ConceptProbeConfig:
    """`genlab probe concept RUN_DIR`: where concepts fire, and what the frequent concept ids stand for."""

    run_dir: str | None = field(default=None, metadata={"help": "a concept run directory (or give it as RUN_DIR)"})
    text: list[str] = field(default_factory=list, metadata={"help": "texts to show (default: held-out sentences)"})
    sentences: int = field(default=200, metadata={"help": "held-out sentences the concept table is counted on"})
    shown: int = field(default=5, metadata={"help": "texts printed with their boundaries"})
    top: int = field(default=10, metadata={"help": "frequent concept ids listed"})
    json: str | None = field(default=None, metadata={"help": "also write the result here"})

    def __post_init__(self):
        if self.run_dir is None:
            raise ValueError("RUN_DIR is required: the concept run directory to probe")


def mark_concepts(tokens: list[str], is_concept: list[bool], is_forced: list[bool]) -> str:
    """The text with ``|`` after a token the head turned into a concept and ``¦`` after a forced one."""
    return "".join(t + ("¦" if f else "|" if c else "") for t, c, f in zip(tokens, is_concept, is_forced))


@torch.no_grad()
def run_concept(args: ConceptProbeConfig) -> dict:
    """Fire the ConceptHead (noise-free, as decoding does) over texts: print the boundaries, the rate, and for each
    frequent concept id the tokens it fired on."""
    manifest = read_manifest(args.run_dir)
    if manifest.get("system") != "concept":
        raise ValueError(f"{args.run_dir} is a {manifest.get('system')!r} run; `genlab probe concept` needs a concept run")
    model = load_concept_run(args.run_dir).eval()
    tokenizer = load_tokenizer(args.run_dir)
    texts = args.text or [t for t in load_corpus(manifest.get("data", "all"))["validation"]["text"]
                          if 8 <= len(t) <= 80][: args.sentences]
    if not texts:
        raise ValueError("no text to probe: give --text or use a run whose data has a validation split")
    shown, fired_on, tokens_seen, concepts, forced = [], {}, 0, 0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        out = model(input_ids=ids)
        tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]
        is_concept, is_forced = out.is_concept[0].tolist(), out.is_forced[0].tolist()
        for token, fired, concept_id in zip(tokens, is_concept, out.concept_ids[0].tolist()):
            if fired:
                fired_on.setdefault(concept_id, Counter())[token] += 1
        tokens_seen, concepts, forced = tokens_seen + len(tokens), concepts + sum(is_concept), forced + sum(is_forced)
        if len(shown) < args.shown:
            shown.append(mark_concepts(tokens, is_concept, is_forced))
    frequent = sorted(fired_on.items(), key=lambda item: -sum(item[1].values()))[: args.top]
    result = {"texts": len(texts), "rate": concepts / max(1, tokens_seen),
              "target_rate": model.config.target_compression_ratio,
              "natural_fire_fraction": 1 - forced / max(1, concepts), "ids_used": len(fired_on), "shown": shown,
              "concepts": [{"id": cid, "fires": sum(c.values()), "tokens": c.most_common(8)} for cid, c in frequent]}
    print(f"{result['texts']} texts: concepts per token {result['rate']:.3f} (target {result['target_rate']:g}), "
          f"{result['natural_fire_fraction']:.0%} chosen by the head, {result['ids_used']} ids used")
    print("boundaries (| after a concept, ¦ after a forced one):")
    for line in shown:
        print(f"  {line}")
    for entry in result["concepts"]:
        print(f"concept {entry['id']:>5} ({entry['fires']} fires): "
              + " ".join(f"{token!r}×{count}" for token, count in entry["tokens"]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, ensure_ascii=False, indent=2)
    return result
