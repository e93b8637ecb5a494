"""Edge/cloud speculative decoding as a transformers ``custom_generate`` callable (SPEC S1, S2, S4, S5; seed 004).

    cloud.generate(**inputs, custom_generate=edge_cloud_generate, edge_model=edge, preset="fluency",
                   logits_processor=build_cjk_processors(tokenizer),
                   stopping_criteria=build_sentence_stopping(tokenizer, inputs["input_ids"].shape[1]))

``generate`` prepares the inputs, the processors (its own from ``GenerationConfig`` merged with yours) and the
stopping criteria, then calls :func:`edge_cloud_generate` with the CLOUD as ``model``. One round (a "block"):

1. the edge drafts up to ``k`` tokens incrementally with its KV cache, passing explicit ``position_ids`` and the
   full past+new attention mask (never a 1×1 mask — S2, seed 004 §B), running the processor stack once per
   slot; with ``draft_confidence`` it stops early when its top probability falls below it (HF's assistant
   rule). An edge whose config has ``draft_vocab_ids`` (FR-Spec's frequency-trimmed vocabulary, written by
   ``genlab train edge``) scores only those rows of its head; the other tokens get −inf, so it never drafts
   them, and the cloud still verifies over the full vocabulary (lossless stays exact);
2. gate (S1, S4): the block goes to the cloud when its entropy exceeds the preset's threshold — the entropy is
   the MEAN over the drafted tokens, in nats per token, of the edge's processed next-token distributions — or
   when its character-level punctuation density exceeds 0.4; ``preset="lossless"`` sends every block,
   ``preset="edge"`` none (the edge alone, for latency baselines);
3. the cloud scores the block in ONE forward pass; the same processor stack runs on every verification slot
   (slot j sees prompt + committed + draft[:j]), so both models are compared on PROCESSED distributions;
   greedy accepts while draft == argmax, sampling accepts draft t with probability min(1, p(t)/q(t)) and
   resamples a rejection from norm(max(0, p − q)) (the bonus token after a fully accepted block from p);
4. the accepted tokens plus the cloud's token are committed, both caches are cropped (``DynamicCache.crop``) to
   the committed length, and the stopping criteria cut the block at the first sentence end (S5).

Rows of a batch commit in lockstep: a round commits, for every row, the shortest accepted length of the rows
still running (+ the cloud token); a row that accepted more re-drafts the rest next round. This stays exact
(every committed token is one the cloud accepted or sampled given the committed prefix) and keeps one
rectangular cache per model; ``accepted`` counts only committed acceptances. Rows that finished pad like
``generate`` does when an EOS criterion is present. Both caches record their past before the first forward
(``activate_past_recording``), so sliding-window models (Gemma 2/3, Mistral) roll back like full-attention ones.

Streaming: ``generate`` keeps its ``streamer`` argument for its own loops, so pass ``edge_cloud_streamer=`` (the
``custom_generate`` folder's entry point maps ``streamer=`` to it); the prompt, then every committed block, is
put to it (batch 1, as HF's streamers require).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.utils import ModelOutput

from .logits_process import TokenClasses

PUNCTUATION_DENSITY_LIMIT = 0.4  # S4: a draft denser than this always goes to the cloud
# Gate thresholds in nats per drafted token, read off the real SmolLM2 pair's gate curve on validation prompts
# (``gate_curve`` in benchmarks/results/speculative-smollm2.json): fluency = the largest threshold keeping ≥ 95 %
# agreement with the cloud (2.0: 0.990), quality = the largest keeping ≥ 99 % (1.5: 0.998). Seed 004's 5.75 /
# 3.25 were sums over a block.
FLUENCY_THRESHOLD = 2.0
QUALITY_THRESHOLD = 1.5


@dataclass(frozen=True)
class SpeculativePreset:
    """``num_draft_tokens`` k per block; ``entropy_threshold`` in nats per drafted token; ``cloud``: when blocks go
    to the cloud — ``"always"`` (lossless), ``"gate"`` (entropy or punctuation density), ``"never"`` (edge only)."""

    num_draft_tokens: int
    entropy_threshold: float | None
    cloud: str = "gate"


PRESETS = {
    "fluency": SpeculativePreset(num_draft_tokens=4, entropy_threshold=FLUENCY_THRESHOLD),
    "quality": SpeculativePreset(num_draft_tokens=6, entropy_threshold=QUALITY_THRESHOLD),
    "lossless": SpeculativePreset(num_draft_tokens=4, entropy_threshold=None, cloud="always"),  # S1: all verified
    "edge": SpeculativePreset(num_draft_tokens=4, entropy_threshold=None, cloud="never"),  # the edge alone
}


ACCEPTED, UNVERIFIED, CLOUD = 0, 1, 2  # the token_sources codes


@dataclass
class EdgeCloudOutput(ModelOutput):
    """``sequences`` (batch, seq) plus the decoding statistics (S1), counted over rows still running.

    ``drafted``: tokens the edge proposed; ``verified``: drafted tokens the cloud checked; ``accepted``: verified
    tokens it accepted and that were committed; ``cloud_calls`` / ``blocks``: cloud forwards / rounds;
    ``block_entropies``: (blocks, batch) the edge's mean entropy per block, in nats per drafted token.
    ``token_sources``: (batch, new) who wrote each new token — ``ACCEPTED`` (an edge draft the cloud verified),
    ``UNVERIFIED`` (an edge draft committed without a cloud call), ``CLOUD`` (the cloud's token, replacing a
    rejected draft or after a fully accepted block) or ``-1`` (a finished row's padding); ``rejected_drafts``:
    (batch, new) the edge draft a ``CLOUD`` token replaced, ``-1`` elsewhere.
    """

    sequences: torch.LongTensor | None = None
    drafted: int | None = None
    verified: int | None = None
    accepted: int | None = None
    cloud_calls: int | None = None
    blocks: int | None = None
    block_entropies: torch.FloatTensor | None = None
    token_sources: torch.LongTensor | None = None
    rejected_drafts: torch.LongTensor | None = None

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.verified, 1)

    @property
    def cloud_call_rate(self) -> float:
        return self.cloud_calls / max(self.blocks, 1)


def resolve_preset(preset: str, num_draft_tokens: int | None = None,
                   entropy_threshold: float | None = None) -> SpeculativePreset:
    """The preset with optional overrides, validated (``ValueError`` naming the field and the allowed values)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    base = PRESETS[preset]
    k = base.num_draft_tokens if num_draft_tokens is None else num_draft_tokens
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"num_draft_tokens must be an int ≥ 1, got {k!r}")
    threshold = base.entropy_threshold if entropy_threshold is None else float(entropy_threshold)
    return SpeculativePreset(k, threshold if base.cloud == "gate" else None, base.cloud)


def trimmed_logits(hidden: torch.Tensor, head: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """(..., hidden) @ (draft_vocab, hidden).T → (..., draft_vocab) logits, soft-capped as the model's head does."""
    logits = hidden @ head.T
    return logits if softcap is None else torch.tanh(logits / softcap) * softcap


class _IncrementalModel:
    """One model and its KV cache; :meth:`extend` feeds the slots of ``ids`` the cache does not hold yet.

    ``vocab_size`` is the cloud's: logits come back over exactly those ids (rows an edge padded its embedding
    with are dropped; an edge with ``config.draft_vocab_ids`` scores only those rows and fills the rest with −inf).
    """

    def __init__(self, model, vocab_size: int):
        self.model, self.vocab_size, self.length = model, vocab_size, 0
        self.cache = DynamicCache(config=model.config)
        self.cache.activate_past_recording()  # sliding-window layers keep what a rollback needs (as HF does)
        draft_ids = getattr(model.config, "draft_vocab_ids", None)
        self.draft_ids = None if draft_ids is None else torch.tensor(draft_ids, device=model.device)
        if self.draft_ids is not None:  # FR-Spec: the trimmed head, (draft_vocab, hidden)
            self.head = model.get_output_embeddings().weight.detach()[self.draft_ids]
            self.softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)

    def extend(self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor,
               logits_to_keep: int) -> torch.Tensor:
        """(batch, logits_to_keep, vocab) float logits for the last slots of ``ids`` (explicit positions, S2)."""
        inputs = dict(input_ids=ids[:, self.length :], position_ids=positions[:, self.length :],
                      attention_mask=mask, cache=self.cache, use_cache=True)
        self.length = ids.shape[1]
        if self.draft_ids is None:
            return self.model(**inputs, logits_to_keep=logits_to_keep).logits[..., : self.vocab_size].float()
        hidden = self.model.get_decoder()(**inputs).last_hidden_state[:, -logits_to_keep:]
        draft = trimmed_logits(hidden, self.head, self.softcap).float()  # (batch, keep, draft_vocab)
        logits = draft.new_full((*draft.shape[:2], self.vocab_size), float("-inf"))
        return logits.index_copy_(2, self.draft_ids, draft)

    def crop(self, length: int) -> None:
        """Roll the cache back to its first ``length`` slots."""
        if length < self.length:
            self.cache.crop(length - self.length)
            self.length = length


@dataclass
class _Sequence:
    """The committed tokens of the batch with their attention mask and positions, all (batch, seq)."""

    ids: torch.LongTensor
    mask: torch.LongTensor
    positions: torch.LongTensor
    padded: bool  # any left padding: the mask is passed to the models, otherwise None

    def append(self, tokens: torch.LongTensor) -> "_Sequence":
        steps = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)
        return _Sequence(torch.cat([self.ids, tokens], 1), torch.cat([self.mask, torch.ones_like(tokens)], 1),
                         torch.cat([self.positions, self.positions[:, -1:] + steps], 1), self.padded)

    def truncate(self, length: int) -> "_Sequence":
        return _Sequence(self.ids[:, :length], self.mask[:, :length], self.positions[:, :length], self.padded)

    @property
    def attention_mask(self) -> torch.LongTensor | None:
        return self.mask if self.padded else None


@dataclass
class _Draft:
    tokens: torch.LongTensor  # (batch, k)
    probs: torch.FloatTensor | None  # (batch, k, vocab) processed edge distributions q, sampling only
    entropy: torch.FloatTensor  # (batch,) mean nats per drafted token
    sequence: _Sequence  # committed + drafted


def _process(processors: LogitsProcessorList, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``processors(input_ids, scores)`` without ``LogitsProcessorList``'s per-call signature inspection."""
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores


def _select(scores: torch.Tensor, do_sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(token (batch,), probs (batch, vocab)) from processed scores: sampled or argmax."""
    probs = scores.softmax(-1)
    token = torch.multinomial(probs, 1)[:, 0] if do_sample else scores.argmax(-1)
    return token, probs


def draft_block(edge: _IncrementalModel, seq: _Sequence, processors: LogitsProcessorList, k: int,
                do_sample: bool, frozen: torch.Tensor, pad_token_id: int,
                confidence: float | None = None) -> _Draft:
    """The edge drafts up to ``k`` tokens, one cached step each; ``frozen`` rows (finished, padding) draft padding.

    With ``confidence``, drafting stops after a step where a running row's top probability is below it.
    """
    tokens, probs, entropy = [], [], 0.0
    for _ in range(k):
        logits = edge.extend(seq.ids, seq.attention_mask, seq.positions, logits_to_keep=1)[:, -1]
        scores = _process(processors, seq.ids, logits)
        token, q = _select(scores, do_sample)
        token = torch.where(frozen, pad_token_id, token)
        entropy = entropy + torch.special.entr(q).sum(-1)
        tokens.append(token)
        probs.append(q)
        seq = seq.append(token[:, None])
        if confidence is not None and bool((q.max(-1).values[~frozen] < confidence).any()):
            break
    return _Draft(torch.stack(tokens, 1), torch.stack(probs, 1) if do_sample else None, entropy / len(tokens), seq)


def needs_cloud(draft: _Draft, settings: SpeculativePreset, classes: TokenClasses | None,
                running: torch.Tensor) -> torch.Tensor:
    """(batch,) gate: entropy above the threshold or punctuation density above 0.4 (S1, S4)."""
    if settings.cloud != "gate":
        return running & (settings.cloud == "always")
    dense = classes.punctuation_density(draft.tokens) > PUNCTUATION_DENSITY_LIMIT
    return running & ((draft.entropy > settings.entropy_threshold) | dense)


def verify_block(cloud: _IncrementalModel, draft: _Draft, processors: LogitsProcessorList,
                 do_sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One cloud forward over the block; returns (accepted drafts n (batch,), cloud token at slot n (batch,))."""
    k = draft.tokens.shape[1]
    seq = draft.sequence
    logits = cloud.extend(seq.ids, seq.attention_mask, seq.positions, logits_to_keep=k + 1)  # (batch, k+1, V)
    start = seq.ids.shape[1] - k
    # slot j predicts the token after committed + draft[:j]: the processors see exactly that prefix
    scores = torch.stack([_process(processors, seq.ids[:, : start + j], logits[:, j]) for j in range(k + 1)], 1)
    if not do_sample:
        cloud_tokens = scores.argmax(-1)  # (batch, k+1)
        accepted = (draft.tokens == cloud_tokens[:, :k]).long().cumprod(1).sum(1)
        return accepted, cloud_tokens.gather(1, accepted[:, None])[:, 0]
    return rejection_sample(scores.softmax(-1), draft.probs, draft.tokens)


def rejection_sample(p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling on processed distributions p (batch, k+1, V) and q (batch, k, V) (S1).

    Draft token t at slot j is kept with probability min(1, p(t)/q(t)); the first rejection is replaced by a
    sample of norm(max(0, p − q)); after k acceptances the bonus token is sampled from p. The committed
    tokens are then distributed exactly as p.
    """
    k = tokens.shape[1]
    p_draft, q_draft = p[:, :k].gather(2, tokens[..., None])[..., 0], q.gather(2, tokens[..., None])[..., 0]
    keep = torch.rand_like(p_draft) * q_draft <= p_draft  # u ≤ p/q without dividing by q
    accepted = keep.long().cumprod(1).sum(1)  # (batch,)
    q_padded = torch.cat([q, torch.zeros_like(p[:, :1])], 1)  # the bonus slot has q = 0: residual = p
    index = accepted[:, None, None].expand(-1, 1, p.shape[2])
    p_slot, q_slot = p.gather(1, index)[:, 0], q_padded.gather(1, index)[:, 0]
    residual = (p_slot - q_slot).clamp(min=0)
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_slot)  # p == q: nothing to correct
    return accepted, torch.multinomial(residual, 1)[:, 0]


def _first_stops(stopping_criteria: StoppingCriteriaList, seq: _Sequence, start: int) -> torch.Tensor:
    """(batch, new) whether each prefix that ends in the new slots ``start:`` satisfies a stopping criterion."""
    prefixes = range(start + 1, seq.ids.shape[1] + 1)
    return torch.stack([stopping_criteria(seq.ids[:, :end], None) for end in prefixes], 1)


def _check_inputs(model, edge_model, input_ids: torch.Tensor, generation_config: GenerationConfig,
                  tokenizer, edge_tokenizer) -> None:
    if edge_model is None or not hasattr(edge_model, "get_output_embeddings"):
        raise ValueError("edge_model must be a causal LM (PreTrainedModel with an LM head), got "
                         f"{type(edge_model).__name__}")
    if model.config.is_encoder_decoder or edge_model.config.is_encoder_decoder:
        raise ValueError("edge and cloud must be decoder-only causal LMs, got an encoder-decoder model")
    check_same_tokenizer(model, edge_model, tokenizer, edge_tokenizer)
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty (batch, seq) prompt, got shape {tuple(input_ids.shape)}")
    if generation_config.num_beams != 1:
        raise ValueError(f"num_beams must be 1 for edge/cloud decoding, got {generation_config.num_beams}")


def check_same_tokenizer(cloud, edge, tokenizer=None, edge_tokenizer=None) -> None:
    """Edge and cloud must share one tokenizer (``ValueError`` otherwise).

    With both tokenizers given, their vocabularies must be equal. Without them, every id the edge can draft must
    be a cloud id and the special tokens must agree; an edge whose embedding is padded past the tokenizer
    (rows the tokenizer never produces) is accepted.
    """
    if tokenizer is not None and edge_tokenizer is not None:
        if tokenizer.get_vocab() != edge_tokenizer.get_vocab():
            raise ValueError("edge_tokenizer and cloud_tokenizer differ: edge and cloud must share one tokenizer")
        return
    cloud_vocab = cloud.get_output_embeddings().weight.shape[0]
    draft_ids = getattr(edge.config, "draft_vocab_ids", None)
    edge_vocab = max(draft_ids) + 1 if draft_ids else edge.get_output_embeddings().weight.shape[0]
    tokenizer_size = len(tokenizer) if tokenizer is not None else cloud_vocab
    if draft_ids is None and edge_vocab < tokenizer_size:
        raise ValueError(f"the edge scores {edge_vocab} tokens but the tokenizer has {tokenizer_size}: "
                         "they must share one tokenizer")
    if draft_ids is not None and edge_vocab > cloud_vocab:
        raise ValueError(f"draft_vocab_ids reach id {edge_vocab - 1}, past the cloud's {cloud_vocab} tokens")
    for name in ("bos_token_id", "eos_token_id"):
        cloud_id, edge_id = (getattr(m.config.get_text_config(), name, None) for m in (cloud, edge))
        if None not in (cloud_id, edge_id) and cloud_id != edge_id:
            raise ValueError(f"edge and cloud disagree on {name} ({edge_id} vs {cloud_id}): "
                             "they must share one tokenizer")


def _token_classes(processors: LogitsProcessorList, token_classes: TokenClasses | None) -> TokenClasses | None:
    """The punctuation tables for S4: given, or taken from a genlab CJK processor of the stack."""
    found = [p.classes for p in processors if isinstance(getattr(p, "classes", None), TokenClasses)]
    return token_classes if token_classes is not None else (found[0] if found else None)


@torch.no_grad()
def edge_cloud_generate(
    model,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    edge_model=None,
    preset: str = "fluency",
    num_draft_tokens: int | None = None,
    entropy_threshold: float | None = None,
    draft_confidence: float | None = None,
    token_classes: TokenClasses | None = None,
    return_stats: bool = False,
    edge_cloud_streamer=None,
    edge_tokenizer=None,
    cloud_tokenizer=None,
    synced_gpus: bool = False,
    **model_kwargs,
) -> EdgeCloudOutput | torch.LongTensor:
    """The ``custom_generate`` decoding loop (S1): ``model`` is the cloud, ``edge_model`` the draft model.

    ``preset``: ``"fluency"`` | ``"quality"`` | ``"lossless"`` | ``"edge"`` (see :data:`PRESETS`; ``num_draft_tokens`` and
    ``entropy_threshold`` override). ``draft_confidence``: stop drafting a block early when the edge's top
    probability falls below it (dynamic draft length; None: always ``k``). Greedy or sampling follows
    ``generation_config.do_sample``. ``edge_tokenizer`` + ``cloud_tokenizer``: checked equal
    (``generate`` keeps ``tokenizer=`` for itself). Returns the sequences, or
    an :class:`EdgeCloudOutput` with the statistics when ``return_stats`` or ``return_dict_in_generate``.
    """
    _check_inputs(model, edge_model, input_ids, generation_config, cloud_tokenizer, edge_tokenizer)
    if draft_confidence is not None and not 0 < draft_confidence < 1:
        raise ValueError(f"draft_confidence must be in (0, 1) or None, got {draft_confidence!r}")
    settings = resolve_preset(preset, num_draft_tokens, entropy_threshold)
    processors = logits_processor  # generate's list: the CJK stack, then its one temperature warper (S3)
    classes = _token_classes(processors, token_classes)
    if settings.cloud == "gate" and classes is None:
        raise ValueError(f"preset {preset!r} gates on punctuation density (S4): pass token_classes="
                         "TokenClasses.from_tokenizer(tokenizer) or logits_processor=build_cjk_processors(tokenizer)")
    do_sample = bool(generation_config.do_sample)
    pad_token_id = _pad_token_id(generation_config)
    pad_finished = any(hasattr(c, "eos_token_id") for c in stopping_criteria)  # as generate's _sample does
    max_length = generation_config.max_length

    mask = model_kwargs.get("attention_mask")
    mask = torch.ones_like(input_ids) if mask is None else mask.long()
    seq = _Sequence(input_ids, mask, (mask.cumsum(1) - 1).clamp(min=0), padded=bool((mask == 0).any()))
    vocab_size = model.get_output_embeddings().weight.shape[0]
    edge, cloud = _IncrementalModel(edge_model, vocab_size), _IncrementalModel(model, vocab_size)
    streamer = edge_cloud_streamer
    if streamer is not None:
        if input_ids.shape[0] != 1:
            raise ValueError(f"edge_cloud_streamer needs batch size 1, got {input_ids.shape[0]}")
        streamer.put(input_ids.cpu())
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    counts = dict(drafted=0, verified=0, accepted=0, cloud_calls=0, blocks=0)
    entropies, sources, rejected = [], [], []

    while seq.ids.shape[1] < max_length and not bool(finished.all()):
        frozen = finished & pad_finished  # finished rows that pad; the others keep decoding, as in generate
        running = ~frozen
        k = min(settings.num_draft_tokens, max_length - seq.ids.shape[1])
        draft = draft_block(edge, seq, processors, k, do_sample, frozen, pad_token_id, draft_confidence)
        k = draft.tokens.shape[1]
        entropies.append(draft.entropy)
        counts["blocks"] += 1
        counts["drafted"] += k * int(running.sum())
        if bool(needs_cloud(draft, settings, classes, running).any()):
            accepted, cloud_token = verify_block(cloud, draft, processors, do_sample)
            counts["cloud_calls"] += 1
            counts["verified"] += k * int(running.sum())
            # row stream: accepted drafts, then the cloud's token at slot `accepted`
            candidates = torch.cat([draft.tokens, draft.tokens[:, :1]], 1)
            candidates = candidates.scatter(1, accepted[:, None], cloud_token[:, None])  # (batch, k+1)
            commit = int(torch.where(running, accepted + 1, k + 1).min())  # lockstep: shortest running row
            counts["accepted"] += int(accepted[running].clamp(max=commit).sum())  # committed acceptances only
            block_sources, block_rejected = verified_sources(draft.tokens, accepted)
        else:
            candidates, commit = draft.tokens, k
            block_sources, block_rejected = torch.full_like(draft.tokens, UNVERIFIED), torch.full_like(draft.tokens, -1)
        commit = min(commit, max_length - seq.ids.shape[1])
        start = seq.ids.shape[1]
        seq = seq.append(torch.where(frozen[:, None], pad_token_id, candidates[:, :commit]))
        sources.append(block_sources[:, :commit].masked_fill(frozen[:, None], -1))
        rejected.append(block_rejected[:, :commit])
        seq, finished = _stop_inside_block(stopping_criteria, seq, start, finished, pad_finished, pad_token_id)
        edge.crop(seq.ids.shape[1] - 1)  # roll back rejected slots; the last committed token is fed next
        cloud.crop(seq.ids.shape[1] - 1)
        if streamer is not None:
            streamer.put(seq.ids[0, start:].cpu())

    if streamer is not None:
        streamer.end()
    if not (return_stats or generation_config.return_dict_in_generate):
        return seq.ids
    new = seq.ids.shape[1] - input_ids.shape[1]  # a stop inside the last block may have cut it
    return EdgeCloudOutput(sequences=seq.ids, block_entropies=torch.stack(entropies) if entropies else None,
                           token_sources=torch.cat([input_ids[:, :0], *sources], 1)[:, :new],
                           rejected_drafts=torch.cat([input_ids[:, :0], *rejected], 1)[:, :new], **counts)


def verified_sources(tokens: torch.LongTensor, accepted: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Who wrote each slot of a verified block (batch, k + 1): the ``accepted`` drafts, then the cloud's token;
    and the draft that token replaced (``-1`` after a fully accepted block, and at every other slot)."""
    slots = torch.arange(tokens.shape[1] + 1, device=tokens.device)[None, :]
    cloud_slot = slots == accepted[:, None]
    drafts = torch.cat([tokens, torch.full_like(tokens[:, :1], -1)], 1)  # the bonus slot replaced no draft
    return torch.where(cloud_slot, CLOUD, ACCEPTED), torch.where(cloud_slot, drafts, -1)


def _pad_token_id(generation_config: GenerationConfig) -> int:
    """The id finished rows are padded with: pad, else the (first) eos, else 0."""
    prepared = getattr(generation_config, "_pad_token_tensor", None)
    if prepared is not None:
        return int(prepared)
    for candidate in (generation_config.pad_token_id, generation_config.eos_token_id):
        if candidate is not None:
            return int(candidate[0] if isinstance(candidate, (list, tuple)) else candidate)
    return 0


def _stop_inside_block(stopping_criteria: StoppingCriteriaList, seq: _Sequence, start: int, finished: torch.Tensor,
                       pad_finished: bool, pad_token_id: int) -> tuple[_Sequence, torch.Tensor]:
    """S5: a row stops at the first committed slot where a criterion holds; later slots pad (as ``generate``)."""
    stops = _first_stops(stopping_criteria, seq, start) & ~finished[:, None]  # (batch, new)
    stopped = stops.any(1)
    first = torch.where(stopped, stops.long().argmax(1), stops.shape[1])  # index of the stopping slot
    finished = finished | stopped
    if pad_finished:
        after = torch.arange(stops.shape[1], device=stops.device)[None, :] > first[:, None]
        seq.ids[:, start:] = seq.ids[:, start:].masked_fill(after, pad_token_id)
    if bool(finished.all()):  # generate stops as soon as every row has stopped: cut after the last stop
        seq = seq.truncate(start + int(torch.where(stopped, first + 1, 0).max()))
    return seq, finished


CUSTOM_GENERATE_ENTRY = '''"""Edge/cloud speculative decoding for `generate(custom_generate=REPO, trust_remote_code=True, edge_model=...)`.

Written by genlab (SPEC S1). The decoding loop lives in generation_speculative.py, the CJK logits processors
and stopping criteria in logits_process.py, both beside this file.
"""

from transformers import GenerationMixin

from .generation_speculative import edge_cloud_generate
from .logits_process import TokenClasses


def generate(model, *args, **kwargs):
    """Run the standard input preparation of `generate`, then the edge/cloud loop with `model` as the cloud.

    Pass `tokenizer=` to let the gated presets measure punctuation density without genlab installed; a
    `streamer=` receives the prompt and every committed block.
    """
    if kwargs.get("tokenizer") is not None:
        kwargs.setdefault("cloud_tokenizer", kwargs["tokenizer"])
        if kwargs.get("token_classes") is None:
            kwargs["token_classes"] = TokenClasses.from_tokenizer(kwargs["tokenizer"])
    kwargs["edge_cloud_streamer"] = kwargs.pop("streamer", None)  # generate would keep it for its own loops
    return GenerationMixin.generate(model, *args, custom_generate=edge_cloud_generate, **kwargs)
'''


# The loop passes the cache as ``cache=`` (transformers 5.24's name; 5.23 silently ignored it): pin what it needs.
CUSTOM_GENERATE_REQUIREMENTS = "transformers>=5.24,<6\ntorch>=2.4\n"


def write_custom_generate_dir(repo_dir: str | os.PathLike) -> Path:
    """Write ``REPO/custom_generate/`` (``generate.py`` + this module + ``logits_process.py`` + requirements)
    so a checkpoint or Hub repo carries the decoding: ``model.generate(**inputs, custom_generate=REPO,
    trust_remote_code=True, edge_model=edge, preset="fluency")`` (transformers ``load_custom_generate``)."""
    folder = Path(repo_dir) / "custom_generate"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "generate.py").write_text(CUSTOM_GENERATE_ENTRY, encoding="utf-8")
    for sibling in ("generation_speculative.py", "logits_process.py", "cjk_text.py"):
        shutil.copyfile(Path(__file__).with_name(sibling), folder / sibling)
    (folder / "requirements.txt").write_text(CUSTOM_GENERATE_REQUIREMENTS, encoding="utf-8")
    return folder
