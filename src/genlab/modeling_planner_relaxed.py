"""The planner's differentiable plan (SPEC P4 ``straight_through`` / ``soft_mixture``, issue 14): the mixin that
writes a plan from u slot by slot and hands the executor straight-through or soft-mixture embeddings of it, so
the executor's loss trains the planner through its own plan instead of through hard-EM's z*."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .configuration_planner import CONCEPT_EOS, CONCEPT_PAD
from .straight_through import gumbel_softmax_pair, straight_through


class RelaxedPlan(NamedTuple):
    """The planner's own plan with what the executor reads of it (``relaxed_plan``, P4)."""

    concept_ids: torch.Tensor  # (batch, types, L): every type full length, <pad> past its max length
    concept_embeds: torch.Tensor  # (batch, types, L, hidden): the executor's inputs in place of the ids' rows
    logits: torch.Tensor  # (batch, types, L, max type vocab): the planner's distribution of each slot


class RelaxedPlanningMixin:
    """``relaxed_plan`` for :class:`PlannerExecutorModel` (it reads u with the model's planner and tables)."""

    def relaxed_plan(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, noise: bool = False,
                     generator: torch.Generator | None = None) -> RelaxedPlan:
        """The planner writes its plan from u slot by slot, differentiably (P4 ``straight_through`` and
        ``soft_mixture``): each slot's id is argmax(logits + g) (g Gumbel noise if ``noise``, else 0) and is fed
        back; every type is written to its full length (``<eos>`` is never chosen, so training and decoding see
        the same plan shapes). The executor's input per slot is straight_through(e_hard, e_soft) or e_soft
        (``config.concept_gradient``), e_soft = softmax((logits + g) / τ) · table."""
        config, device = self.config, input_ids.device
        k, b = config.num_concept_types, input_ids.shape[0]
        max_lengths = torch.tensor(config.concept_max_lengths, device=device)  # (types,)
        allowed = self.predictable(device)
        allowed[:, CONCEPT_EOS] = False
        u = self.encode_input(input_ids, attention_mask)
        cache, key_valid, u_length = u.cache, u.valid, u.length
        key_type = torch.zeros(input_ids.shape[1], dtype=torch.long, device=device)
        fed = torch.arange(k, device=device)[None, :, None].expand(b, k, 1)  # the SEPs (planner table rows)
        ids, weights, all_logits = [], [], []
        for slot in range(int(max_lengths.max())):
            hidden = self.planner_segments(fed, torch.tensor([slot], device=device), u_length, cache, key_valid,
                                           key_type)
            key_valid = torch.cat([key_valid, key_valid.new_ones(b, k)], 1)
            key_type = torch.cat([key_type, torch.arange(1, k + 1, device=device)])
            logits = self.planner_logits(hidden, u)[:, :, 0].masked_fill(~allowed, torch.finfo(hidden.dtype).min)
            hard, soft = gumbel_softmax_pair(logits, config.concept_temperature, noise=noise, generator=generator)
            token = hard.argmax(-1).masked_fill(slot >= max_lengths, CONCEPT_PAD)  # (batch, types)
            ids.append(token)
            weights.append(straight_through(hard, soft) if config.concept_gradient == "straight_through" else soft)
            all_logits.append(logits)
            fed = self.planner_concept_ids(token[..., None])
        return RelaxedPlan(torch.stack(ids, -1), self.concept_mixture(torch.stack(weights, 2)),
                           torch.stack(all_logits, 2))
