"""The learned proposer q(z | y) of the planner–executor (``proposer="learned"``; SPEC P4, issue 14).

A user with no hand-made keywords still gets plans: a small bidirectional Qwen2 stack reads y followed by one
learned query per concept slot, and each slot POINTS at one of y's tokens — a discrete bottleneck over y's own
characters (a learned keyword extractor), so the concept of a slot is the text token it picks (every concept type
must be a text concept type). Trained with the executor and the planner as a discrete VAE (per text token):

    L_q = −log p(y | ẑ) / |y| + w · KL(q(z | y) ‖ p(z | u)) / |y|,    ẑ = Gumbel-softmax-ST sample of q

The executor reads ẑ's one-hot row over y's positions times y's text embeddings (forward: exactly the picked
tokens' rows; gradients reach q through the relaxation); the KL compares q's distribution over TOKENS with the
planner teacher-forced on ẑ. Slots pick DISTINCT positions while y has untaken ones (``pick_distinct``). The
E-step takes q's argmax plan, cut to several lengths, as the proposer's candidates; plans are full length (q emits
no ``<eos>``), shorter granularities are its prefixes.
"""

from __future__ import annotations

import torch

from .configuration_planner import CONCEPT_PAD, NUM_CONCEPT_SPECIALS, PlannerExecutorConfig
from .masking import bidirectional_padding_rule
from .straight_through import gumbel_softmax_st


def pick_distinct(logits: torch.Tensor, tau: float, noise: bool,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Slot by slot (types, then slots, in order), a Gumbel-softmax-ST one-hot over y's positions that skips the
    positions earlier slots took while untaken pickable ones remain: a plan of distinct characters of y.

    (batch, types, L, T) logits → one-hot of the same shape (forward exact; gradients through each slot's
    relaxation, the blocking itself is a constant)."""
    b, k, width, t = logits.shape
    flat = logits.reshape(b, k * width, t)
    pickable = flat[:, 0] > torch.finfo(flat.dtype).min / 2  # (batch, T)
    used = torch.zeros_like(pickable)
    picks = []
    for slot in range(k * width):
        blocked = used & (pickable & ~used).any(-1, keepdim=True)
        one_hot = gumbel_softmax_st(flat[:, slot].masked_fill(blocked, torch.finfo(flat.dtype).min), tau,
                                    noise=noise, generator=generator)
        used = used | one_hot.detach().bool()
        picks.append(one_hot)
    return torch.stack(picks, 1).view(b, k, width, t)


def slot_lengths_mask(config: PlannerExecutorConfig, device: torch.device) -> torch.Tensor:
    """(types, L): True on the slots each type has (L = the longest type's length)."""
    lengths = torch.tensor(config.concept_max_lengths, device=device)
    return torch.arange(int(lengths.max()), device=device)[None, :] < lengths[:, None]


class ConceptPosteriorMixin:
    """q(z | y) on :class:`PlannerExecutorModel` (modules ``posterior``, ``posterior_slot_embed`` and
    ``posterior_query``, built when ``config.proposer == "learned"``)."""

    def posterior_logits(self, text_ids: torch.Tensor, text_attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(batch, T) text → (batch, types, L, T) logits of q over y's positions (padding and specials: −inf)."""
        config = self.config
        b, t = text_ids.shape
        k, width = config.num_concept_types, max(config.concept_max_lengths)
        valid = (torch.ones_like(text_ids, dtype=torch.bool) if text_attention_mask is None
                 else text_attention_mask.bool())
        slots = self.posterior_slot_embed.weight.expand(b, -1, -1)  # (batch, k·L, hidden)
        embeds = torch.cat([self.text_embeds(text_ids), slots], 1)
        # Text token i at position i, slot j right after the REAL text (position |y| + j): padding changes nothing.
        slot_positions = valid.sum(1, keepdim=True) + torch.arange(k * width, device=text_ids.device)
        positions = torch.cat([torch.arange(t, device=text_ids.device).expand(b, t), slot_positions], 1)
        key_valid = torch.cat([valid, valid.new_ones(b, k * width)], 1)
        mask = self.attention_masks(self.posterior, bidirectional_padding_rule(key_valid), embeds, key_valid.shape[1])
        hidden = self.posterior(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        queries = self.posterior_query(hidden[:, t:]).view(b, k, width, -1)
        logits = torch.einsum("bklh,bth->bklt", queries, hidden[:, :t]) / hidden.shape[-1] ** 0.5
        specials = torch.tensor([config.pad_token_id, config.bos_token_id, config.eos_token_id], device=text_ids.device)
        pickable = valid & ~torch.isin(text_ids, specials)  # (batch, T)
        return logits.masked_fill(~pickable[:, None, None, :], torch.finfo(logits.dtype).min)

    def posterior_ids(self, text_ids: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
        """(batch, types, L, T) one-hot or logits over y's positions → (batch, types, L) concept ids of the picked
        tokens (concept 3 + t is token t), ``<pad>`` on the slots a type lacks."""
        b, k, width = picks.shape[:3]
        tokens = text_ids.gather(1, picks.argmax(-1).view(b, -1)).view(b, k, width)
        return (NUM_CONCEPT_SPECIALS + tokens).masked_fill(~slot_lengths_mask(self.config, tokens.device), CONCEPT_PAD)

    @torch.no_grad()
    def posterior_plans(self, text_ids: torch.Tensor, text_attention_mask: torch.Tensor | None) -> torch.Tensor:
        """q's argmax plan of distinct characters (batch, types, L): the learned proposer's E-step candidate."""
        picks = pick_distinct(self.posterior_logits(text_ids, text_attention_mask), 1.0, noise=False)
        return self.posterior_ids(text_ids, picks)

    def posterior_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, text_ids: torch.Tensor,
                       text_attention_mask: torch.Tensor | None, generator: torch.Generator | None = None):
        """L_q (module docstring) → (loss, reconstruction, KL), each in nats per text token.

        Noise-free (argmax) outside training, so evaluation is deterministic."""
        config = self.config
        width = max(config.concept_max_lengths)
        logits = self.posterior_logits(text_ids, text_attention_mask)  # (batch, types, L, T)
        sample = pick_distinct(logits, config.posterior_temperature, noise=self.training, generator=generator)
        ids = self.posterior_ids(text_ids, sample)
        embeds = torch.einsum("bklt,bth->bklh", sample, self.executor.embed_tokens(text_ids))  # the picked rows
        executor = self.executor_forward(ids, text_ids, text_attention_mask, concept_embeds=embeds)
        log_prior = self.planner_forward(input_ids, attention_mask, ids).logits[:, :, :width].float().log_softmax(-1)
        # q over positions → q over concepts: the probabilities of equal tokens add up.
        q_pos = logits.float().softmax(-1)
        concepts = (NUM_CONCEPT_SPECIALS + text_ids)[:, None, None, :].expand_as(q_pos)
        q = torch.zeros_like(log_prior).scatter_add_(-1, concepts, q_pos)  # (batch, types, L, max type vocab)
        kl = torch.where(q > 0, q * (q.clamp(min=1e-30).log() - log_prior), 0.0).sum(-1)  # (batch, types, L)
        tokens = executor.token_nll.new_tensor(float(text_ids.numel())) if text_attention_mask is None \
            else text_attention_mask.sum().clamp(min=1)
        kl = kl.masked_fill(~slot_lengths_mask(config, kl.device), 0.0).sum() / tokens
        return executor.loss + config.posterior_kl_weight * kl, executor.loss, kl
