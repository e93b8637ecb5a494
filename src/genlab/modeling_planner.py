"""Concept-first decoding: a planner writes typed concept plans, an executor writes text from them alone.

SPEC P1–P8 (seed 003 "v3: pure AR", "v3.1"). Both halves are transformers ``Qwen2Model`` stacks (decoder
layers, RoPE, attention dispatch) driven through ``inputs_embeds``, explicit ``position_ids`` and a
ready-made 4-D mask; what this file adds to Qwen2 is only the layout of the two sequences:

* Planner (P1, P5): ``[u₁ … u_U | SEP₁ c¹₁ … | SEP₂ c²₁ … | …]``. u attends causally to itself; each type's
  segment attends to u and causally to ITSELF only, so the types are conditionally independent given u and
  are decoded in parallel. Segment token j sits at position ``|u| + j`` (SEP at j = 0). One head per type
  over that type's vocabulary (``<eos>`` + content); optional multi-token-prediction heads (v3.1).
* Executor (P2, P3): ``[<BOS>, <SEP₁>, C¹…, <SEP₂>, C²…]`` then the text. Every segment starts at position
  0 with its marker and counts its content from 1: BOS and the text form segment 0 (BOS at 0, text token t
  at t), SEPᵢ is at 0 and concept cⁱⱼ at j. The text therefore gets positions 1…T whatever the plan's
  length, so a text token's rotary phase depends only on its place in the sentence (one positional
  pattern for all plan lengths; position-bucket NLLs compare like with like); causality comes from the
  attention mask over the sequence order, not from the position ids. A learned type embedding is added
  (0 = BOS/text, i = type i with its SEP). Plans of unequal lengths are packed and LEFT-padded, so the
  text starts in the same column for the whole batch and KV-cached decoding appends to it.

With ``executor_copy`` the executor's next-token distribution also points at the plan's text concepts
(``pointer_generator``): a keyword in the plan can be copied into the text rather than generated; with
``planner_copy`` the planner's distribution of a text concept points at u's tokens the same way;
``executor_checklist`` tells the executor's head which of the plan's keywords its text already holds.

The executor never receives u: its only inputs are the concept ids (or, when the model is trained
straight-through or as a soft mixture instead of by hard-EM (P4), embeddings computed from the planner's
distribution over them: ``relaxed_plan``, ``modeling_planner_relaxed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model
from transformers.utils import ModelOutput

from .configuration_planner import (CONCEPT_EOS, CONCEPT_MASK, CONCEPT_PAD, NUM_CONCEPT_SPECIALS,
                                    PlannerExecutorConfig)
from .generation_planner import PlannerExecutorGenerationMixin
from .masking import MaskFunction, attention_mask, causal_padding_rule, planner_rule
from .modeling_planner_posterior import ConceptPosteriorMixin
from .modeling_planner_relaxed import RelaxedPlanningMixin
from .plan_slots import concept_slot_mask, drop_concepts, slot_entropy
from .pointer_generator import NOT_COPYABLE, Checklist, CopySlots, PointerGeneratorHead, written_slots
from .unlikelihood import token_unlikelihood

TEXT_TYPE = 0  # type id of <BOS>, the text and the planner's input u
IGNORE = -100


@dataclass
class PlannerOutput(ModelOutput):
    """``logits[:, i, j]`` is the planner's distribution of concept j+1 of type i (j = L: its ``<eos>``)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None  # (batch, types, L + 1, max type vocab)
    labels: torch.LongTensor | None = None  # (batch, types, L + 1)
    log_prob: torch.FloatTensor | None = None  # (batch,) log p(z | u)
    mtp_logits: tuple[torch.FloatTensor, ...] | None = None  # head d: concept j+1+d from position j


@dataclass
class ExecutorOutput(ModelOutput):
    """``logits[:, t]`` scores ``text_ids[:, t]`` given the concepts and ``text_ids[:, :t]``."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None  # (batch, T, vocab)
    token_nll: torch.FloatTensor | None = None  # (batch, T), 0 on padding
    log_prob: torch.FloatTensor | None = None  # (batch,) log p(y | z)


class PlannerInput(NamedTuple):
    """u as the planner has read it (``encode_input``)."""

    cache: Cache  # the planner's KV cache over u
    valid: torch.Tensor  # (batch, U)
    length: torch.Tensor  # (batch,) |u|
    copy_slots: CopySlots | None  # u's tokens as text concepts 3 + t for the planner's copy head (planner_copy)


class ExecutorPrefix(NamedTuple):
    """The packed, left-padded executor prefix (P2); every field but ``embeds`` is (batch, P)."""

    embeds: torch.Tensor  # (batch, P, hidden), type embeddings included
    position_ids: torch.Tensor
    type_ids: torch.Tensor
    valid: torch.Tensor
    copy_tokens: torch.Tensor  # the text token of each text-concept slot, NOT_COPYABLE elsewhere (executor_copy)


@dataclass
class PlannerExecutorOutput(ModelOutput):
    """M-step outputs (P4): the sum of both losses and each one apart, for logging."""

    loss: torch.FloatTensor | None = None
    executor_loss: torch.FloatTensor | None = None
    planner_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None  # executor text logits
    planner_logits: torch.FloatTensor | None = None
    token_nll: torch.FloatTensor | None = None
    soft_hard_cosine: torch.FloatTensor | None = None  # mean cos(e_soft, e_hard) over concept slots (P6)
    concept_ids: torch.LongTensor | None = None  # (batch, types, L) the plan the executor read (z* or the planner's)
    planner_slots: torch.BoolTensor | None = None  # True where planner_logits scored a trained slot
    posterior_loss: torch.FloatTensor | None = None  # L_q of the learned proposer (its reconstruction + w · KL)
    posterior_kl: torch.FloatTensor | None = None  # KL(q(z|y) ‖ p(z|u)) per text token
    unlikelihood_loss: torch.FloatTensor | None = None  # mean L_UL of text and text plans (unlikelihood_weight)


class PlannerExecutorPreTrainedModel(PreTrainedModel):
    config_class = PlannerExecutorConfig
    base_model_prefix = "planner_executor"
    main_input_name = "input_ids"
    _no_split_modules = ["Qwen2DecoderLayer"]
    _supports_sdpa = True
    _supports_flex_attn = True  # every mask is a genlab.masking rule, so flex gets a BlockMask of it

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, Checklist):  # starts as the plain copy head: no update, no score for "written"
            init.zeros_(module.update.weight)
            init.zeros_(module.update.bias)
            init.zeros_(module.written_score)

    @staticmethod
    def attention_masks(stack, rule: MaskFunction, embeds: torch.Tensor, kv_len: int,
                        q_len: int | None = None) -> dict:
        """``rule`` over ``kv_len`` keys for the queries in ``embeds`` (batch, q, hidden), in the form the stack's
        attention backend takes, as the ``{"full_attention": …}`` mapping Qwen2Model accepts."""
        batch, queries = embeds.shape[:2]
        return {"full_attention": attention_mask(rule, batch, q_len or queries, kv_len, device=embeds.device,
                                                 implementation=stack.config._attn_implementation,
                                                 dtype=embeds.dtype)}


class PlannerExecutorModel(PlannerExecutorGenerationMixin, ConceptPosteriorMixin, RelaxedPlanningMixin,
                           PlannerExecutorPreTrainedModel):
    """Planner (u → typed concepts, P1) + executor (concepts → text, P2/P3); ``generate`` does both (P8). With
    ``proposer="learned"`` it also holds q(z | y), the E-step's proposer (``modeling_planner_posterior``)."""

    _tied_weights_keys = {"lm_head.weight": "executor.embed_tokens.weight"}

    def __init__(self, config: PlannerExecutorConfig):
        super().__init__(config)
        k, hidden = config.num_concept_types, config.executor["hidden_size"]
        self.max_type_vocab = max(config.concept_type_vocab_sizes)
        max_concepts = max(config.concept_max_lengths) + 1
        self.planner = Qwen2Model(config.stack_config("planner", config.max_input_length + max_concepts))
        self.executor = Qwen2Model(config.stack_config("executor", max(config.max_text_length, max_concepts) + 1))
        # Planner side: SEP_i rows, then one block of max_type_vocab rows per type (``concept_table``; a text
        # concept type stores only its specials). Executor side: BOS, SEP_i rows, then the same blocks.
        stored = self.stored_rows()
        self.planner_concept_embed = nn.Embedding(k + stored, hidden)
        self.planner_type_embed = nn.Embedding(k + 1, hidden)
        self.planner_head = nn.Linear(hidden, stored, bias=False)
        self.planner_copy_head = PointerGeneratorHead(hidden) if config.planner_copy else None
        self.mtp_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(config.planner_mtp_heads))
        self.executor_prefix_embed = nn.Embedding(1 + k + stored, hidden)
        self.executor_type_embed = nn.Embedding(k + 1, hidden)
        self.lm_head = nn.Linear(hidden, config.vocab_size, bias=False)
        self.copy_head = PointerGeneratorHead(hidden, config.executor_checklist) if config.executor_copy else None
        if config.proposer == "learned":  # q(z | y) reads the executor's text table and keeps a 1-row one of its own
            slots = k * max(config.concept_max_lengths)
            self.posterior = Qwen2Model(config.stack_config("posterior", config.max_text_length + slots, vocab_size=1))
            self.posterior_slot_embed = nn.Embedding(slots, hidden)
            self.posterior_query = nn.Linear(hidden, hidden, bias=False)
        if config.share_text_embeddings:  # one table for u, the text and the text concepts (tied on load too)
            self._tied_weights_keys = {**self._tied_weights_keys,
                                       "planner.embed_tokens.weight": "executor.embed_tokens.weight"}
        self.post_init()

    def stored_rows(self) -> int:
        """Rows one table keeps for its type blocks: a text concept type keeps only its 3 specials (its content
        rows are the text embeddings), any other type a full block of ``max_type_vocab``."""
        text = set(self.config.text_concept_types)
        return sum(NUM_CONCEPT_SPECIALS if name in text else self.max_type_vocab for name in self.config.concept_types)

    def concept_table(self, table: torch.Tensor, text: torch.Tensor, first: int) -> torch.Tensor:
        """The full (first + types · max_type_vocab, hidden) table from ``table``'s stored rows, every text concept
        type's block being its 3 specials then ``text`` (vocab, hidden): concept 3 + t IS token t (tied)."""
        if not self.config.text_concept_types:
            return table
        pieces, row = [table[:first]], first
        for name in self.config.concept_types:
            if name in self.config.text_concept_types:
                block = [table[row : row + NUM_CONCEPT_SPECIALS], text]
                row += NUM_CONCEPT_SPECIALS
                pad = self.max_type_vocab - NUM_CONCEPT_SPECIALS - text.shape[0]  # never predictable
                pieces += block + [text.new_zeros(pad, text.shape[1])] if pad else block
            else:
                pieces.append(table[row : row + self.max_type_vocab])
                row += self.max_type_vocab
        return torch.cat(pieces)

    def planner_table(self) -> torch.Tensor:
        """Rows of the planner's concept inputs: SEP_i, then one block per type (text types tied to u's table)."""
        return self.concept_table(self.planner_concept_embed.weight, self.planner.embed_tokens.weight,
                                  self.config.num_concept_types)

    def executor_table(self) -> torch.Tensor:
        """Rows of the executor's prefix: BOS, SEP_i, then one block per type (text types tied to the text's)."""
        return self.concept_table(self.executor_prefix_embed.weight, self.executor.embed_tokens.weight,
                                  1 + self.config.num_concept_types)

    @property
    def dummy_inputs(self) -> dict[str, torch.Tensor]:
        """A forward's worth of inputs (u, a one-concept plan per type, a text) for generic tooling."""
        k = self.config.num_concept_types
        last = self.config.vocab_size - 1  # an ordinary token of any vocabulary
        concepts = torch.tensor([[[NUM_CONCEPT_SPECIALS, CONCEPT_EOS]] * k])  # (1, types, 2)
        return {"input_ids": torch.tensor([[last - 1, last]]), "concept_ids": concepts,
                "text_ids": torch.tensor([[last, self.config.eos_token_id]])}

    def type_vocab_sizes(self, device: torch.device) -> torch.Tensor:
        """(types,) ids per type, specials included (built from the config: from_pretrained keeps no buffers)."""
        return torch.tensor(self.config.concept_type_vocab_sizes, device=device)

    def text_types(self, device: torch.device) -> torch.Tensor:
        """(types,) True for a text concept type (its concept 3 + t is token t)."""
        return torch.tensor([name in self.config.text_concept_types for name in self.config.concept_types],
                            device=device)

    def predictable(self, device: torch.device) -> torch.Tensor:
        """(types, max type vocab): the ids the planner may emit — ``<eos>`` and the type's content."""
        allowed = torch.arange(self.max_type_vocab, device=device)[None, :] < self.type_vocab_sizes(device)[:, None]
        allowed[:, [CONCEPT_PAD, CONCEPT_MASK]] = False
        return allowed

    # -- input checks -------------------------------------------------------------------------------------------
    def check_concepts(self, concept_ids: torch.Tensor) -> None:
        """``ValueError`` for a wrong shape, an id outside its type's vocabulary or a plan over its max length."""
        k = self.config.num_concept_types
        if concept_ids.dim() != 3 or concept_ids.shape[1] != k:
            raise ValueError(f"concept_ids must have shape (batch, {k} types, length), got {tuple(concept_ids.shape)}")
        bad = (concept_ids < 0) | (concept_ids >= self.type_vocab_sizes(concept_ids.device)[None, :, None])
        if bad.any():
            kind = int(bad.any(-1).any(0).nonzero()[0])
            raise ValueError(f"concept_ids of type {self.config.concept_types[kind]!r} must lie in "
                             f"[0, {self.config.concept_type_vocab_sizes[kind]}), got "
                             f"{concept_ids[:, kind][bad[:, kind]].unique().tolist()}")
        too_long = concept_slot_mask(concept_ids).sum(-1) > torch.tensor(self.config.concept_max_lengths,
                                                                          device=concept_ids.device)
        if too_long.any():
            raise ValueError(f"concept plans must not exceed concept_max_lengths {self.config.concept_max_lengths}")

    def check_input(self, input_ids: torch.Tensor) -> None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids (u) must have shape (batch, length), got {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.config.max_input_length:
            raise ValueError(f"input_ids (u) has {input_ids.shape[1]} tokens; the planner takes at most "
                             f"max_input_length={self.config.max_input_length}")

    # -- planner (P1, P5) ---------------------------------------------------------------------------------------
    def planner_concept_ids(self, concept_ids: torch.Tensor) -> torch.Tensor:
        """Local ids (batch, types, n) → rows of ``planner_concept_embed``."""
        k = self.config.num_concept_types
        offsets = k + torch.arange(k, device=concept_ids.device) * self.max_type_vocab
        return concept_ids + offsets[None, :, None]

    def encode_input(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     cache: Cache | None = None) -> PlannerInput:
        """Run the planner over u."""
        self.check_input(input_ids)
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        embeds = self.planner.embed_tokens(input_ids) + self.planner_type_embed.weight[TEXT_TYPE]
        key_type = torch.full((input_ids.shape[1],), TEXT_TYPE, device=input_ids.device)
        mask = self.attention_masks(self.planner, planner_rule(valid, key_type, TEXT_TYPE), embeds,
                                    valid.shape[1])
        cache = cache if cache is not None else DynamicCache(config=self.planner.config)
        hidden = self.planner(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache,
                              use_cache=True).last_hidden_state
        slots = None if self.planner_copy_head is None else self.planner_copy_head.slots(
            hidden, (input_ids + NUM_CONCEPT_SPECIALS).masked_fill(~valid, NOT_COPYABLE))
        return PlannerInput(cache, valid, valid.sum(1), slots)

    def planner_segments(self, segment_ids: torch.Tensor, offsets: torch.Tensor, input_length: torch.Tensor,
                         cache: Cache, key_valid: torch.Tensor, key_type: torch.Tensor) -> torch.Tensor:
        """Feed n tokens per type (planner table rows, (batch, types, n)) at in-segment ``offsets`` (n,).

        Returns their final hidden states (batch, types, n, hidden); ``cache`` grows by types·n entries.
        """
        b, k, n = segment_ids.shape
        types = torch.arange(1, k + 1, device=segment_ids.device)
        query_type = types[:, None].expand(k, n).reshape(-1)
        embeds = F.embedding(segment_ids, self.planner_table()) + self.planner_type_embed(types)[None, :, None]
        positions = (input_length[:, None, None] + offsets[None, None, :]).expand(b, k, n).reshape(b, -1)
        all_valid = torch.cat([key_valid, key_valid.new_ones(b, k * n)], 1)
        all_type = torch.cat([key_type, query_type])
        mask = self.attention_masks(self.planner, planner_rule(all_valid, all_type, TEXT_TYPE), embeds,
                                    all_valid.shape[1], q_len=query_type.shape[0])
        hidden = self.planner(inputs_embeds=embeds.reshape(b, k * n, -1), attention_mask=mask, position_ids=positions,
                              cache=cache, use_cache=True).last_hidden_state
        return hidden.view(b, k, n, -1)

    def planner_logits(self, hidden: torch.Tensor, u: PlannerInput) -> torch.Tensor:
        """(batch, types, n, hidden) → (batch, types, n, max type vocab); ids a type cannot emit get -inf. With
        ``planner_copy`` a text concept type's scores are the log-probabilities of a pointer-generator over u's
        tokens (``pointer_generator``): the planner may point at a word of u instead of finding it in the table."""
        k = self.config.num_concept_types
        weight = self.concept_table(self.planner_head.weight, self.planner.embed_tokens.weight, 0)
        weight = weight.view(k, self.max_type_vocab, -1)
        logits = torch.einsum("bknh,kvh->bknv", hidden, weight)
        cannot = ~self.predictable(logits.device)[None, :, None, :]
        logits = logits.masked_fill(cannot, torch.finfo(logits.dtype).min)
        if self.planner_copy_head is None:
            return logits
        copied = self.planner_copy_head(logits.flatten(1, 2), hidden.flatten(1, 2), u.copy_slots)
        logits = torch.where(self.text_types(logits.device)[None, :, None, None], copied.view_as(logits), logits)
        return logits.masked_fill(cannot, torch.finfo(logits.dtype).min)

    def planner_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                        concept_ids: torch.Tensor) -> PlannerOutput:
        """Teacher-forced planner over (u, z): loss = CE of every concept and each type's ``<eos>`` (P1)."""
        self.check_concepts(concept_ids)
        b, k, length = concept_ids.shape
        u = self.encode_input(input_ids, attention_mask)
        slots = concept_slot_mask(concept_ids)
        content = concept_ids.masked_fill(~slots, CONCEPT_PAD)
        seps = torch.arange(k, device=concept_ids.device)[None, :, None].expand(b, k, 1)
        segment_ids = torch.cat([seps, self.planner_concept_ids(content)], -1)  # (batch, types, L + 1)
        offsets = torch.arange(length + 1, device=concept_ids.device)
        key_type = torch.zeros(input_ids.shape[1], dtype=torch.long, device=input_ids.device)
        hidden = self.planner_segments(segment_ids, offsets, u.length, u.cache, u.valid, key_type)
        logits = self.planner_logits(hidden, u)

        lengths = slots.sum(-1, keepdim=True)  # (batch, types, 1)
        labels = torch.cat([content, content.new_full((b, k, 1), CONCEPT_PAD)], -1)
        labels = labels.masked_fill(offsets == lengths, CONCEPT_EOS).masked_fill(offsets > lengths, IGNORE)
        nll = F.cross_entropy(logits.flatten(0, 2), labels.flatten(), ignore_index=IGNORE, reduction="none")
        nll = nll.view(b, k, length + 1)
        counted = labels != IGNORE
        loss = nll.sum() / counted.sum()
        mtp_logits = tuple(self.planner_logits(proj(hidden), u) for proj in self.mtp_proj)
        for d, head_logits in enumerate(mtp_logits, start=1):  # head d at j predicts label j + d
            target = F.pad(labels[..., d:], (0, d), value=IGNORE)
            loss = loss + F.cross_entropy(head_logits.flatten(0, 2), target.flatten(), ignore_index=IGNORE) / len(mtp_logits)
        return PlannerOutput(loss=loss, logits=logits, labels=labels, log_prob=-nll.sum((1, 2)),
                             mtp_logits=mtp_logits or None)

    # -- executor (P2, P3) --------------------------------------------------------------------------------------
    def executor_prefix(self, concept_ids: torch.Tensor, concept_embeds: torch.Tensor | None = None):
        """``[<BOS>, <SEP₁>, C¹…, <SEP₂>, C²…]`` packed and left-padded (P2).

        Returns embeds (batch, P, hidden) with type embeddings added, position ids, type ids and validity (each
        (batch, P)). ``concept_embeds`` (batch, types, L, hidden) replaces the table lookup of the concept slots.
        """
        self.check_concepts(concept_ids)
        b, k, length = concept_ids.shape
        device = concept_ids.device
        slots = concept_slot_mask(concept_ids)
        content = concept_ids.masked_fill(~slots, CONCEPT_PAD)
        sep_rows = 1 + torch.arange(k, device=device)[None, :, None].expand(b, k, 1)
        slot_rows = 1 + self.planner_concept_ids(content)  # same block layout, shifted by the BOS row
        table = self.executor_table()
        slot_embeds = F.embedding(slot_rows, table) if concept_embeds is None else concept_embeds
        segments = torch.cat([F.embedding(sep_rows, table), slot_embeds], 2)  # (batch, types, L + 1, h)
        bos = table[0].expand(b, 1, -1)
        embeds = torch.cat([bos, segments.flatten(1, 2)], 1)  # (batch, F = 1 + types·(L + 1), hidden)
        types = torch.arange(k + 1, device=device).repeat_interleave(torch.tensor([1] + [length + 1] * k, device=device))
        embeds = embeds + self.executor_type_embed(types)[None]
        positions = torch.cat([torch.zeros(1, dtype=torch.long, device=device),
                               torch.arange(length + 1, device=device).repeat(k)])  # (F,)
        keep = torch.cat([slots.new_ones(b, 1), F.pad(slots, (1, 0), value=True).flatten(1)], 1)  # (batch, F)
        text = self.text_types(device)
        tokens = content - NUM_CONCEPT_SPECIALS
        copyable = slots & text[None, :, None]
        if self.config.plan_separator_id is not None:  # it marks where a word ends: nothing to write
            copyable &= tokens != self.config.plan_separator_id
        tokens = tokens.masked_fill(~copyable, NOT_COPYABLE)
        tokens = torch.cat([tokens.new_full((b, 1), NOT_COPYABLE),
                            F.pad(tokens, (1, 0), value=NOT_COPYABLE).flatten(1)], 1)  # (batch, F)
        # Left-pad: stable sort puts dropped entries first and kept ones last, in their original order.
        width = int(keep.sum(1).max())
        source = torch.sort(keep.long(), dim=1, stable=True).indices[:, keep.shape[1] - width:]  # (batch, P)
        embeds = embeds.gather(1, source[..., None].expand(-1, -1, embeds.shape[-1]))
        kept = keep.gather(1, source)
        return ExecutorPrefix(embeds, positions[source], types[source], kept,
                              tokens.gather(1, source).masked_fill(~kept, NOT_COPYABLE))

    def executor_step(self, embeds: torch.Tensor, positions: torch.Tensor, key_valid: torch.Tensor | None,
                      cache: Cache) -> torch.Tensor:
        """Append ``embeds`` (batch, q, hidden) to the executor's cache; key_valid covers cache + q. → hidden.

        ``key_valid=None`` for ONE new token when every key is valid: no mask at all (the fast SDPA path).
        """
        if key_valid is None and embeds.shape[1] != 1:
            raise ValueError(f"key_valid=None is only for one new token, got {embeds.shape[1]}")
        mask = ({"full_attention": None} if key_valid is None
                else self.attention_masks(self.executor, causal_padding_rule(key_valid), embeds, key_valid.shape[1]))
        return self.executor(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                             cache=cache, use_cache=True).last_hidden_state

    def copy_slots(self, prefix_hidden: torch.Tensor, copy_tokens: torch.Tensor) -> CopySlots | None:
        """The executor's copy head's view of the prefix (batch, P, hidden) whose text-concept slots hold
        ``copy_tokens`` (batch, P); None without ``executor_copy``."""
        return None if self.copy_head is None else self.copy_head.slots(prefix_hidden, copy_tokens)

    def text_logits(self, hidden: torch.Tensor, slots: CopySlots | None, written: torch.Tensor | None = None,
                    checklist_update: torch.Tensor | None = None) -> torch.Tensor:
        """Text states (batch, t, hidden) → next-token scores (batch, t, vocab): ``lm_head``'s logits, or with
        ``executor_copy`` the log-probabilities of the pointer-generator over the prefix's ``slots``; with
        ``executor_checklist`` the states first get what of the plan is left, ``written`` (batch, t, P) being
        which slots' tokens the text before each position holds (``checklist_update``: that update, when the
        caller already has it for ``written``)."""
        if slots is not None and self.copy_head.checklist is not None:
            update = self.copy_head.checklist(slots, written) if checklist_update is None else checklist_update
            hidden = hidden + update
        logits = self.lm_head(hidden)
        return logits if slots is None else self.copy_head(logits, hidden, slots, written)

    def text_embeds(self, text_ids: torch.Tensor) -> torch.Tensor:
        return self.executor.embed_tokens(text_ids) + self.executor_type_embed.weight[TEXT_TYPE]

    def executor_forward(self, concept_ids: torch.Tensor, text_ids: torch.Tensor,
                         text_attention_mask: torch.Tensor | None = None,
                         concept_embeds: torch.Tensor | None = None) -> ExecutorOutput:
        """Teacher-forced p(y | z): one pass over [prefix; text] (P3). Text token t has position t (BOS = 0)."""
        prefix, prefix_positions, _, prefix_valid, copy_tokens = self.executor_prefix(concept_ids, concept_embeds)
        b, t = text_ids.shape
        if t > self.config.max_text_length:
            raise ValueError(f"text_ids has {t} tokens; max_text_length is {self.config.max_text_length}")
        text_valid = torch.ones_like(text_ids, dtype=torch.bool) if text_attention_mask is None else text_attention_mask.bool()
        text_positions = torch.arange(1, t + 1, device=text_ids.device).expand(b, t)
        embeds = torch.cat([prefix, self.text_embeds(text_ids)], 1)
        hidden = self.executor_step(embeds, torch.cat([prefix_positions, text_positions], 1),
                                    torch.cat([prefix_valid, text_valid], 1), DynamicCache(config=self.executor.config))
        p = prefix.shape[1]
        # the last prefix token predicts text token 1
        slots = self.copy_slots(hidden[:, :p], copy_tokens)
        checklist = slots is not None and self.copy_head.checklist is not None
        written = written_slots(text_ids, slots) if checklist else None
        logits = self.text_logits(hidden[:, p - 1 : p - 1 + t], slots, written)
        labels = text_ids.masked_fill(~text_valid, IGNORE)
        token_nll = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                                    reduction="none").view(b, t)
        loss = token_nll.sum() / text_valid.sum().clamp(min=1)
        return ExecutorOutput(loss=loss, logits=logits, token_nll=token_nll, log_prob=-token_nll.sum(1))

    # -- both (the M-step of P4) --------------------------------------------------------------------------------
    def z_dropout(self, concept_ids: torch.Tensor) -> torch.Tensor:
        """The plan the executor reads in the M-step: ``concept_ids`` with ``executor_z_dropout`` applied while
        training, ``concept_ids`` itself otherwise."""
        p = self.config.executor_z_dropout
        return drop_concepts(concept_ids, p) if self.training and p > 0 else concept_ids

    def concept_rows(self, concept_ids: torch.Tensor) -> torch.Tensor:
        """(batch, types, L) ids → their rows of the executor's concept table (batch, types, L, hidden): e_hard."""
        return F.embedding(1 + self.planner_concept_ids(concept_ids.clamp(min=0)), self.executor_table())

    def concept_mixture(self, weights: torch.Tensor) -> torch.Tensor:
        """(batch, types, L, max type vocab) weights over each type's ids → rows mixed from the executor's table."""
        k = self.config.num_concept_types
        table = self.executor_table()[1 + k :].view(k, self.max_type_vocab, -1)
        return torch.einsum("bklv,kvh->bklh", weights.to(table.dtype), table)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                concept_ids: torch.Tensor | None = None, text_ids: torch.Tensor | None = None,
                text_attention_mask: torch.Tensor | None = None) -> PlannerExecutorOutput:
        """Training losses for (u, z, y) (P4), by ``config.concept_gradient``.

        ``hard_em`` (the M-step): planner CE on (u, z) and executor CE on (z, y), z = ``concept_ids`` (the E-step's
        z*); either half runs alone when the other's inputs are missing. While training, the executor reads z
        after z-dropout (``executor_z_dropout``); the planner learns all of z. With ``proposer="learned"`` and both
        u and y given, the learned proposer's loss L_q is added (``posterior_loss``). ``straight_through`` /
        ``soft_mixture``: no ``concept_ids`` — the planner plans from u itself (``relaxed_plan``) and the loss is
        the executor's CE through that plan.
        """
        if self.config.concept_gradient != "hard_em":
            return self.relaxed_forward(input_ids, attention_mask, concept_ids, text_ids, text_attention_mask)
        if concept_ids is None:
            raise ValueError("concept_ids is required (use generate() to plan from u alone)")
        planner_out = executor_out = cosine = None
        read = self.z_dropout(concept_ids)  # the plan the executor reads
        if input_ids is not None:
            planner_out = self.planner_forward(input_ids, attention_mask, concept_ids)
            e_soft = self.concept_mixture(planner_out.logits[:, :, : concept_ids.shape[2]].softmax(-1))
            cosine = self.soft_hard_cosine(e_soft, self.concept_rows(read), concept_slot_mask(concept_ids))
        if text_ids is not None:
            executor_out = self.executor_forward(read, text_ids, text_attention_mask)
        losses = [out.loss for out in (planner_out, executor_out) if out is not None]
        if planner_out is not None and self.config.planner_entropy_weight:  # keep the planner from locking in
            counted = planner_out.labels != IGNORE
            losses.append(-self.config.planner_entropy_weight * slot_entropy(planner_out.logits, counted))
        posterior_loss = kl = None
        if self.config.proposer == "learned" and input_ids is not None and text_ids is not None:
            posterior_loss, _, kl = self.posterior_loss(input_ids, attention_mask, text_ids, text_attention_mask)
            losses.append(posterior_loss)
        unlikely = self.unlikelihood_loss(planner_out, executor_out, text_ids, text_attention_mask)
        if unlikely is not None:
            losses.append(self.config.unlikelihood_weight * unlikely)
        return PlannerExecutorOutput(
            loss=sum(losses) if losses else None,
            executor_loss=executor_out.loss if executor_out else None,
            planner_loss=planner_out.loss if planner_out else None,
            logits=executor_out.logits if executor_out else None,
            planner_logits=planner_out.logits if planner_out else None,
            token_nll=executor_out.token_nll if executor_out else None,
            soft_hard_cosine=cosine,
            posterior_loss=posterior_loss,
            posterior_kl=kl,
            unlikelihood_loss=unlikely,
            concept_ids=concept_ids,
            planner_slots=planner_out.labels != IGNORE if planner_out else None,
        )

    def relaxed_forward(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                        concept_ids: torch.Tensor | None, text_ids: torch.Tensor | None,
                        text_attention_mask: torch.Tensor | None) -> PlannerExecutorOutput:
        """``straight_through`` / ``soft_mixture`` (P4): −log p(y | the planner's relaxed plan of u), with Gumbel
        noise while training; minus λ × the planner's mean slot entropy when ``planner_entropy_weight`` is set."""
        if concept_ids is not None or input_ids is None or text_ids is None:
            raise ValueError(f"concept_gradient={self.config.concept_gradient!r} trains on (u, y) pairs: give "
                             "input_ids and text_ids, and no concept_ids (the planner writes the plan)")
        plan = self.relaxed_plan(input_ids, attention_mask, noise=self.training)
        executor_out = self.executor_forward(plan.concept_ids, text_ids, text_attention_mask, plan.concept_embeds)
        slots = concept_slot_mask(plan.concept_ids)
        e_soft = self.concept_mixture(plan.logits.softmax(-1))
        loss = executor_out.loss
        if self.config.planner_entropy_weight:
            loss = loss - self.config.planner_entropy_weight * slot_entropy(plan.logits, slots)
        unlikely = self.unlikelihood_loss(None, executor_out, text_ids, text_attention_mask)
        if unlikely is not None:
            loss = loss + self.config.unlikelihood_weight * unlikely
        return PlannerExecutorOutput(
            loss=loss, executor_loss=executor_out.loss, logits=executor_out.logits, planner_logits=plan.logits,
            token_nll=executor_out.token_nll,
            soft_hard_cosine=self.soft_hard_cosine(e_soft, self.concept_rows(plan.concept_ids), slots),
            unlikelihood_loss=unlikely, concept_ids=plan.concept_ids, planner_slots=slots)

    def unlikelihood_loss(self, planner_out: PlannerOutput | None, executor_out: ExecutorOutput | None,
                          text_ids: torch.Tensor | None, text_attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Mean token-level unlikelihood (``unlikelihood``) per trained position of the executor's text plus that of
        the planner's text-concept plans; None when ``unlikelihood_weight`` is 0."""
        if not self.config.unlikelihood_weight:
            return None
        pairs = []  # (log p (n, T, V), labels (n, T))
        if executor_out is not None:
            valid = torch.ones_like(text_ids, dtype=torch.bool) if text_attention_mask is None else text_attention_mask.bool()
            pairs.append((executor_out.logits, text_ids.masked_fill(~valid, IGNORE)))
        if planner_out is not None and self.config.text_concept_types:
            text = self.text_types(planner_out.logits.device)
            pairs.append((planner_out.logits[:, text].flatten(0, 1), planner_out.labels[:, text].flatten(0, 1)))
        terms = [token_unlikelihood(logits.float().log_softmax(-1), labels, IGNORE).sum()
                 / (labels != IGNORE).sum().clamp(min=1) for logits, labels in pairs]
        return sum(terms) if terms else None

    @staticmethod
    def soft_hard_cosine(e_soft: torch.Tensor, e_hard: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Mean cos(e_soft, e_hard) over the content slots (P6), without gradient."""
        return F.cosine_similarity(e_soft.detach(), e_hard.detach(), dim=-1)[slots].mean()


PlannerExecutorModel.register_for_auto_class("AutoModel")
