"""Online concept compression on a Qwen2 decoder (SPEC C1–C9; seed 003 "v2").

What this adds to Qwen2 — the decoder layers, rotary embedding, norm and attention dispatch are
transformers' own (``Qwen2Model``), and the parameter names are the base's, so any
``Qwen2ForCausalLM`` checkpoint loads into it (``from_base_pretrained``):

- C1 the layers are split into shallow (every token), middle (concept rows ONLY: gathered, not masked)
  and deep (concept prefix + tail) stages;
- C2 ``ConceptHead``: Gumbel-softmax straight-through over K concept ids + ``<NULL>`` on the shallow
  states; ``ConceptEmbedding``: e = e_hard + (e_soft − stopgrad(e_soft)) for the tokens that fire;
- C7 the ``<NULL>`` bias is calibrated at init to the target rate, and a token is forced to be a concept
  after ``max_null_run`` consecutive ``<NULL>`` (forced boundary: the tail never exceeds that length);
- C3/C4 ONE deep pass over ``[concept rows ; token rows]`` with a boolean SDPA mask built from 1-D ids
  (seg = cumsum(is_concept)): concept→concept causal, token j→concept at time ≤ j, token j→token i
  for τ(j) < i ≤ j (the tail), concept→token never; each row also sees itself, so a token that was
  itself compressed reads [concepts ≤ t ; x_t]. O(T) rows, equal to running the deep blocks once per
  target position (tested). RoPE: a concept sits at the position of the token it compresses;
- C5 next-token cross-entropy on the token rows (per normal token); an optional rate penalty (off);
- C8 decoding with three ragged KV caches lives in ``generation_concept.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, GenerationMixin, PreTrainedModel, Qwen2ForCausalLM
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model, Qwen2RMSNorm

from .configuration_concept import Qwen2ConceptCompressionConfig
from .generation_concept import ConceptCache, RaggedKVCache, decode_step
from .masking import MaskFunction, attention_mask, causal_padding_rule, concept_deep_rule
from .straight_through import gumbel_softmax_st, straight_through

_NOT_COPIED_FROM_BASE = ("model_type", "architectures", "transformers_version", "auto_map", "dtype", "torch_dtype")


@dataclass
class ConceptCausalLMOutput(ModelOutput):
    """loss: CE per normal token (C5) + ratio_loss_weight · rate_loss (C7); ce_loss and rate_loss apart (for logging
    and perplexity); logits: (batch, seq, vocab) on token rows;
    concept_ids: (batch, seq) ConceptHead decision per token, ``<NULL>`` = K; is_concept: (batch, seq) bool;
    is_forced: (batch, seq) bool, the concepts forced by ``max_null_run`` (not chosen by the head);
    soft_concept_rate: mean P(not <NULL>) over real tokens (differentiable); cache: ConceptCache."""

    loss: Tensor | None = None
    ce_loss: Tensor | None = None
    rate_loss: Tensor | None = None
    logits: Tensor | None = None
    cache: ConceptCache | None = None
    concept_ids: Tensor | None = None
    is_concept: Tensor | None = None
    is_forced: Tensor | None = None
    soft_concept_rate: Tensor | None = None


class ConceptHead(nn.Module):
    """C2: shallow state → (K concept ids + ``<NULL>``) logits → Gumbel-softmax straight-through one-hot."""

    def __init__(self, config: Qwen2ConceptCompressionConfig):
        super().__init__()
        self.concept_vocab_size = config.concept_vocab_size
        self.norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.proj = nn.Linear(config.hidden_size, config.concept_vocab_size + 1, bias=False)
        self.null_bias = nn.Parameter(torch.zeros(1))  # calibrated at init (C7), see _init_weights

    def logits(self, hidden: Tensor) -> Tensor:
        return self.proj(self.norm(hidden)) + F.pad(self.null_bias, (self.concept_vocab_size, 0))

    def forward(self, hidden: Tensor, tau: float, noise: bool, firing: str = "threshold") -> tuple[Tensor, Tensor]:
        """(…, hidden) → (ST one-hot (…, K + 1), logits (…, K + 1)).

        ``threshold`` firing (C7, the same rule with or without noise): fire iff P(not <NULL>) > ½, i.e.
        logsumexp(concept logits) > the <NULL> logit; the id is the argmax of the concept logits, Gumbel-perturbed
        when ``noise`` (training), so noise chooses only WHICH concept fires. The gradient is that of the
        softmax over the K + 1 (perturbed) logits at temperature ``tau``. ``sampled`` firing with ``noise``
        (the ablation): Gumbel-max over all K + 1 classes, so a token fires with P(not <NULL>); without noise
        it is the threshold rule.
        """
        logits = self.logits(hidden)
        null = self.concept_vocab_size
        if noise and firing == "sampled":
            return gumbel_softmax_st(logits, tau, noise=True), logits
        concept_logits = logits[..., :null]
        if noise:
            uniform = torch.rand_like(concept_logits).clamp(1e-10, 1 - 1e-10)
            concept_logits = concept_logits - torch.log(-torch.log(uniform))
        fire = torch.logsumexp(logits[..., :null], -1) > logits[..., null]  # the noise never decides firing
        hard_id = torch.where(fire, concept_logits.argmax(-1), null)
        hard = F.one_hot(hard_id, null + 1).to(logits.dtype)
        soft = torch.softmax(torch.cat([concept_logits, logits[..., null:]], -1).float() / tau, -1)
        return straight_through(hard, soft.to(logits.dtype)), logits

    def force_concept(self, choice: Tensor, logits: Tensor, forced: Tensor) -> Tensor:
        """C7 forced boundary: where ``forced`` (…), the hard choice becomes the best concept id; gradient unchanged."""
        best = logits[..., : self.concept_vocab_size].argmax(-1)
        hard = F.one_hot(best, self.concept_vocab_size + 1).to(choice.dtype)
        return torch.where(forced.unsqueeze(-1), straight_through(hard, choice), choice)


class ConceptEmbedding(nn.Module):
    """C2: concept id → vector; e = choice[:K] @ W, i.e. e_hard + (e_soft − stopgrad(e_soft)) for an ST one-hot.

    Forward: exactly W[id] (the choice is an exact one-hot). Gradient to the ConceptHead logits: that of
    e_soft = softmax(·)[:K] @ W (the straight-through path); to W: that of e_hard.
    """

    def __init__(self, config: Qwen2ConceptCompressionConfig):
        super().__init__()
        self.concept_vocab_size = config.concept_vocab_size
        self.embed = nn.Embedding(config.concept_vocab_size, config.hidden_size)

    def forward(self, choice: Tensor) -> Tensor:
        return choice[..., : self.concept_vocab_size] @ self.embed.weight  # (…, hidden)


def forced_boundaries(natural: Tensor, valid: Tensor, max_null_run: int) -> Tensor:
    """C7, vectorised: (batch, seq) bool, True where a token must become a concept.

    Inside a run of ``<NULL>`` that starts after a natural concept (or the sequence start), every
    (max_null_run + 1)-th token is forced; padding never counts.
    """
    index = valid.long().cumsum(1) - 1  # index among real tokens
    last_natural = torch.where(natural & valid, index, -1).cummax(1).values
    offset = index - last_natural - 1  # <NULL> tokens since the last natural concept, before this one
    return valid & ~natural & ((offset + 1) % (max_null_run + 1) == 0)


class Qwen2ConceptPreTrainedModel(PreTrainedModel):
    config_class = Qwen2ConceptCompressionConfig
    config: Qwen2ConceptCompressionConfig
    base_model_prefix = "model"
    _no_split_modules = ["Qwen2DecoderLayer"]
    _supports_sdpa = True  # the C4 mask is a boolean SDPA mask (eager gets it as an additive bias)
    _supports_flash_attn = False
    _supports_flex_attn = True  # every mask is a genlab.masking rule, so flex gets a BlockMask of it

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ConceptHead):  # C7: P(concept) = target rate at init (SPEC Pitfalls)
            std = self.config.initializer_range
            init.constant_(module.null_bias, self.config.null_bias(std**2 * self.config.hidden_size))


class Qwen2ConceptCompressionForCausalLM(Qwen2ConceptPreTrainedModel, GenerationMixin):
    """A Qwen2 causal LM whose middle blocks run on discrete concept tokens only (C1–C9)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: Qwen2ConceptCompressionConfig):
        super().__init__(config)
        self.model = Qwen2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.concept_head = ConceptHead(config)
        self.concept_embedding = ConceptEmbedding(config)
        self.post_init()

    # -- building blocks ---------------------------------------------------------------------------------------------
    def stage_layers(self, stage: str) -> nn.ModuleList:
        """The Qwen2 decoder layers of ``stage`` ('shallow', 'middle' or 'deep'), C1."""
        shallow, middle = self.config.num_shallow_layers, self.config.num_middle_layers
        bounds = {"shallow": (0, shallow), "middle": (shallow, shallow + middle),
                  "deep": (shallow + middle, self.config.num_hidden_layers)}
        if stage not in bounds:
            raise ValueError(f"stage must be 'shallow', 'middle' or 'deep', got {stage!r}")
        start, stop = bounds[stage]
        return self.model.layers[start:stop]

    def run_stage(self, stage: str, hidden: Tensor, position_ids: Tensor, rule: MaskFunction | None, cache=None,
                  kv_len: int | None = None) -> Tensor:
        """Run ``stage``'s layers on hidden (b, q, hidden) with RoPE at position_ids (b, q).

        rule: the stage's mask function (``genlab.masking``) over ``kv_len`` keys (default q: no cache), or None
        for plain causal attention over the q rows (SDPA's is_causal kernel, much faster than an explicit mask;
        the other backends get the causal rule).
        """
        position_embeddings = self.model.rotary_emb(hidden, position_ids)  # layers need (cos, sin), not ids
        batch, q_len = hidden.shape[:2]
        implementation = self.config._attn_implementation
        if rule is None and implementation != "sdpa":
            rule = causal_padding_rule(torch.ones(batch, q_len, dtype=torch.bool, device=hidden.device))
        mask = None if rule is None else attention_mask(rule, batch, q_len, kv_len or q_len, implementation=implementation,
                                                        dtype=hidden.dtype, device=hidden.device)
        for layer in self.stage_layers(stage):
            hidden = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings, cache=cache)
        return hidden

    def _check_length(self, positions: int) -> None:
        if positions > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {positions} positions exceeds the base's max_position_embeddings="
                             f"{self.config.max_position_embeddings}")

    # -- training forward (O(T), one deep pass) ----------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        cache: ConceptCache | None = None,
        use_cache: bool | None = None,
        gumbel_tau: float | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        position_ids: Tensor | None = None,
        **kwargs,
    ) -> ConceptCausalLMOutput:
        """Full forward (training, scoring, prefill with ``use_cache=True``) or cached decoding steps.

        input_ids (batch, seq); attention_mask (batch, seq) with LEFT padding; labels (batch, seq) with -100
        ignored (shifted inside); gumbel_tau: the temperature (the trainer passes the scheduled value);
        logits_to_keep: the LM head runs on the last k positions only (0: all; ``generate``'s prefill keeps 1, which
        spares a (batch, seq, vocab) tensor). What the
        model cannot honour is refused, never dropped: positions always follow ``attention_mask``, and attention
        weights / per-layer hidden states do not exist for the rows the middle blocks skip.
        """
        refused = {"position_ids": position_ids is not None, "output_attentions": bool(output_attentions),
                   "output_hidden_states": bool(output_hidden_states), "return_dict=False": return_dict is False}
        refused.update({name: True for name in kwargs})
        refused["logits_to_keep with labels"] = bool(logits_to_keep) and labels is not None
        if any(refused.values()):
            raise ValueError(f"Qwen2ConceptCompressionForCausalLM.forward does not take {sorted(k for k, v in refused.items() if v)}; "
                             "it takes input_ids, attention_mask (left padding; positions follow it), labels, cache, "
                             "use_cache and gumbel_tau, and returns a ConceptCausalLMOutput")
        if cache is not None:
            return self._decode(input_ids, cache)
        self._check_length(input_ids.shape[1])
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        tau = self.config.gumbel_tau_start if gumbel_tau is None else gumbel_tau
        caches = self._new_caches(input_ids) if use_cache else None
        hidden, concepts = self._compress_and_run(input_ids, valid, tau, caches)
        logits = self.lm_head(self.model.norm(hidden[:, -logits_to_keep:]))  # -0: every position
        ce = rate = loss = None
        if labels is not None:
            ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
            rate = self.rate_loss(concepts["soft_rate"], concepts["hard_rate"])
            loss = ce + self.config.ratio_loss_weight * rate if self.config.ratio_loss_weight > 0 else ce
        return ConceptCausalLMOutput(
            loss=loss, ce_loss=ce, rate_loss=rate,
            logits=logits,
            cache=self._finish_prefill(caches, concepts, valid) if use_cache else None,
            concept_ids=concepts["ids"],
            is_concept=concepts["is_concept"],
            is_forced=concepts["is_forced"],
            soft_concept_rate=concepts["soft_rate"],
        )

    def _compress_and_run(self, input_ids: Tensor, valid: Tensor, tau: float, caches) -> tuple[Tensor, dict]:
        """Shallow → ConceptHead → middle on gathered concept rows → one deep pass; returns token rows' states."""
        position_ids = (valid.long().cumsum(1) - 1).clamp(min=0)  # (batch, seq), left padding aware
        hidden = self.model.embed_tokens(input_ids)  # (batch, seq, hidden)
        shallow_rule = None if bool(valid.all()) else causal_padding_rule(valid)  # unpadded: SDPA's causal kernel
        hidden = self.run_stage("shallow", hidden, position_ids, shallow_rule, self._begin(caches, 0, hidden))

        noise = self.training and caches is None  # a prefill for decoding is noise-free like every decode step
        choice, head_logits = self.concept_head(hidden, tau, noise=noise, firing=self.config.firing)
        natural = (choice.argmax(-1) != self.config.null_id) & valid
        forced = forced_boundaries(natural, valid, self.config.max_null_run)
        choice = self.concept_head.force_concept(choice, head_logits, forced)
        is_concept = natural | forced  # (batch, seq)

        n_concepts = is_concept.sum(1)  # (batch,)
        width = int(n_concepts.max())  # one host sync: the packed concept width
        concept_time = torch.argsort((~is_concept).to(torch.int8), dim=1, stable=True)[:, :width]  # (batch, M)
        concept_valid = torch.arange(width, device=input_ids.device) < n_concepts[:, None]
        concept_pos = position_ids.gather(1, concept_time)  # a concept sits at its token's position
        concepts = self.concept_embedding(choice.gather(1, concept_time[..., None].expand(-1, -1, choice.shape[-1])))
        if width > 0 and self.config.num_middle_layers > 0:  # C1: the middle blocks see the M concept rows only
            # concepts are packed to the left, so plain causal attention never lets a real row see padding
            concepts = self.run_stage("middle", concepts, concept_pos, None, self._begin(caches, 1, concepts))

        deep_in = torch.cat([concepts, hidden], 1)  # (batch, M + seq, hidden)
        deep_pos = torch.cat([concept_pos, position_ids], 1)
        rule = concept_deep_rule(concept_time, concept_valid, is_concept, valid)  # C4
        out = self.run_stage("deep", deep_in, deep_pos, rule, self._begin(caches, 2, deep_in))[:, width:]

        soft = torch.softmax(head_logits.float(), -1)[..., self.config.null_id]
        stats = {
            "ids": choice.argmax(-1).masked_fill(~valid, self.config.null_id),
            "is_concept": is_concept,
            "is_forced": forced,
            "soft_rate": ((1 - soft) * valid).sum() / valid.sum().clamp(min=1),
            "hard_rate": (is_concept & valid).sum() / valid.sum().clamp(min=1),
            "time": concept_time, "valid": concept_valid, "positions": position_ids,
        }
        return out, stats

    def rate_loss(self, soft_rate: Tensor, hard_rate: Tensor) -> Tensor:
        """C7. ``threshold``: H-Net's ratio loss N/(N−1)·((N−1)·F·G + (1−F)·(1−G)), N = 1/r, on the hard rate F (no
        gradient) and the soft rate G; its minimum is at F = G = r. ``sampled``: (G − r)²."""
        r = self.config.target_compression_ratio
        if self.config.firing == "sampled":
            return (soft_rate - r) ** 2
        if r >= 1:
            return soft_rate.new_zeros(())
        n, f = 1 / r, hard_rate.detach()
        return n / (n - 1) * ((n - 1) * f * soft_rate + (1 - f) * (1 - soft_rate))

    # -- cached decoding (C8) -------------------------------------------------------------------------------------
    def _new_caches(self, input_ids: Tensor) -> list[RaggedKVCache]:
        return [RaggedKVCache(input_ids.shape[0], input_ids.device) for _ in range(3)]

    @staticmethod
    def _begin(caches, stage: int, hidden: Tensor):
        """Prefill: the stage's cache takes every row of ``hidden`` from slot 0 (compacted afterwards)."""
        if caches is None:
            return None
        zeros = torch.zeros(hidden.shape[0], dtype=torch.long, device=hidden.device)
        caches[stage].begin(None, zeros, hidden.shape[1])
        return caches[stage]

    def _finish_prefill(self, caches: list[RaggedKVCache], concepts: dict, valid: Tensor) -> ConceptCache:
        """Keep per row: real tokens (shallow), its concepts (middle), concept prefix + final tail (deep)."""
        shallow, middle, deep = caches
        is_concept = concepts["is_concept"]
        n_concepts = is_concept.sum(1)
        key_seg = is_concept.long().cumsum(1) - is_concept.long()
        final_tail = valid & (key_seg == n_concepts[:, None]) & ~is_concept  # tokens after the last concept
        shallow.compact(valid)
        middle.compact(concepts["valid"])
        deep.compact(torch.cat([concepts["valid"], final_tail], 1))
        index = valid.long().cumsum(1) - 1
        last_concept = torch.where(is_concept, index, -1).max(1).values
        return ConceptCache(
            shallow=shallow, middle=middle, deep=deep,
            next_position=concepts["positions"][:, -1] + 1,
            null_run=index[:, -1] - last_concept,
            n_concepts=n_concepts,
            seen_tokens=valid.shape[1],
            history=[concepts["ids"]],
        )

    def _decode(self, input_ids: Tensor, cache: ConceptCache) -> ConceptCausalLMOutput:
        """New tokens (batch, q), one decode step each (q = 1 in ``generate``)."""
        self._check_length(int(cache.next_position.max()) + input_ids.shape[1])
        logits = torch.cat([decode_step(self, input_ids[:, i : i + 1], cache) for i in range(input_ids.shape[1])], 1)
        return ConceptCausalLMOutput(logits=logits, cache=cache,
                                     concept_ids=cache.history[-1] if input_ids.shape[1] == 1 else None)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model builds its own ConceptCache at prefill

    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None, use_cache=True, **kwargs):
        """The whole (left-padded) prompt at prefill, then only the tokens the cache has not seen."""
        if cache is not None:
            input_ids = input_ids[:, cache.seen_tokens :]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "cache": cache, "use_cache": use_cache,
                "logits_to_keep": kwargs.get("logits_to_keep", 0)}

    # -- base weights (C1) -------------------------------------------------------------------------------------------
    @classmethod
    def from_base_pretrained(cls, base, **concept_fields) -> "Qwen2ConceptCompressionForCausalLM":
        """Wrap a ``Qwen2ForCausalLM`` (instance, directory or repo id) keeping all its weights (C1).

        ``concept_fields`` are the config fields this model adds (layer split, concept vocabulary, rate
        controls, …). Only ``model_type == 'qwen2'`` checkpoints are accepted (``ValueError`` otherwise).
        """
        if isinstance(base, (str, os.PathLike)):
            model_type = AutoConfig.from_pretrained(base).model_type
            if model_type != "qwen2":
                raise ValueError(f"base must be a Qwen2ForCausalLM checkpoint (model_type 'qwen2'), got {model_type!r}"
                                 " — convert it first (e.g. genlab.convert_smollm2 for Llama-layout GGUF)")
            base = Qwen2ForCausalLM.from_pretrained(base)
        if not isinstance(base, Qwen2ForCausalLM):
            raise ValueError(f"base must be a Qwen2ForCausalLM or a path to one, got {type(base).__name__}")
        fields = {k: v for k, v in base.config.to_dict().items() if k not in _NOT_COPIED_FROM_BASE}
        model = cls(Qwen2ConceptCompressionConfig(**{**fields, **concept_fields}))
        missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
        new = [k for k in missing if not k.startswith(("concept_head.", "concept_embedding."))]
        if new or unexpected:
            raise ValueError(f"base weights do not fit: missing {new}, unexpected {unexpected}")
        model.generation_config = base.generation_config
        return model


Qwen2ConceptCompressionForCausalLM.register_for_auto_class("AutoModelForCausalLM")
Qwen2ConceptCompressionConfig.register_for_auto_class()

__all__ = ["ConceptCausalLMOutput", "ConceptEmbedding", "ConceptHead", "Qwen2ConceptCompressionForCausalLM",
           "Qwen2ConceptPreTrainedModel", "forced_boundaries"]
