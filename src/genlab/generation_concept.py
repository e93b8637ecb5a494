"""Online concept compression during decoding (SPEC C8): three ragged KV caches, one step per token.

- shallow cache: every token of every row;
- middle cache: concepts only, stepped only when a row's new token becomes a concept;
- deep cache: per row ``[concept prefix ; tail]`` — concepts always first, so dropping the tail when a
  concept fires is just ``lengths[row] = n_concepts[row]``.

Rows of a batch fire at different times, so every cache is RAGGED: one length per row, entries packed
to the left, and a step may touch a subset of rows (those that fired). The decoder layers are
transformers' own; they only call ``cache.update(key, value, layer_idx)``, which ``RaggedKVCache``
answers with the keys of the rows being stepped. The prefill is the training forward itself (same
code, so the same numbers), after which each cache is compacted to the entries a row keeps.
Travels with checkpoints: imports only torch and transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .masking import cache_step_rule


class RaggedKVCache:
    """Keys/values of one stage: per layer ``(batch, kv_heads, capacity, head_dim)`` and one length per row.

    ``begin(rows, write_at)`` says which rows the next layer calls concern and where their new entries
    go; every layer then writes its new keys at ``write_at + arange(q)`` and gets back the keys of those
    rows up to the furthest written slot; ``lengths`` change only through ``set_lengths``/``compact``.
    """

    def __init__(self, batch_size: int, device: torch.device):
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)  # (batch,)
        self._rows: Tensor | None = None
        self._slots: Tensor | None = None
        self._span = 0

    def begin(self, rows: Tensor | None, write_at: Tensor, num_new: int) -> int:
        """Prepare a step of ``num_new`` entries for ``rows`` (None: all) at ``write_at`` (b,); returns the span."""
        self._rows = rows
        self._slots = write_at.unsqueeze(1) + torch.arange(num_new, device=write_at.device)  # (b, q)
        self._span = int(write_at.max()) + num_new if write_at.numel() else num_new  # one host sync per step
        return self._span

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """Write (b, kv_heads, q, d) at the prepared slots; return this step's rows' keys/values up to the span."""
        for store, new in ((self.keys, key), (self.values, value)):
            self._ensure_capacity(store, layer_idx, new)
            rows = self._all_rows(store[layer_idx]) if self._rows is None else self._rows
            store[layer_idx][rows.unsqueeze(1), :, self._slots] = new.transpose(1, 2)  # (b, q, kv_heads, d)
        if self._rows is None:
            return self.keys[layer_idx][:, :, : self._span], self.values[layer_idx][:, :, : self._span]
        return (self.keys[layer_idx][self._rows, :, : self._span],
                self.values[layer_idx][self._rows, :, : self._span])

    def _all_rows(self, stored: Tensor) -> Tensor:
        return torch.arange(stored.shape[0], device=stored.device)

    def _ensure_capacity(self, store: dict[int, Tensor], layer_idx: int, new: Tensor) -> None:
        current = store.get(layer_idx)
        capacity = 0 if current is None else current.shape[2]
        if self._span <= capacity:
            return
        grown = new.new_zeros(len(self.lengths), new.shape[1], max(self._span, 2 * capacity), new.shape[3])
        if current is not None:
            grown[:, :, :capacity] = current
        store[layer_idx] = grown

    def set_lengths(self, rows: Tensor | None, lengths: Tensor) -> None:
        if rows is None:
            self.lengths = lengths.clone()
        else:
            self.lengths[rows] = lengths

    def compact(self, keep: Tensor) -> None:
        """Keep, per row, the slots where ``keep`` (batch, span) is True, packed to the left in order."""
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept slots first, in order
        self.lengths = keep.sum(dim=1)
        width = int(self.lengths.max()) if keep.numel() else 0
        index = order[:, None, :width, None]  # (batch, 1, width, 1)
        for store in (self.keys, self.values):
            for layer_idx, stored in store.items():
                store[layer_idx] = stored.gather(2, index.expand(-1, stored.shape[1], -1, stored.shape[3]))

    def reorder(self, beam_idx: Tensor) -> None:
        """Beam search: row i takes row ``beam_idx[i]``'s entries and length."""
        self.lengths = self.lengths[beam_idx]
        for store in (self.keys, self.values):
            for layer_idx, stored in store.items():
                store[layer_idx] = stored[beam_idx.to(stored.device)]

    def nbytes(self) -> int:
        """Bytes of the live entries (sum over rows of lengths) — what a tight cache would hold."""
        per_entry = sum(k[:1, :, :1].numel() * k.element_size() for k in self.keys.values()) * 2
        return int(self.lengths.sum()) * per_entry


@dataclass
class ConceptCache:
    """Decoding state of ``Qwen2ConceptCompressionForCausalLM`` (C8): three caches plus per-row counters.

    ``concept_ids`` (batch, tokens seen) records each token's ConceptHead decision (``<NULL>`` = K), so
    ``generate(..., return_dict_in_generate=True).cache.concept_ids`` shows the concepts.
    """

    shallow: RaggedKVCache
    middle: RaggedKVCache
    deep: RaggedKVCache
    next_position: Tensor  # (batch,) RoPE position of the next token (left padding aware)
    null_run: Tensor  # (batch,) consecutive <NULL> since the last concept (forced boundary, C7)
    n_concepts: Tensor  # (batch,) concepts so far = the concept prefix length in ``deep``
    seen_tokens: int = 0
    history: list[Tensor] = field(default_factory=list)

    is_compileable = False

    @property
    def concept_ids(self) -> Tensor:
        return torch.cat(self.history, dim=1)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Beam search (``generate(num_beams=…)`` calls it): every row of the three caches and of the per-row
        counters follows the beam it continues."""
        for stage in (self.shallow, self.middle, self.deep):
            stage.reorder(beam_idx)
        self.next_position, self.null_run = self.next_position[beam_idx], self.null_run[beam_idx]
        self.n_concepts = self.n_concepts[beam_idx]
        self.history = [step[beam_idx] for step in self.history]

    def nbytes(self) -> int:
        """KV bytes held by the three caches (live entries only)."""
        return self.shallow.nbytes() + self.middle.nbytes() + self.deep.nbytes()


def decode_step(model, input_ids: Tensor, cache: ConceptCache) -> Tensor:
    """One new token per row (input_ids (batch, 1)) through all three stages; returns logits (batch, 1, vocab)."""
    config = model.config
    position_ids = cache.next_position.unsqueeze(1)  # (batch, 1)
    hidden = model.model.embed_tokens(input_ids)  # (batch, 1, hidden)

    span = cache.shallow.begin(None, cache.shallow.lengths, 1)
    hidden = model.run_stage("shallow", hidden, position_ids, cache_step_rule(cache.shallow.lengths), cache.shallow,
                             span)
    cache.shallow.set_lengths(None, cache.shallow.lengths + 1)

    choice, head_logits = model.concept_head(hidden, config.gumbel_tau_end, noise=False)  # (batch, 1, K + 1)
    natural = choice.argmax(-1).squeeze(1) != config.null_id  # (batch,)
    forced = ~natural & (cache.null_run >= config.max_null_run)
    choice = model.concept_head.force_concept(choice, head_logits, forced.unsqueeze(1))
    fired = natural | forced
    cache.null_run = torch.where(fired, 0, cache.null_run + 1)
    cache.history.append(choice.argmax(-1))
    if fired.any():  # the middle stage runs only when a concept fires (one host sync per step)
        _append_concepts(model, cache, choice, fired.nonzero().squeeze(1), position_ids)

    span = cache.deep.begin(None, cache.deep.lengths, 1)
    hidden = model.run_stage("deep", hidden, position_ids, cache_step_rule(cache.deep.lengths), cache.deep, span)
    cache.deep.set_lengths(None, cache.deep.lengths + (~fired).long())  # a compressed token leaves no tail
    cache.next_position = cache.next_position + 1
    cache.seen_tokens += 1
    return model.lm_head(model.model.norm(hidden))


def _append_concepts(model, cache: ConceptCache, choice: Tensor, rows: Tensor, position_ids: Tensor) -> None:
    """Rows that fired: concept row → middle (concept cache) → drop the deep tail → deep (append concept)."""
    concept = model.concept_embedding(choice[rows])  # (b, 1, hidden)
    positions = position_ids[rows]
    if model.config.num_middle_layers > 0:
        write_at = cache.middle.lengths[rows]
        span = cache.middle.begin(rows, write_at, 1)
        concept = model.run_stage("middle", concept, positions, cache_step_rule(write_at), cache.middle, span)
        cache.middle.set_lengths(rows, write_at + 1)
    write_at = cache.n_concepts[rows]  # the tail is dropped: the concept goes right after the prefix
    span = cache.deep.begin(rows, write_at, 1)
    model.run_stage("deep", concept, positions, cache_step_rule(write_at), cache.deep, span)
    cache.n_concepts[rows] = write_at + 1
    cache.deep.set_lengths(rows, write_at + 1)
