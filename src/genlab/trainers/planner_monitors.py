"""Health monitors of hard-EM planner–executor training (SPEC P6; seed 003 monitoring checklist).

Each reading is a small pure function so a test can feed it a constructed case:

- A. does the executor use z: ``delta_nll`` (z replaced by another example's, all-``<mask>``, random);
- B. E-step quality: ``top1_margin`` S(z¹) − S(z²), ``flip_rate`` and ``edit_distance`` of z* per refresh,
  ``staleness_gap`` S(z*_new) − S(z*_old);
- C. is the planner learning: ``planner_entropy`` (mean entropy and mean max-prob), cos(e_soft, e_hard)
  (computed by the model's forward), the planner's gradient norm;
- D. output side: ``nll_by_position`` (mean token NLL per position bucket).

``PlannerMonitorCallback`` reads them every N steps, hands them to the Trainer's log, and turns each
abnormal pattern of the seed's "abnormal → action" table (``RULES``) into a logged warning naming the action.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import TrainerCallback

from ..configuration_planner import CONCEPT_MASK, CONCEPT_PAD, NUM_CONCEPT_SPECIALS
from ..generation_refinement import levenshtein
from ..modeling_planner import concept_slot_mask, slot_entropy

logger = logging.getLogger("genlab.planner")


# -- A. does the executor use z -------------------------------------------------------------------------------------
def corrupt_concepts(concept_ids: torch.Tensor, kind: str, vocab_sizes: list[int],
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """z_bad for ΔNLL: ``shuffle`` (the next example's z), ``mask`` (every concept → ``<mask>``, same lengths)
    or ``random`` (uniform content ids of each type, same lengths)."""
    slots = concept_slot_mask(concept_ids)
    if kind == "shuffle":
        return concept_ids.roll(1, dims=0)
    if kind == "mask":
        return torch.where(slots, CONCEPT_MASK, CONCEPT_PAD)
    if kind == "random":
        sizes = torch.tensor(vocab_sizes, device=concept_ids.device)[None, :, None]
        noise = torch.rand(concept_ids.shape, generator=generator, device=concept_ids.device)
        return torch.where(slots, NUM_CONCEPT_SPECIALS + (noise * sizes).long(), CONCEPT_PAD)
    raise ValueError(f"kind must be 'shuffle', 'mask' or 'random', got {kind!r}")


def delta_nll(nll_per_token: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], concept_ids: torch.Tensor,
              vocab_sizes: list[int], generator: torch.Generator | None = None,
              concept_embeds: torch.Tensor | None = None) -> dict[str, float]:
    """ΔNLL = NLL(y | z_bad) − NLL(y | z) in nats per token, for each corruption (seed A.1).

    ``nll_per_token(ids, embeds)``; ``concept_embeds`` is what the executor reads of z in place of its ids' rows (a
    soft-mixture plan): the shuffle moves it with the ids, the other corruptions are read as plain ids."""
    base = float(nll_per_token(concept_ids, concept_embeds))
    readings = {}
    for kind in ("shuffle", "mask", "random"):
        bad = corrupt_concepts(concept_ids, kind, vocab_sizes, generator)
        bad_embeds = concept_embeds.roll(1, dims=0) if kind == "shuffle" and concept_embeds is not None else None
        readings[f"delta_nll_{kind}"] = float(nll_per_token(bad, bad_embeds)) - base
    return readings


# -- B. E-step quality ----------------------------------------------------------------------------------------------
def top1_margin(scores: torch.Tensor) -> torch.Tensor:
    """(batch, candidates) scores (−inf = no candidate) → mean S(z¹) − S(z²) over rows with two candidates."""
    if scores.shape[1] < 2:
        return scores.new_tensor(float("nan"))
    top = scores.topk(2, dim=1).values
    margin = top[:, 0] - top[:, 1]  # inf or nan where a row has fewer than two candidates
    return torch.nanmean(torch.where(torch.isfinite(margin), margin, float("nan")))  # no host sync


def edit_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Levenshtein distance between the content of two plans, summed over types: (batch, types, L) → (batch,).

    Each type's content is left-packed, so its length is the count of content slots; the batched DP is
    MERGE's ``levenshtein``, the package's one edit distance.
    """
    la, lb = concept_slot_mask(a).sum(-1), concept_slot_mask(b).sum(-1)  # (batch, types)
    distance = levenshtein(a.flatten(0, 1), la.flatten(), b.flatten(0, 1), lb.flatten())  # (batch·types,)
    return distance.view(la.shape).sum(-1)


def flip_rate(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Fraction of examples whose z* changed (content compared; padding width ignored)."""
    return (edit_distance(old, new) > 0).float().mean()


def staleness_gap(new_scores: torch.Tensor, old_scores: torch.Tensor) -> torch.Tensor:
    """Mean S(z*_new) − S(z*_old), both scored by the current model (≥ 0 when z*_old was a candidate)."""
    return (new_scores - old_scores).mean()


# -- C. is the planner learning --------------------------------------------------------------------------------------
def planner_entropy(logits: torch.Tensor, counted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean entropy (nats; the model's ``slot_entropy``, which its entropy bonus raises) and mean max-prob of the
    planner's distributions at the counted positions."""
    return slot_entropy(logits, counted), logits[counted].float().softmax(-1).max(-1).values.mean()


def grad_norm(parameters) -> torch.Tensor:
    """Global L2 norm of the gradients present (0 when none)."""
    grads = [p.grad.detach().norm() for p in parameters if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.tensor(0.0)


# -- D. output side --------------------------------------------------------------------------------------------------
def nll_by_position(token_nll: torch.Tensor, valid: torch.Tensor, edges: list[int]) -> dict[str, torch.Tensor]:
    """Mean token NLL per position bucket [edge_i, edge_{i+1}) of the text; (batch, T) inputs."""
    positions = torch.arange(token_nll.shape[1], device=token_nll.device)
    bounds = list(edges) + [None]
    out = {}
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        in_bucket = valid & (positions >= lo) & (positions < hi if hi is not None else True)
        if in_bucket.any():
            out[f"nll_pos_{lo}_{hi if hi is not None else 'end'}"] = token_nll[in_bucket].mean()
    return out


class StatAccumulator:
    """Running means of 0-d tensors, kept on device between readings (no host sync in the training step)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: torch.Tensor) -> None:
        """Add a 0-d tensor; a non-finite value (e.g. a margin with one candidate) is not counted."""
        value = value.detach().float()
        finite = torch.isfinite(value)
        self.sums[name] = self.sums.get(name, 0.0) + torch.where(finite, value, 0.0)
        self.counts[name] = self.counts.get(name, 0) + finite.float()

    def means(self, prefix: str = "") -> dict[str, float]:
        """The mean of each name since the last call (names with no finite value are left out), then reset."""
        out = {f"{prefix}{k}": float(v) / float(self.counts[k]) for k, v in self.sums.items() if float(self.counts[k]) > 0}
        self.sums, self.counts = {}, {}
        return out


# -- the abnormal → action table -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    name: str
    applies: Callable[[dict, int], bool]  # (readings, global step) → abnormal?
    action: str


def _get(readings: dict, key: str, default: float = float("nan")) -> float:
    return float(readings.get(key, default))


RULES = (
    Rule("delta_nll_near_zero", lambda r, step: _get(r, "monitor/delta_nll_shuffle") < 0.05,
         "the executor ignores z: strengthen the bottleneck (executor must not see u), enlarge z capacity / "
         "vocabulary, slow the executor's learning, raise z dropout / perturbation contrast"),
    Rule("delta_nll_falling", lambda r, step: (r["_peak_delta_nll"] >= 0.1
                                               and _get(r, "monitor/delta_nll_shuffle") < 0.5 * r["_peak_delta_nll"]),
         "the executor is unlearning z (ΔNLL fell below half its peak): z* is collapsing onto uninformative plans; "
         "select z* on log p(y|z) (estep_selection='likelihood'), lower β, keep the proposer among the candidates"),
    Rule("margin_near_zero_and_flips_high",
         lambda r, step: _get(r, "monitor/top1_margin") < 0.1 and _get(r, "monitor/flip_rate") > 0.5,
         "raise the candidate count K or its diversity; run the E-step more often; lower the learning rate"),
    Rule("margin_huge", lambda r, step: _get(r, "monitor/top1_margin") > r["_huge_margin"],
         "one candidate wins by a margin no evidence supports (premature collapse to a fixed pattern): lower β or "
         "select on log p(y|z), add diverse candidates, check the prior cost of informative plans"),
    Rule("locked_in", lambda r, step: (_get(r, "monitor/flip_rate") < 0.01 and _get(r, "monitor/planner_entropy") < 0.1
                                       and r["_peak_flip_rate"] > 0.5),
         "z* stopped changing and the planner is certain after a period of churn (flip rate → 1 then 0): raise the "
         "temperature / entropy regulariser; use diverse beams; occasionally force exploration (sampled candidates)"),
    Rule("planner_plans_win", lambda r, step: sum(_get(r, f"monitor/win_planner_{source}", 0.0)
                                                  for source in ("greedy", "sample", "beam")) > 0.9,
         "the planner's own plans win almost every E-step: hard-EM is training the planner on itself; select on "
         "log p(y|z), lower β, keep the proposer's plans competitive"),
    Rule("staleness_gap_large", lambda r, step: _get(r, "monitor/staleness_gap") > r["_stale_nats"],
         "shorten the E-step refresh interval M (or make it adaptive); lower the learning rate"),
    Rule("soft_hard_misaligned", lambda r, step: (r["_soft_path"] and _get(r, "monitor/soft_hard_cosine") < 0.5),
         "lower the temperature or anneal it; sharpen e_soft (gradually, not all at once)"),
    Rule("planner_grad_vanishing", lambda r, step: _get(r, "monitor/planner_grad_norm") < 1e-6,
         "the planner gets no signal: check the executor depends on z / the straight-through path"),
    Rule("planner_grad_exploding", lambda r, step: _get(r, "monitor/planner_grad_norm") > r["_explode_norm"],
         "temperature too low, learning rate too high or scores oscillating: lower the LR / raise the temperature"),
)


class PlannerMonitorCallback(TrainerCallback):
    """Every ``every`` steps: ΔNLL on a fixed small batch, the means of what the trainer collected in
    ``stats`` since the last reading (margin, flips, staleness, entropy, cosine, position NLLs), warnings.

    ``nll_fn(concept_ids, concept_embeds) -> nats/token`` and ``plans_fn() -> (z, its embeds or None)`` of the
    monitor batch are given by the trainer. A rule must hold for ``patience`` consecutive readings before it warns (again after each break in
    its streak). No rule is read before ``grace_steps`` (the E-step warm-up: the executor is still learning to
    read z), so none is spent on what every run shows early; the history rules compare with the peaks since.
    """

    def __init__(self, every: int, vocab_sizes: list[int], stats: StatAccumulator | None = None, nll_fn=None,
                 plans_fn=None, patience: int = 3, grace_steps: int = 0, stale_nats: float = 2.0,
                 explode_norm: float = 100.0, huge_margin: float = 20.0, soft_path: bool = False):
        self.every, self.vocab_sizes, self.patience, self.grace_steps = every, vocab_sizes, patience, grace_steps
        self.stats, self.nll_fn, self.plans_fn = stats or StatAccumulator(), nll_fn, plans_fn
        self.thresholds = {"_stale_nats": stale_nats, "_explode_norm": explode_norm, "_huge_margin": huge_margin,
                           "_soft_path": soft_path}
        self.peaks = {"_peak_delta_nll": 0.0, "_peak_flip_rate": 0.0}
        self.pending: dict[str, float] = {}  # the trainer merges these into its next log
        self.latest: dict[str, float] = {}
        self.streaks = {rule.name: 0 for rule in RULES}
        self.warnings: list[tuple[int, str, str]] = []
        self.planner_parameters = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        """Planner gradient norm (after clipping), read just before the optimizer step."""
        if model is not None and (state.global_step + 1) % self.every == 0:
            names = ("planner.", "planner_", "mtp_proj.")
            norm = grad_norm(p for n, p in model.named_parameters() if n.startswith(names))
            self.record({"monitor/planner_grad_norm": float(norm)})

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every:
            return control
        self.record(self.stats.means(prefix="monitor/"))
        if self.nll_fn is not None:
            generator = torch.Generator().manual_seed(state.global_step)
            plans, embeds = self.plans_fn()
            readings = delta_nll(self.nll_fn, plans, self.vocab_sizes, generator, embeds)
            self.record({f"monitor/{k}": v for k, v in readings.items()})
        self.check(state.global_step)
        return control

    def record(self, readings: dict[str, float]) -> None:
        self.pending.update(readings)
        self.latest.update(readings)

    def check(self, step: int) -> list[str]:
        """Apply every rule to the latest readings; log a warning when one reaches ``patience`` in a row."""
        self.pending["monitor/warnings"] = float(len(self.warnings))
        if step < self.grace_steps:
            return []
        readings = {**self.latest, **self.thresholds, **self.peaks}
        for peak, key in (("_peak_delta_nll", "monitor/delta_nll_shuffle"), ("_peak_flip_rate", "monitor/flip_rate")):
            self.peaks[peak] = max(self.peaks[peak], _get(self.latest, key, 0.0))
        fired = []
        for rule in RULES:
            self.streaks[rule.name] = self.streaks[rule.name] + 1 if rule.applies(readings, step) else 0
            if self.streaks[rule.name] == self.patience:
                logger.warning("planner monitor at step %d: %s → %s", step, rule.name, rule.action)
                self.warnings.append((step, rule.name, rule.action))
                fired.append(rule.name)
        self.pending["monitor/warnings"] = float(len(self.warnings))
        return fired

    def pop_pending(self) -> dict[str, float]:
        pending, self.pending = self.pending, {}
        return pending
