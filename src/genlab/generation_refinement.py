"""MERGE decoding (SPEC M8): rounds of delete → insert counted masks → fill → stop.

``model.generate(input_ids, mode="edit"|"gen"|"auto")`` overrides ``GenerationMixin.generate`` and reads its
settings from ``GenerationConfig`` (saved as ``generation_config.json``): ``mode``, ``max_rounds`` (L_max 6),
``confidence_stop`` (0.9, over the masks a round filled), ``levenshtein_stop`` (1: stop when a round edits
nothing), ``max_new_tokens`` / ``min_new_tokens`` (bounds on the net growth of each sequence), ``num_deletions``
(K_del override for the bottom-K Picker), ``detector`` (what the Picker's rule reads as P(wrong): ``"picker"``,
its own scores; ``"fill"``, the filler's, ``fill_wrong_prob``) and ``return_dict_in_generate``.

Gen mode is Mask-Predict after round 0 (issue 12): round 0 inserts the masks and fills them; round r ≥ 1 keeps
the length, re-masks the ⌊K·(R − r)/R⌋ least confident of the K generated tokens (R = ``max_rounds``) and
fills them again, so later rounds can repair what round 0 got wrong.

Every row is processed by the same batched tensor ops; rows that have stopped are frozen, so a sequence's
result depends neither on the other rows nor on padding (inputs may be left- or right-padded; outputs are
right-padded with ``<pad>``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import GenerationConfig, GenerationMixin
from transformers.utils import ModelOutput

MODES = ("edit", "gen", "auto")
DETECTORS = ("picker", "fill")


class FillProcessor(Protocol):
    """What a ``LogitsProcessor`` is to one next token, for MERGE's fill: rescores the logits (K, V) of K tokens
    being filled, the k-th at column ``positions[k]`` of row ``input_ids[k]`` (K, L) (which holds ``[MASK]``, or
    the token itself for a per-character corrector); returns the new (K, V). Tokens at ``finfo.min`` are ruled
    out (``fill_candidates``) and should stay so."""

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, scores: torch.Tensor) -> torch.Tensor: ...


def default_refinement_config(config) -> GenerationConfig:
    """The M8 decoding defaults of a ``MergeConfig``."""
    return GenerationConfig(
        mode="auto", max_rounds=config.max_rounds, confidence_stop=config.confidence_stop,
        levenshtein_stop=config.levenshtein_stop, max_new_tokens=None, min_new_tokens=None, num_deletions=None,
        detector="picker", do_sample=False, bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id)


@dataclass
class MergeGenerateOutput(ModelOutput):
    """``sequences`` (B, N) right-padded; ``rounds`` (B,) rounds used; per-round trace (B, R) with NaN once a row
    has stopped: ``gate`` (g of the round), ``inserted`` (masks inserted), ``confidence`` (mean fill confidence),
    ``top_delete_prob`` (the highest p_del the round gave a token of the row; the aligned recipe's P(wrong));
    ``deleted``: one (B, L_r) bool mask per round over that round's input; ``round_sequences``: one (B, N_r)
    right-padded tensor per round, each row's text after that round (a stopped row keeps its last text)."""

    sequences: torch.LongTensor | None = None
    attention_mask: torch.LongTensor | None = None
    rounds: torch.LongTensor | None = None
    gate: torch.FloatTensor | None = None
    inserted: torch.FloatTensor | None = None
    confidence: torch.FloatTensor | None = None
    top_delete_prob: torch.FloatTensor | None = None
    deleted: tuple[torch.BoolTensor, ...] | None = None
    round_sequences: tuple[torch.LongTensor, ...] | None = None


def levenshtein(a: torch.Tensor, a_len: torch.Tensor, b: torch.Tensor, b_len: torch.Tensor) -> torch.Tensor:
    """Batched edit distance between a[i, :a_len[i]] and b[i, :b_len[i]] → (B,) long.

    One DP row per step over a, vectorised over the batch and over b: with cand[j] = min(substitute,
    delete), the insertion chain new[j] = min_k≤j cand[k] + (j − k) is j + cummin(cand − j).
    """
    steps = torch.arange(b.shape[1] + 1, device=b.device)  # (Lb + 1,)
    prev = steps.expand(b.shape[0], -1)  # D[0, j] = j
    result = b_len.clone()  # a empty
    for i in range(1, a.shape[1] + 1):
        cost = (a[:, i - 1 : i] != b).long()  # (B, Lb)
        best = torch.minimum(prev[:, :-1] + cost, prev[:, 1:] + 1)
        cand = torch.cat([prev[:, :1] + 1, best], dim=1)  # (B, Lb + 1)
        prev = torch.cummin(cand - steps, dim=1).values + steps
        result = torch.where(a_len == i, prev.gather(1, b_len[:, None]).squeeze(1), result)
    return result


def bag_distance(a, a_len, b, b_len) -> torch.Tensor:
    """(B,) the larger count, over the two sides, of tokens the other side's multiset cannot match: a lower bound
    of Levenshtein (an edit removes at most one unmatched token from each side)."""
    vocab = int(max(a.max(), b.max())) + 1

    def histogram(x, x_len):  # (B, vocab) token counts within each row's length
        inside = torch.arange(x.shape[1], device=x.device) < x_len[:, None]
        return x.new_zeros(x.shape[0], vocab).scatter_add(1, x.clamp(min=0), inside.long())

    diff = histogram(a, a_len) - histogram(b, b_len)
    return torch.maximum(diff.clamp(min=0).sum(-1), (-diff).clamp(min=0).sum(-1))


def changed_less_than(a, a_len, b, b_len, threshold: int) -> torch.Tensor:
    """(B,) bool: Levenshtein(a, b) < threshold, running the DP only for rows the cheap bounds leave open."""
    width = max(a.shape[1], b.shape[1])
    a, b = (torch.nn.functional.pad(x, (0, width - x.shape[1]), value=-1) for x in (a, b))
    same = a_len == b_len
    hamming = (a != b).sum(-1)  # lev ≤ hamming when the lengths agree (padding compares equal)
    decided_yes = same & (hamming < threshold)
    open_rows = ~decided_yes & (bag_distance(a, a_len, b, b_len) < threshold)  # ≥ |len difference| too
    if not bool(open_rows.any()):
        return decided_yes
    return decided_yes | (open_rows & (levenshtein(a, a_len, b, b_len) < threshold))


def substitution_candidates(input_ids: torch.Tensor, input_valid: torch.Tensor, deletions: torch.Tensor,
                            masks: torch.Tensor, fill_candidates: torch.Tensor) -> torch.Tensor:
    """(B, N, V) bool: the tokens each fused position may be filled with. The k-th mask after a kept token
    substitutes the k-th token deleted after it, while there are such tokens, and may take only
    ``fill_candidates[deleted token]``; a mask beyond the deletions (a pure insertion) may take any token.
    input_ids / input_valid / deletions (B, L) over the round's input, masks (B, N) over the fused sequence,
    fill_candidates (V, V)."""
    width = input_ids.shape[1]
    kept = input_valid & (deletions < 0.5)  # (B, L); <s> is never deleted, so every mask has a kept token left
    kept_index = torch.sort((~kept).long(), dim=1, stable=True).indices  # (B, L) r-th kept token's index
    slots = torch.arange(masks.shape[1], device=masks.device)
    anchor_slot = torch.where(masks, -1, slots).cummax(-1).values.clamp(min=0)  # (B, N) kept token on the left
    anchor_rank = (~masks).long().cumsum(-1) - 1  # (B, N)
    source = kept_index.gather(1, anchor_rank.clamp(0, width - 1)) + slots - anchor_slot  # (B, N)
    inside = masks & (source < width)
    source = source.clamp(max=width - 1)
    same_gap = kept.long().cumsum(-1).gather(1, source) == anchor_rank + 1  # no kept token in between
    substitutes = inside & same_gap & input_valid.gather(1, source)
    return fill_candidates[input_ids.gather(1, source)] | ~substitutes[..., None]


def token_chunks(widths: torch.Tensor, budget: int) -> list[tuple[int, int]]:
    """Consecutive (start, end) ranges over ``widths`` (K,), ascending, each holding as many rows as fit
    ``budget`` tokens at the range's widest (last) row; a row wider than the budget makes a range of its own."""
    widths, chunks, start = widths.tolist(), [], 0
    while start < len(widths):
        end = start + 1
        while end < len(widths) and (end + 1 - start) * widths[end] <= budget:
            end += 1
        chunks.append((start, end))
        start = end
    return chunks


def left_align(ids: torch.Tensor, valid: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real tokens to the left (stable), padding to the right."""
    order = torch.sort((~valid).long(), dim=1, stable=True).indices
    valid = valid.gather(1, order)
    return ids.gather(1, order).masked_fill(~valid, pad_id), valid


def pad_to(x: torch.Tensor, width: int, value) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value) if x.shape[1] < width else x


def fit_width(x: torch.Tensor, width: int) -> torch.Tensor:
    """(B, N, D) → (B, width, D), trimmed or zero-padded along the sequence."""
    return x[:, :width] if x.shape[1] >= width else torch.nn.functional.pad(x, (0, 0, 0, width - x.shape[1]))


@dataclass
class RefinementState:
    """What carries from one round to the next, all (B, ...)."""

    ids: torch.LongTensor
    valid: torch.BoolTensor
    prev_logits: torch.Tensor | None
    prev_hidden: torch.Tensor | None
    done: torch.BoolTensor
    rounds: torch.LongTensor
    generated: torch.BoolTensor  # (B, L) tokens a round filled (gen mode re-masks among them)
    token_prob: torch.Tensor  # (B, L) probability each filled token had when it was filled (1 elsewhere)


class MergeGenerationMixin(GenerationMixin):
    """``generate`` for ``MergeForMaskedRefinement`` (M8)."""

    def _refinement_settings(self, generation_config, kwargs) -> GenerationConfig:
        settings = copy.deepcopy(generation_config or self.generation_config)
        if not hasattr(settings, "detector"):  # saved before the setting existed
            settings.detector = "picker"
        unused = settings.update(**kwargs)
        if unused:
            raise ValueError(f"unknown generate arguments {sorted(unused)}; MERGE takes mode, max_rounds, "
                             f"confidence_stop, levenshtein_stop, max_new_tokens, min_new_tokens, num_deletions, "
                             f"detector, return_dict_in_generate")
        if settings.mode not in MODES:
            raise ValueError(f"mode must be 'edit', 'gen' or 'auto', got {settings.mode!r}")
        if settings.detector not in DETECTORS:
            raise ValueError(f"detector must be 'picker' or 'fill', got {settings.detector!r}")
        if settings.detector == "fill" and self.config.picker != "threshold":
            raise ValueError(f"detector='fill' feeds the threshold deletion rule; this model has "
                             f"picker={self.config.picker!r}")
        if not settings.max_rounds or settings.max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {settings.max_rounds}")
        if settings.do_sample or (settings.num_beams or 1) != 1:
            raise ValueError("MERGE fills each mask with its argmax (M8): do_sample / num_beams are not supported, "
                             f"got do_sample={settings.do_sample}, num_beams={settings.num_beams}")
        return settings

    def _initial_state(self, input_ids, attention_mask, settings) -> RefinementState:
        c = self.config
        if input_ids is None:
            input_ids = torch.full((1, 1), c.bos_token_id, dtype=torch.long, device=self.device)
        valid = (input_ids != c.pad_token_id) if attention_mask is None else attention_mask.bool()
        ids, valid = left_align(input_ids.to(self.device), valid.to(self.device), c.pad_token_id)
        lengths = valid.sum(-1)
        if int(lengths.max()) > c.max_position_embeddings:
            raise ValueError(f"input length {int(lengths.max())} exceeds max_position_embeddings "
                             f"({c.max_position_embeddings})")
        deletable = (valid & (ids != c.bos_token_id)).sum(-1)
        if settings.mode == "edit" and bool((deletable == 0).any()):
            raise ValueError("mode='edit' needs a non-empty input in every row (got a row with no text); "
                             "use mode='gen' to generate from an empty prompt")
        if settings.num_deletions is not None and (
                settings.num_deletions < 1 or bool((deletable < settings.num_deletions).any())):
            raise ValueError(f"num_deletions must be between 1 and the shortest input's length "
                             f"({int(deletable.min())}), got {settings.num_deletions}")
        batch, width = ids.shape[0], int(lengths.max())
        return RefinementState(ids=ids[:, :width], valid=valid[:, :width], prev_logits=None, prev_hidden=None,
                               done=torch.zeros(batch, dtype=torch.bool, device=ids.device),
                               rounds=torch.zeros(batch, dtype=torch.long, device=ids.device),
                               generated=torch.zeros_like(valid[:, :width]),
                               token_prob=torch.ones(batch, width, device=ids.device))

    def _length_bounds(self, input_len: torch.Tensor, settings) -> tuple[torch.Tensor | None, torch.Tensor]:
        limit = self.config.max_position_embeddings
        max_new = settings.max_new_tokens
        max_length = (input_len + max_new).clamp(max=limit) if max_new is not None else torch.full_like(input_len, limit)
        min_length = None
        if settings.min_new_tokens is not None:
            min_length = torch.minimum(input_len + settings.min_new_tokens, max_length)
        return min_length, max_length

    def refine_round(self, state: RefinementState, round_index: int, settings, min_length, max_length,
                     fill_candidates: torch.Tensor | None = None, fill_processor: FillProcessor | None = None):
        """One M8 round on every row: (round output, filled ids (B, N), per-token fill probability (B, N),
        mean confidence of the filled masks (B,); 1 where a row filled none). ``fill_candidates``: see
        ``substitution_candidates``; ``fill_processor``: see ``generate``."""
        batch = state.done.shape[0]
        if settings.mode == "gen" and round_index > 0:  # Mask-Predict: same length, re-mask the least confident
            none = torch.zeros(batch, device=state.ids.device)
            out = self(input_ids=self._remask(state, round_index, settings), attention_mask=state.valid,
                       round_index=round_index, edit=none, num_insertions=none.long())
        else:
            forced = {"edit": 1.0, "gen": 0.0}.get(settings.mode)
            edit = None if forced is None else torch.full((batch,), forced, device=state.ids.device)
            wrong_prob = None
            if settings.detector == "fill" and settings.mode != "gen":
                wrong_prob = self._fill_detector(state, fill_candidates, fill_processor)
            out = self(input_ids=state.ids, attention_mask=state.valid, prev_logits=state.prev_logits,
                       prev_hidden=state.prev_hidden, round_index=round_index, edit=edit,
                       num_deletions=settings.num_deletions, wrong_prob=wrong_prob, min_length=min_length,
                       max_length=max_length)
        masks = out.mask_positions  # (B, N)
        logits = out.logits[masks].float()  # (K, V): only the masks are filled
        logits[:, self._never_filled] = torch.finfo(logits.dtype).min
        if fill_candidates is not None:
            allowed = substitution_candidates(state.ids, state.valid, out.deletions, masks, fill_candidates)
            logits = logits.masked_fill(~allowed[masks], torch.finfo(logits.dtype).min)
        if fill_processor is not None:
            rows, cols = masks.nonzero(as_tuple=True)  # (K,) each mask's row and column, the order of `logits`
            logits = fill_processor(out.fused_ids[rows], cols, logits)
        prob, best = torch.softmax(logits, dim=-1).max(-1)  # (K,)
        filled = out.fused_ids.masked_scatter(masks, best)
        token_prob = torch.ones(masks.shape, device=prob.device).masked_scatter(masks, prob)  # (B, N), 1 off the masks
        confidence = torch.where(masks.any(-1), (token_prob * masks).sum(-1) / masks.sum(-1).clamp(min=1), 1.0)  # B4
        return out, filled, token_prob, confidence

    def _fill_detector(self, state: RefinementState, fill_candidates: torch.Tensor | None,
                       fill_processor: FillProcessor | None) -> torch.Tensor:
        """(B, L) ``fill_wrong_prob`` of the rows still refining, kept only at each row's highest: one token per
        round, since a wrong token also makes its neighbours look wrong (the next round scores them again)."""
        active = ~state.done
        wrong = torch.zeros(state.ids.shape, device=state.ids.device)
        if bool(active.any()):
            wrong[active] = self.fill_wrong_prob(state.ids[active], state.valid[active], fill_candidates,
                                                 fill_processor=fill_processor)
        return wrong * (wrong == wrong.amax(-1, keepdim=True))

    def fill_wrong_prob(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        fill_candidates: torch.Tensor | None = None, chunk_tokens: int = 1024,
                        fill_processor: FillProcessor | None = None) -> torch.Tensor:
        """(B, L) P(wrong) of every token by the filler alone, a masked-LM detector as Kenlm-CSC's is an n-gram
        one: token i is masked on its own, and P(wrong_i) = 1 − p̃(x_i | X without x_i), with p̃ the filler's
        distribution renormalised over the tokens that may stand at i (``fill_candidates[x_i]``, x_i included;
        every fillable token without them), after ``fill_processor`` when given (see ``generate``). 0 on ``<s>``
        and padding. One filler pass per scored token; the passes run shortest rows first, in chunks of at most
        ``chunk_tokens`` tokens (rows × the chunk's longest row; a longer row runs alone), each cut to its longest
        row, so they cost Σ L_i², not Σ L_i · max L, in chunks small enough to stay in cache; only the masked
        position is read out."""
        return self.fill_wrong_probs(input_ids, attention_mask, (fill_candidates,), chunk_tokens, fill_processor)[0]

    @torch.no_grad()
    def fill_wrong_probs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         candidate_sets: tuple[torch.Tensor | None, ...], chunk_tokens: int = 1024,
                         fill_processor: FillProcessor | None = None) -> tuple[torch.Tensor, ...]:
        """``fill_wrong_prob`` under each of ``candidate_sets`` (``None``: every fillable token), from the same
        filler passes; ``fill_processor`` rescores each set's allowed tokens."""
        c = self.config
        valid = attention_mask.bool()
        row, col = (valid & (input_ids != c.bos_token_id)).nonzero(as_tuple=True)  # (K,) the scored tokens
        extent = (valid * torch.arange(1, valid.shape[1] + 1, device=valid.device)).amax(-1)  # (B,) past last token
        order = extent[row].argsort(stable=True)  # shortest rows first, so a chunk is cut to similar lengths
        row, col = row[order], col[order]
        probe = input_ids[row].clone()  # (K, L): row r's draft with its token col[r] masked
        probe[torch.arange(len(row), device=probe.device), col] = c.mask_token_id
        probe_valid = valid[row]
        positions = (probe_valid.long().cumsum(-1) - 1).clamp(min=0)
        ratio = 1.0 / probe_valid.sum(-1)  # t: one mask per row
        token = input_ids[row, col]
        wrongs = tuple(torch.zeros(input_ids.shape, device=input_ids.device) for _ in candidate_sets)
        for start, end in token_chunks(extent[row], chunk_tokens):  # none when no row has a token to score
            part = torch.arange(start, end, device=input_ids.device)
            width = int(extent[row[part[-1]]])  # the chunk's longest row: what lies beyond is padding
            hidden = self.fill_states(self.get_input_embeddings()(probe[part, :width]), probe_valid[part, :width],
                                      positions[part, :width], ratio[part])  # (k, width, H)
            read = col[part] - int(c.shifted_logits)  # the state that predicts the masked token
            at_mask = hidden[torch.arange(len(part), device=read.device), read]  # (k, H)
            logits = self.get_output_embeddings()(at_mask).float()  # (k, V)
            logits[:, self._never_filled] = torch.finfo(logits.dtype).min
            for wrong, candidates in zip(wrongs, candidate_sets):
                allowed = logits if candidates is None else logits.masked_fill(~candidates[token[part]],
                                                                               torch.finfo(logits.dtype).min)
                if fill_processor is not None:
                    allowed = fill_processor(probe[part, :width], col[part], allowed)
                kept = allowed.log_softmax(-1).gather(1, token[part, None]).squeeze(1).exp()
                wrong[row[part], col[part]] = 1.0 - kept
        return wrongs

    def _remask(self, state: RefinementState, round_index: int, settings) -> torch.Tensor:
        """(B, L) ids with the n = ⌊K·(R − r)/R⌋ lowest-probability generated tokens of each row set to [MASK]."""
        generated = state.generated & state.valid
        count = generated.sum(-1) * (settings.max_rounds - round_index) // settings.max_rounds  # (B,)
        prob = state.token_prob.masked_fill(~generated, float("inf"))
        rank = prob.argsort(dim=-1, stable=True).argsort(dim=-1)  # 0 = least confident
        return state.ids.masked_fill(rank < count[:, None], self.config.mask_token_id)

    @property
    def _never_filled(self) -> list[int]:
        c = self.config
        return [c.pad_token_id, c.bos_token_id, c.eos_token_id, c.mask_token_id]

    @torch.no_grad()
    def generate(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                 generation_config: GenerationConfig | None = None, streamer=None,
                 fill_candidates: torch.Tensor | None = None, fill_processor: FillProcessor | None = None,
                 **kwargs):
        """Refine ``input_ids`` (``<s>`` + text; ``None`` = unconditional) over at most ``max_rounds`` rounds (M8).

        Each round: Gate (or ``mode``) → delete (Picker) → insert counted masks → greedy fill (gen mode: Mask-Predict
        re-masking after round 0); a row stops when the mean confidence of its filled masks > ``confidence_stop``,
        or Levenshtein(X_new, X) < ``levenshtein_stop``, or at L_max. With ``detector="fill"`` a round deletes one
        token (the likeliest wrong one, when above ``config.delete_threshold``), so the confidence stop is off
        in edit and auto mode: a row stops when a round edits nothing.
        Returns the sequences, or a ``MergeGenerateOutput`` with the trace when ``return_dict_in_generate``.
        A ``streamer`` (batch 1, as HF's streamers require) receives the input, then the final sequence: every
        round may rewrite any token, so no token is final before the last round.
        ``fill_candidates`` (V, V) bool, row v = the tokens that may replace v (v itself included), e.g. a
        spelling confusion set: a mask that replaces a deleted token is filled only from that token's row
        (``substitution_candidates``); other masks are unconstrained.
        ``fill_processor`` (a ``FillProcessor``, e.g. ``genlab.spelling.LexiconFillProcessor``) rescores the fill
        logits of every mask after ``fill_candidates``, and, with ``detector="fill"``, those the detector reads.
        """
        settings = self._refinement_settings(generation_config, kwargs)
        state = self._initial_state(input_ids, attention_mask, settings)
        if streamer is not None:
            if state.ids.shape[0] != 1:
                raise ValueError(f"streamer needs batch size 1, got {state.ids.shape[0]}")
            streamer.put(state.ids[0, : int(state.valid.sum())].cpu())
        min_length, max_length = self._length_bounds(state.valid.sum(-1), settings)
        nan = torch.tensor(float("nan"), device=state.ids.device)
        trace = {"gate": [], "inserted": [], "confidence": [], "top_delete_prob": [], "deleted": [], "sequences": []}
        one_edit_per_round = settings.detector == "fill" and settings.mode != "gen"  # confidence is no stop sign
        confidence_stop = float("inf") if one_edit_per_round else settings.confidence_stop
        for round_index in range(settings.max_rounds):
            out, filled, token_prob, confidence = self.refine_round(state, round_index, settings, min_length,
                                                                     max_length, fill_candidates, fill_processor)
            active = ~state.done
            old_len, new_len = state.valid.sum(-1), out.attention_mask.sum(-1)
            unchanged = changed_less_than(filled, new_len, state.ids, old_len, settings.levenshtein_stop)
            stop = (confidence > confidence_stop) | unchanged | (round_index == settings.max_rounds - 1)
            trace["gate"].append(torch.where(active, out.gate, nan))
            trace["inserted"].append(torch.where(active, out.insert_counts.sum(-1), nan))
            trace["confidence"].append(torch.where(active, confidence, nan))
            top = nan if out.delete_prob is None else out.delete_prob.amax(-1)
            trace["top_delete_prob"].append(torch.where(active, top, nan))
            trace["deleted"].append((out.deletions > 0.5) & active[:, None])
            state = self._advance(state, out, filled, token_prob, active, stop,
                                  kept_layout=settings.mode == "gen" and round_index > 0)
            trace["sequences"].append(state.ids.masked_fill(~state.valid, self.config.pad_token_id))
            if bool(state.done.all()):
                break
        sequences = state.ids.masked_fill(~state.valid, self.config.pad_token_id)
        if streamer is not None:
            streamer.put(sequences[0].cpu())
            streamer.end()
        if not settings.return_dict_in_generate:
            return sequences
        return MergeGenerateOutput(sequences=sequences, attention_mask=state.valid.long(), rounds=state.rounds,
                                   gate=torch.stack(trace["gate"], 1), inserted=torch.stack(trace["inserted"], 1),
                                   confidence=torch.stack(trace["confidence"], 1),
                                   top_delete_prob=torch.stack(trace["top_delete_prob"], 1),
                                   deleted=tuple(trace["deleted"]), round_sequences=tuple(trace["sequences"]))

    def _advance(self, state: RefinementState, out, filled, token_prob, active, stop,
                 kept_layout: bool) -> RefinementState:
        """Take the round's result for active rows, keep stopped rows frozen, trim trailing padding. Positions
        move when a round deletes or inserts, so the generated marks and their probabilities are the round's
        own, merged with the previous ones only after a re-masking round (``kept_layout``: Mask-Predict)."""
        pad = self.config.pad_token_id
        new_valid = out.attention_mask.bool()
        width = max(filled.shape[1], state.ids.shape[1])
        take = active[:, None]
        generated, prob = out.mask_positions, token_prob
        if kept_layout:
            generated = generated | state.generated
            prob = torch.where(out.mask_positions, token_prob, state.token_prob)
        ids = torch.where(take, pad_to(filled, width, pad), pad_to(state.ids, width, pad))
        valid = torch.where(take, pad_to(new_valid, width, False), pad_to(state.valid, width, False))
        generated = torch.where(take, pad_to(generated, width, False), pad_to(state.generated, width, False))
        prob = torch.where(take, pad_to(prob, width, 1.0), pad_to(state.token_prob, width, 1.0))
        used = int(valid.sum(-1).max())
        return RefinementState(ids=ids[:, :used], valid=valid[:, :used], prev_logits=fit_width(out.logits, used),
                               prev_hidden=fit_width(out.hidden_states, used), done=state.done | stop,
                               rounds=state.rounds + active.long(), generated=generated[:, :used],
                               token_prob=prob[:, :used])
