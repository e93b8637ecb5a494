"""The planner's E-step (SPEC P4): the proposers q(z | y), candidate scoring, z* and its per-example store.

For each example, candidates z are scored by S(z) = log p(y|z) + β log p(z|u); ``estep_selection="joint"``
keeps argmax S(z), ``"likelihood"`` keeps argmax log p(y|z) with S(z) as the tie-break. Candidates: the
proposer's plans, the planner's greedy plan and ``estep_top_k`` samples, and the stored z* itself; which
source won is returned so the trainer can monitor the win rates. ``planner_beam`` adds ``estep_top_k`` plans of a
diverse beam search (``estep_diversity_penalty``), the planner's best plans pushed apart from one another.

Proposers (``config.proposer``) are parameter-free extractors, informative from step 0 (so the executor learns
to read z at once instead of collapsing to an LM that ignores it, the seed's first "abnormal" case). Each takes
the batch and returns (batch, granularities, types, L) candidate plans; the granularities are plan lengths,
which trade log p(y|z) against log p(z|u):

- ``rare_characters`` (``RareCharacterProposer``), for any (u, y): type ``keywords`` = the m rarest characters
  of y (the corpus tokenizer numbers characters by frequency, so the rarest are the highest ids), in text
  order, hashed to ``3 + id mod V``; type ``shape`` = each clause's length (split at ，。！？；：、), bucketed by 4;
- ``keywords`` (``KeywordProposer``), for tasks where u names y's content: the characters y shares with u,
  un-hashed (concept 3 + t is token t, a ``text_concept_types`` type), in u's order, first occurrences only;
- ``learned`` (``LearnedProposer``), for any (u, y) and no hand-made keywords: the argmax plan of the model's own
  q(z | y) (``modeling_planner_posterior``), trained in the M-step; not informative at step 0, it becomes so as
  the executor learns to reconstruct y through it.

z* is stored per example index and searched again once it is ``estep_refresh_steps`` (M) steps old (v3.1);
the store is saved in every checkpoint (``planner_zcache.pt``) so resuming continues with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from transformers import TrainerCallback

from ..configuration_planner import CONCEPT_PAD, NUM_CONCEPT_SPECIALS, PlannerExecutorConfig
from ..modeling_planner import PlannerExecutorModel, concept_slot_mask
from ..tokenization import FIRST_ORDINARY_ID

PUNCTUATION = "，。！？；：、,.!?;:"
CACHE_FILE = "planner_zcache.pt"
PROPOSER_TYPES = ("keywords", "shape")


def plan_lengths(longest: int, count: int) -> list[int]:
    """``count`` plan lengths spread evenly up to ``longest`` (the proposers' granularities)."""
    return sorted({max(1, round(longest * (g + 1) / count)) for g in range(count)})


class RareCharacterProposer:
    """Parameter-free z from y: keyword plans at several granularities plus the clause-length shape."""

    def __init__(self, config: PlannerExecutorConfig, tokenizer, granularities: int | None = None):
        unknown = [t for t in config.concept_types if t not in PROPOSER_TYPES]
        if unknown:
            raise ValueError(f"the proposer knows the concept types {PROPOSER_TYPES}, got {unknown}")
        self.config = config
        ids = tokenizer.convert_tokens_to_ids(list(PUNCTUATION))
        self.punctuation = torch.tensor([i for i in ids if i != tokenizer.unk_token_id])
        longest = config.concept_max_lengths[config.concept_types.index("keywords")] if "keywords" in config.concept_types else 1
        self.granularities = plan_lengths(longest, granularities or config.estep_top_k)

    def keywords(self, y: torch.Tensor, valid: torch.Tensor, m: int, vocab: int, width: int) -> torch.Tensor:
        """(batch, width): the m highest-id (rarest) ordinary characters of y in text order, hashed."""
        ordinary = valid & (y >= FIRST_ORDINARY_ID) & ~torch.isin(y, self.punctuation.to(y.device))
        score = torch.where(ordinary, y, -1)
        top = score.topk(min(m, y.shape[1]), dim=1)
        position = torch.where(top.values >= 0, top.indices, y.shape[1])  # missing ones sort last
        position = position.sort(dim=1).values
        chars = torch.cat([y, y.new_full((y.shape[0], 1), -1)], 1).gather(1, position)
        concepts = torch.where(chars >= 0, NUM_CONCEPT_SPECIALS + chars.clamp(min=0) % vocab, CONCEPT_PAD)
        return torch.nn.functional.pad(concepts, (0, width - concepts.shape[1]), value=CONCEPT_PAD)

    def shape(self, y: torch.Tensor, valid: torch.Tensor, max_clauses: int, vocab: int, width: int) -> torch.Tensor:
        """(batch, width): bucketed length (4 characters per bucket) of each clause of y."""
        is_punct = torch.isin(y, self.punctuation.to(y.device)) & valid
        clause = is_punct.long().cumsum(1) - is_punct.long()  # a mark belongs to the clause it ends
        chars = (valid & ~is_punct & (y != self.config.eos_token_id)).long()
        counts = torch.zeros(y.shape[0], y.shape[1] + 1, dtype=torch.long, device=y.device)
        counts.scatter_add_(1, clause, chars)
        counts = counts[:, :max_clauses]
        ended = (counts == 0).long().cummax(1).values.bool()
        concepts = torch.where(ended, CONCEPT_PAD, NUM_CONCEPT_SPECIALS + (counts // 4).clamp(max=vocab - 1))
        return torch.nn.functional.pad(concepts, (0, width - concepts.shape[1]), value=CONCEPT_PAD)

    def __call__(self, batch: dict) -> torch.Tensor:
        """(batch, granularities, types, L) candidate plans from y (``text_ids``)."""
        y, valid, config = batch["text_ids"], batch["text_attention_mask"].bool(), self.config
        width = max(config.concept_max_lengths)
        plans = []
        for m in self.granularities:
            types = []
            for name, vocab, length in zip(config.concept_types, config.concept_vocab_sizes, config.concept_max_lengths):
                extract = self.keywords if name == "keywords" else self.shape
                types.append(extract(y, valid, m if name == "keywords" else length, vocab, width))
            plans.append(torch.stack(types, 1))
        return torch.stack(plans, 1)


class KeywordProposer:
    """z = the characters y shares with u, un-hashed, in u's order (first occurrences), cut to each length; with
    ``plan_separator_id`` the words of u that y holds whole, in u's order, the separator between them."""

    def __init__(self, config: PlannerExecutorConfig, tokenizer, granularities: int | None = None):
        if config.concept_types != ["keywords"] or config.text_concept_types != ["keywords"]:
            raise ValueError("the keywords proposer needs concept_types ['keywords'] declared in "
                             f"text_concept_types, got {config.concept_types} / {config.text_concept_types}")
        ids = tokenizer.convert_tokens_to_ids(list(PUNCTUATION))
        self.punctuation = torch.tensor([i for i in ids if i != tokenizer.unk_token_id])
        self.longest = config.concept_max_lengths[0]
        self.granularities = plan_lengths(self.longest, granularities or config.estep_top_k)
        self.separator = config.plan_separator_id

    def shared(self, u: torch.Tensor, u_valid: torch.Tensor, y: torch.Tensor, y_valid: torch.Tensor) -> torch.Tensor:
        """(batch, U) True where u's token is an ordinary character that y contains, at its first occurrence in u."""
        in_y = (u[:, :, None] == y.masked_fill(~y_valid, -1)[:, None, :]).any(-1)  # (batch, U)
        ordinary = u_valid & (u >= FIRST_ORDINARY_ID) & ~torch.isin(u, self.punctuation.to(u.device))
        earlier = (u[:, :, None] == u[:, None, :]).tril(-1) & u_valid[:, None, :]  # same token further left
        return in_y & ordinary & ~earlier.any(-1)

    def words(self, u: list[int], y: list[int]) -> list[int]:
        """One example's word plan (token ids): u's words (runs between separators) that occur whole in y, in u's
        order, the separator between each two."""
        spelt = lambda ids: f" {' '.join(map(str, ids))} "  # noqa: E731  whole-token substring match
        words, word = [], []
        for token in u + [self.separator]:
            if token != self.separator:
                word.append(token)
            elif word:
                words, word = words + [word], []
        kept = [w for w in words if spelt(w) in spelt(y)]
        return [t for i, w in enumerate(kept) for t in [self.separator] * (i > 0) + w]

    def word_plans(self, batch: dict) -> torch.Tensor:
        """(batch, granularities, types = 1, L): each example's word plan cut to each length, never ending on a
        separator."""
        rows = [self.words(u[m.bool()].tolist(), y[n.bool()].tolist()) for u, m, y, n in
                zip(batch["input_ids"], batch["attention_mask"], batch["text_ids"], batch["text_attention_mask"])]
        plans = torch.full((len(rows), len(self.granularities), 1, self.longest), CONCEPT_PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            for g, m in enumerate(self.granularities):
                cut = row[:m]
                cut = cut[:-1] if cut and cut[-1] == self.separator else cut
                plans[i, g, 0, : len(cut)] = NUM_CONCEPT_SPECIALS + torch.tensor(cut, dtype=torch.long)
        return plans.to(batch["input_ids"].device)

    def __call__(self, batch: dict) -> torch.Tensor:
        if self.separator is not None:
            return self.word_plans(batch)
        u, u_valid = batch["input_ids"], batch["attention_mask"].bool()
        keep = self.shared(u, u_valid, batch["text_ids"], batch["text_attention_mask"].bool())
        rank = keep.long().cumsum(1) - 1  # (batch, U) place in the plan
        plans = []
        for m in self.granularities:
            plan = torch.full((u.shape[0], self.longest + 1), CONCEPT_PAD, dtype=torch.long, device=u.device)
            slot = torch.where(keep & (rank < m), rank, self.longest)  # the rest goes to a dropped column
            plan.scatter_(1, slot, torch.where(keep, NUM_CONCEPT_SPECIALS + u, CONCEPT_PAD))
            plans.append(plan[:, None, : self.longest])  # (batch, types = 1, L)
        return torch.stack(plans, 1)


class LearnedProposer:
    """z = the argmax plan of the model's q(z | y), cut to each granularity (its prefixes)."""

    def __init__(self, model: PlannerExecutorModel, granularities: int | None = None):
        if model.config.proposer != "learned":
            raise ValueError(f"the learned proposer needs a model built with proposer='learned', got "
                             f"{model.config.proposer!r}")
        self.model = model
        config = model.config
        self.granularities = plan_lengths(max(config.concept_max_lengths), granularities or config.estep_top_k)

    def __call__(self, batch: dict) -> torch.Tensor:
        plan = self.model.posterior_plans(batch["text_ids"], batch["text_attention_mask"])  # (batch, types, L)
        kept = torch.arange(plan.shape[-1], device=plan.device)
        return torch.stack([plan.masked_fill(kept >= m, CONCEPT_PAD) for m in self.granularities], 1)


def make_proposer(model: PlannerExecutorModel, tokenizer):
    """The proposer ``model.config.proposer`` names (the learned one reads ``model``'s q(z | y))."""
    if model.config.proposer == "learned":
        return LearnedProposer(model)
    return {"rare_characters": RareCharacterProposer, "keywords": KeywordProposer}[model.config.proposer](
        model.config, tokenizer)


def prior_weight(step: int, warmup: int, final: float = 1.0) -> float:
    """β of S(z) = log p(y|z) + β log p(z|u): final · step / W during the warm-up, then ``final`` (pure in step)."""
    return final if warmup <= 0 else final * min(1.0, step / warmup)


def score_candidates(model: PlannerExecutorModel, batch: dict, candidates: torch.Tensor,
                     beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """S(z) = log p(y|z) + β log p(z|u) for (batch, C, types, L) candidates → (S (batch, C) with −inf for
    duplicates, log p(y|z) (batch, C), log p(z|u) (batch, C))."""
    b, c = candidates.shape[:2]
    flat = candidates.flatten(0, 1)
    repeat = lambda t: t.repeat_interleave(c, 0)  # noqa: E731
    executor = model.executor_forward(flat, repeat(batch["text_ids"]), repeat(batch["text_attention_mask"]))
    planner = model.planner_forward(repeat(batch["input_ids"]), repeat(batch["attention_mask"]), flat)
    likelihood, prior = executor.log_prob.view(b, c), planner.log_prob.view(b, c)
    scores = likelihood + beta * prior
    content = candidates.masked_fill(~concept_slot_mask(candidates), CONCEPT_PAD).flatten(2)  # (batch, C, types·L)
    same = (content[:, :, None] == content[:, None]).all(-1)  # (batch, C, C)
    duplicate = (same & torch.ones(c, c, dtype=torch.bool, device=same.device).tril(-1)).any(-1)
    return scores.masked_fill(duplicate, float("-inf")), likelihood, prior


class EStep(NamedTuple):
    plans: torch.Tensor  # (batch, types, L) z*
    scores: torch.Tensor  # (batch, C) S(z) of each candidate, −inf for duplicates
    candidates: torch.Tensor  # (batch, C, types, L)
    sources: list[str]  # (C,) the source of each candidate column
    winner: torch.Tensor  # (batch,) column of z*
    likelihood: torch.Tensor  # (batch,) log p(y|z*)
    prior: torch.Tensor  # (batch,) log p(z*|u)


def select(config: PlannerExecutorConfig, scores: torch.Tensor, likelihood: torch.Tensor) -> torch.Tensor:
    """Column of z* per row: argmax S(z) (``joint``), or argmax log p(y|z) tie-broken by S(z) (``likelihood``)."""
    if config.estep_selection == "joint":
        return scores.argmax(1)
    best = likelihood.masked_fill(scores == float("-inf"), float("-inf"))
    tied = best >= best.max(1, keepdim=True).values - 1e-4
    return scores.masked_fill(~tied, float("-inf")).argmax(1)


@torch.no_grad()
def estep(model: PlannerExecutorModel, proposer, batch: dict, step: int, previous: torch.Tensor | None = None,
          has_previous: torch.Tensor | None = None, generator: torch.Generator | None = None,
          warm: bool | None = None) -> EStep:
    """z* among the candidates (``config.estep_selection``).

    ``previous`` (batch, types, L) joins the candidates when the config lists it, as column 0, so duplicates of
    it (masked to −inf) are the later columns and its score is ``scores[:, 0]``; rows where ``has_previous`` is
    False get −inf there. Until ``warm`` (default: from ``estep_warmup_steps`` on) only the proposer's plans compete.
    """
    config = model.config
    k = config.estep_top_k
    warm = step >= config.estep_warmup_steps if warm is None else warm
    allowed = config.estep_sources if warm else [s for s in config.estep_sources if s in ("proposer", "previous", "input")]
    width = max(model.config.concept_max_lengths)
    fit = lambda z: torch.nn.functional.pad(z, (0, width - z.shape[-1]), value=CONCEPT_PAD)  # noqa: E731
    pools: list[tuple[str, torch.Tensor]] = []  # (source, (batch, n, types, L) plans)
    if previous is not None and "previous" in allowed:
        pools.append(("previous", fit(previous)[:, None]))
    if "proposer" in allowed:
        pools.append(("proposer", proposer(batch)))
    u, u_mask = batch["input_ids"], batch["attention_mask"]
    if "input" in allowed:
        pools.append(("input", input_plan(proposer, batch)[:, None]))
    if "planner_greedy" in allowed:
        pools.append(("planner_greedy", fit(model.plan(u, u_mask))[:, None]))
    if "planner_sample" in allowed:
        samples = model.plan(u.repeat_interleave(k, 0), u_mask.repeat_interleave(k, 0), do_sample=True,
                             generator=generator)
        pools.append(("planner_sample", fit(samples).view(u.shape[0], k, samples.shape[1], width)))
    if "planner_beam" in allowed:
        beams = model.plan(u, u_mask, num_beam_groups=k, diversity_penalty=config.estep_diversity_penalty)
        pools.append(("planner_beam", fit(beams).view(u.shape[0], k, beams.shape[1], width)))
    sources = [name for name, pool in pools for _ in range(pool.shape[1])]
    candidates = torch.cat([pool for _, pool in pools], 1)
    scores, likelihood, prior = score_candidates(model, batch, candidates, prior_weight(
        step, config.estep_warmup_steps, config.estep_prior_weight))
    if previous is not None and "previous" in allowed and has_previous is not None:
        scores[:, 0] = scores[:, 0].masked_fill(~has_previous, float("-inf"))
    best = select(config, scores, likelihood)
    rows = torch.arange(len(best))
    return EStep(candidates[rows, best], scores, candidates, sources, best, likelihood[rows, best], prior[rows, best])


def input_plan(proposer: KeywordProposer, batch: dict) -> torch.Tensor:
    """The keywords proposer's plan from a y that holds all of u (batch, types, L): every keyword of u, in u's order,
    distractors included, cut to the longest plan (a planner that leaves nothing out)."""
    return proposer({**batch, "text_ids": batch["input_ids"], "text_attention_mask": batch["attention_mask"]})[:, -1]


def win_rates(result: EStep) -> dict[str, torch.Tensor]:
    """Share of the rows whose z* came from each source (P6: which source wins the E-step)."""
    won = [result.sources[int(c)] for c in result.winner]
    return {f"win_{name}": torch.tensor(won.count(name) / len(won)) for name in dict.fromkeys(result.sources)}


@torch.no_grad()
def gain_and_cost(model: PlannerExecutorModel, batch: dict, result: EStep,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example (batch,) of an E-step's z*: the executor's gain from the plan, log p(y|z*) − log p(y|z*
    shuffled across the batch), and the plan's prior cost under the planner, −log p(z*|u); both in nats summed
    over the example. The E-step scored z* already: only the shuffled plans need a forward."""
    order = torch.randperm(len(result.plans), generator=generator).to(result.plans.device)
    shuffled = model.executor_forward(result.plans[order], batch["text_ids"], batch["text_attention_mask"]).log_prob
    return result.likelihood - shuffled, -result.prior


class GainWindow:
    """``estep_warmup_end = "gain"``: the warm-up ends at the first E-step from W on where the mean gain of z* over
    the last ``estep_refresh_steps`` steps exceeds its mean prior cost (``gain_and_cost``)."""

    def __init__(self, config: PlannerExecutorConfig):
        self.config = config
        self.entries: list[tuple[int, float, float, int]] = []  # (step, gain sum, cost sum, examples)

    def observe(self, step: int, gain: torch.Tensor, cost: torch.Tensor) -> tuple[float, float]:
        """Add a batch; the window's (mean gain, mean cost) per example."""
        self.entries = [e for e in self.entries if e[0] > step - self.config.estep_refresh_steps]
        self.entries.append((step, float(gain.sum()), float(cost.sum()), len(gain)))
        examples = sum(e[3] for e in self.entries)
        return sum(e[1] for e in self.entries) / examples, sum(e[2] for e in self.entries) / examples

    def ends(self, step: int, mean_gain: float, mean_cost: float) -> bool:
        return step >= self.config.estep_warmup_steps and mean_gain > mean_cost


class ZStarStore:
    """z* per example index with the step of its last search (−1: never) (v3.1), and the step the E-step warm-up
    ended at (``None``: not yet, or ended by the step count)."""

    def __init__(self, size: int, types: int, width: int):
        self.plans = torch.zeros(size, types, width, dtype=torch.long)
        self.step = torch.full((size,), -1, dtype=torch.long)
        self.warmup_ended_at: int | None = None

    def warm(self, config: PlannerExecutorConfig, step: int) -> bool:
        """Whether the planner's plans compete at ``step`` (``config.estep_warmup_end``)."""
        if config.estep_warmup_end == "steps":
            return step >= config.estep_warmup_steps
        return self.warmup_ended_at is not None

    def stale(self, index: torch.Tensor, step: int, every: int) -> torch.Tensor:
        age = step - self.step[index]
        return (self.step[index] < 0) | (age >= every)

    def update(self, index: torch.Tensor, plans: torch.Tensor, step: int) -> None:
        self.plans[index] = plans.cpu()
        self.step[index] = step

    def save(self, directory: str | Path) -> None:
        torch.save({"plans": self.plans, "step": self.step, "warmup_ended_at": self.warmup_ended_at},
                   Path(directory) / CACHE_FILE)

    def load(self, directory: str | Path) -> bool:
        path = Path(directory) / CACHE_FILE
        if not path.is_file():
            return False
        state = torch.load(path)
        self.plans, self.step = state["plans"], state["step"]
        self.warmup_ended_at = state.get("warmup_ended_at")  # stores written before the gain rule have none
        return True


class SaveZStarStore(TrainerCallback):
    """Write the z* store into each checkpoint directory, so ``resume_from_checkpoint`` continues with it."""

    def __init__(self, store: ZStarStore):
        self.store = store

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # every rank holds the same store (see ``PlannerExecutorTrainer.share``)
            self.store.save(Path(args.output_dir) / f"checkpoint-{state.global_step}")
