"""CJK logits processors and the one-sentence stopping criterion of edge/cloud decoding (SPEC S3, S5; seed 004).

Every processor has the standard ``LogitsProcessor`` signature ``(input_ids (batch, seq), scores (batch, vocab))
-> scores`` and is a PURE function of ``input_ids``: it keeps no state between calls, so the same stack runs on
the edge's draft steps, on the cloud's verification slots and again after a rollback (seed 004 §C–E), and in any
ordinary ``model.generate(logits_processor=...)`` call. Nothing loops over the batch or the vocabulary: per-id
facts are precomputed once per tokenizer and the rules are tensor ops (``cjk_text``).

The rules are about CHARACTERS, whatever the tokenizer spells them with (``cjk_text``): the history is the
decoded text (a character split over byte-fragment ids counts once, a character inside ``，并`` counts), and a
candidate id is judged by the characters it would add (leading spaces skipped, a fragment judged by the
character it completes, ids that spell 哈哈 or ``::`` by themselves caught).

The recommended stack (:func:`build_cjk_processors`, seed 004 TL;DR 1, 3–5) in order: CJK-only repetition
penalty 1.22 → adjacent identical CJK character ban → CJK 3-gram ban over the punctuation-stripped history →
comma gating (``，、：:`` only after ≥ 4 CJK content characters since the last punctuation; ``。`` −8 before 8)
→ temperature ONCE: the stack holds none, ``generate(temperature=…)`` applies it after every custom processor.
It also holds a neutral ``RepetitionPenaltyLogitsProcessor(1.0)``: ``generate`` replaces its own repetition
penalty with a user processor of the same class, so a ``repetition_penalty`` in the ``GenerationConfig`` can
never push punctuation down (the CJK penalty is the stack's ``repetition_penalty``).
"""

from __future__ import annotations

import torch
from transformers import (LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase,
                          RepetitionPenaltyLogitsProcessor, StoppingCriteria, StoppingCriteriaList)

from .cjk_text import COMMA_LIKE_MARKS, PUNCTUATION_MARKS, ContentMemo, TokenClasses, is_cjk_char, is_cjk_code


def _member(values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(batch, m) bool: ``values`` (batch, m) found in the row's ``table`` (batch, n)."""
    if table.shape[1] == 0:
        return torch.zeros_like(values, dtype=torch.bool)
    table = table.sort(1).values
    index = torch.searchsorted(table, values).clamp(max=table.shape[1] - 1)
    return table.gather(1, index) == values


def _matches(values: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """(batch, m) bool: ``values`` ((m,) or (batch, m)) equals one of the row's few ``wanted`` (batch, w) values."""
    values = values if values.ndim == 2 else values[None, :]
    return (values[:, None, :] == wanted[:, :, None]).any(1)


def _few(values: torch.Tensor, keep: torch.Tensor, fill: int = -3) -> torch.Tensor:
    """The kept entries of each row of ``values`` (batch, n, ...) packed to (batch, max kept, ...), ``fill`` padded."""
    width = int(keep.sum(1).max()) if keep.numel() else 0
    order = torch.sort(keep.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :width]
    picked = values.gather(1, order.view(*order.shape, *[1] * (values.ndim - 2)).expand(-1, -1, *values.shape[2:]))
    kept = keep.gather(1, order).view(*order.shape, *[1] * (values.ndim - 2))
    return torch.where(kept, picked, fill)


class _CJKProcessor(LogitsProcessor):
    """Shares one :class:`TokenClasses` between the processors built for a tokenizer. A rule is a pure function
    of ``input_ids``: :meth:`rule` computes what it does to the scores, memoised by the ids' content, and
    ``__call__`` applies it — so a verification slot reuses the draft step's work on the same prefix."""

    def __init__(self, classes: TokenClasses):
        self.classes, self._rules = classes, ContentMemo()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rule = self._rules.get(input_ids, (scores.shape[1], str(scores.device)),
                               lambda: self.rule(input_ids, scores.shape[1], scores.device))
        return self.apply(rule, scores)

    def rule(self, input_ids: torch.LongTensor, vocab: int, device: torch.device):
        raise NotImplementedError

    def apply(self, rule, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Default: ``rule`` is a (batch, vocab) mask of banned ids."""
        return scores.masked_fill(rule, -float("inf"))

    def _scatter(self, mask: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``mask`` (batch, vocab) with ``values`` (batch, len(ids)) OR-ed in at ``ids``."""
        if ids.numel() == 0:
            return mask
        ids = ids.to(mask.device)
        mask = mask.clone()
        mask[:, ids] |= values
        return mask


class CJKRepetitionPenaltyLogitsProcessor(_CJKProcessor):
    """Repetition penalty on CJK text only; punctuation is never pushed (seed 004 §E; S3).

    Like ``RepetitionPenaltyLogitsProcessor`` (positive scores divided, negative multiplied), for every id whose
    CJK characters (its first four) already occur, in that order, in the decoded history — so ``，并`` after 并,
    and 并 after ``，并``. Ids without a CJK character (marks, Latin, digits) are never touched.
    """

    def __init__(self, classes: TokenClasses, penalty: float = 1.22):
        super().__init__(classes)
        if not penalty > 0:
            raise ValueError(f"penalty must be > 0, got {penalty}")
        self.penalty = float(penalty)

    def rule(self, input_ids, vocab, device):
        """(ids that spell CJK, (batch, len(ids)) whether each was written)."""
        written = torch.cat([self.classes.history(input_ids).ngram_hashes(n) for n in range(1, 5)], 1)
        ids = self.classes.cjk_ids.to(device)
        ids = ids[ids < vocab]
        candidate = self.classes.cjk_hash.to(device)[ids][None, :].expand(input_ids.shape[0], -1).contiguous()
        return ids, _member(candidate, written)

    def apply(self, rule, scores):
        ids, hit = rule
        old = scores[:, ids]
        scores = scores.clone()
        scores[:, ids] = torch.where(hit, torch.where(old > 0, old / self.penalty, old * self.penalty), old)
        return scores


class CJKAdjacentRepeatLogitsProcessor(_CJKProcessor):
    """Ban an id that would put two identical CJK characters side by side ("真真", seed 004 §C; S3): its first
    character (spaces skipped, or the character a byte fragment completes) repeats the last one written, or it
    spells such a pair itself (哈哈)."""

    def rule(self, input_ids, vocab, device):
        history = self.classes.history(input_ids)
        # an ordinary id follows the last complete character, unless an unfinished one is pending (it breaks it)
        last = torch.where(history.pending_missing == 0, history.last_char, -2)[:, None]
        banned = (self.classes.fit("first_char", vocab, device)[None, :] == last)
        banned &= self.classes.fit("first_is_cjk", vocab, device)[None, :]
        banned |= self.classes.fit("inner_repeat", vocab, device)[None, :]
        completed = self.classes.fragment_first_chars(history)  # a completing fragment follows the last complete one
        repeat = (completed == history.last_char[:, None]) & is_cjk_code(completed)
        return self._scatter(banned, self.classes.fragment_ids, repeat)


class CJKNoRepeatNGramLogitsProcessor(_CJKProcessor):
    """Ban an id that would repeat a CJK character n-gram of the punctuation-stripped history (seed 004 §C; S3).

    The history keeps only CJK characters (marks, Latin, spaces dropped), so "员在，员在" is caught. An id is
    banned when its first CJK character completes an n-gram already written (the last one included, as in HF's
    ``NoRepeatNGramLogitsProcessor``), or its first two do. ``ngram_size`` is 2 or 3; the seed's default is 3.
    """

    def __init__(self, classes: TokenClasses, ngram_size: int = 3):
        super().__init__(classes)
        if ngram_size not in (2, 3):
            raise ValueError(f"ngram_size must be 2 or 3, got {ngram_size}")
        self.ngram_size = ngram_size

    def rule(self, input_ids, vocab, device):
        n = self.ngram_size
        cjk = self.classes.history(input_ids).cjk  # (batch, chars) right-aligned, −1 padded
        banned = torch.zeros(input_ids.shape[0], vocab, dtype=torch.bool, device=device)
        if cjk.shape[1] < n - 1:
            return banned
        windows = cjk.unfold(1, n, 1) if cjk.shape[1] >= n else cjk[:, :0, None].expand(-1, -1, n)
        windows = torch.where((windows >= 0).all(-1, keepdim=True), windows, -3)  # (batch, W, n) written n-grams
        tail = cjk[:, cjk.shape[1] - (n - 1):]  # (batch, n-1) the last characters written
        # first CJK character completes an n-gram: (tail, c1) written
        c1 = _few(windows[..., -1], (windows[..., :-1] == tail[:, None, :]).all(-1) & (tail >= 0).all(-1, keepdim=True))
        first = self.classes.fit("cjk_first", vocab, device)
        banned |= _matches(first, c1) & (first >= 0)[None, :]
        history = self.classes.history(input_ids)
        completed = self.classes.fragment_first_chars(history)  # fragments: judged by the character they complete
        fragment_first = torch.where(is_cjk_code(completed), completed, first[self.classes.fragment_ids.to(device)])
        banned = self._scatter(banned, self.classes.fragment_ids, _matches(fragment_first, c1) & (fragment_first >= 0))
        # first two CJK characters complete one: (tail[1:], c1, c2) written
        ids = self.classes.pair_ids.to(device)
        pairs = _few(windows[..., -2:], (windows[..., :-2] == tail[:, None, 1:]).all(-1) & (tail >= 0).all(-1, keepdim=True))
        if pairs.shape[1]:
            c1s, c2s = first[ids][None, None, :], self.classes.fit("cjk_second", vocab, device)[ids][None, None, :]
            hit = ((c1s == pairs[..., :1]) & (c2s == pairs[..., 1:])).any(1)
            banned = self._scatter(banned, ids, hit)
        return banned


class CJKPunctuationGateLogitsProcessor(_CJKProcessor):
    """Comma gating (seed 004 §D; S3): an id that writes ``，、：:`` is banned unless ``min_comma`` CJK characters
    stand between the mark and the previous punctuation — the history's and its own before the mark — and an id
    that writes two marks closer than that (``::``, ``、、``) is always banned; ``。`` gets ``period_penalty``
    (−8) until ``min_period`` (8)."""

    def __init__(self, classes: TokenClasses, min_comma: int = 4, min_period: int = 8, period_penalty: float = -8.0):
        super().__init__(classes)
        if min_comma < 0 or min_period < 0:
            raise ValueError(f"min_comma and min_period must be ≥ 0, got {min_comma}, {min_period}")
        self.min_comma, self.min_period, self.period_penalty = min_comma, min_period, float(period_penalty)
        self.crowded = torch.tensor([_crowded_commas(t, min_comma) for t in classes.texts], dtype=torch.bool)

    def rule(self, input_ids, vocab, device):
        """((batch, vocab) banned commas, (batch, vocab) penalised periods)."""
        since = self.classes.history(input_ids).cjk_since_mark[:, None] + self.classes.fit("cjk_lead", vocab, device)
        comma = self.classes.fit("comma", vocab, device)[None, :]
        period = self.classes.fit("period", vocab, device)[None, :]
        crowded = torch.nn.functional.pad(self.crowded.to(device), (0, vocab - self.crowded.shape[0]))[None, :]
        return comma & ((since < self.min_comma) | crowded), period & (since < self.min_period)

    def apply(self, rule, scores):
        banned, early_period = rule
        return scores.masked_fill(banned, -float("inf")) + early_period * self.period_penalty


def _crowded_commas(text: str, min_comma: int) -> bool:
    """The id writes a comma-like mark fewer than ``min_comma`` CJK characters after another mark of its own."""
    seen_mark, since = False, 0
    for char in text:
        if char in PUNCTUATION_MARKS:
            if seen_mark and char in COMMA_LIKE_MARKS and since < min_comma:
                return True
            seen_mark, since = True, 0
        elif is_cjk_char(char):
            since += 1
    return False


class SentenceStoppingCriteria(StoppingCriteria):
    """Stop after ``n_sentences`` sentence ends (``。`` or ``.``, not a decimal point) once ``min_new_tokens`` are
    written (seed 004 §F; S5).

    A row is done when its last token ends a sentence, it has ≥ ``min_new_tokens`` new tokens and its new
    tokens hold ≥ ``n_sentences`` sentence ends. ``prompt_length`` is the (padded) prompt width.
    """

    def __init__(self, classes: TokenClasses, prompt_length: int, min_new_tokens: int = 16, n_sentences: int = 1):
        if prompt_length < 0 or min_new_tokens < 0 or n_sentences < 1:
            raise ValueError("prompt_length and min_new_tokens must be ≥ 0 and n_sentences ≥ 1, got "
                             f"{prompt_length}, {min_new_tokens}, {n_sentences}")
        self.classes, self.prompt_length = classes, prompt_length
        self.min_new_tokens, self.n_sentences = min_new_tokens, n_sentences

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_length :]
        ends = self.classes.sentence_ends(input_ids)[:, self.prompt_length :]  # (batch, new)
        if new.shape[1] < max(self.min_new_tokens, 1):
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return ends[:, -1] & (ends.sum(1) >= self.n_sentences)


def build_cjk_processors(tokenizer_or_classes: PreTrainedTokenizerBase | TokenClasses, *,
                         repetition_penalty: float = 1.22, ngram_size: int = 3, min_comma: int = 4,
                         min_period: int = 8, period_penalty: float = -8.0) -> LogitsProcessorList:
    """The seed's recommended stack (seed 004 TL;DR 1, 3–5; S3), without a temperature.

    Temperature comes from ``generate`` alone (``temperature=0.7``, the seed's value, or ``GenerationConfig``):
    transformers appends its ``TemperatureLogitsWarper`` after every custom processor, so the logits are divided
    exactly once and after the penalties — with or without ``assistant_model`` and in ``edge_cloud_generate``. A
    temperature inside the stack would be applied a second time (seed 004's bug A). The neutral
    ``RepetitionPenaltyLogitsProcessor(1.0)`` takes the place of any ``repetition_penalty`` given to ``generate``
    (transformers keeps a user processor of the same class instead of its own), so punctuation is never penalised;
    the CJK penalty is ``repetition_penalty`` here."""
    classes = _classes(tokenizer_or_classes)
    return LogitsProcessorList([
        RepetitionPenaltyLogitsProcessor(1.0),  # replaces generate's own: punctuation is never penalised
        CJKRepetitionPenaltyLogitsProcessor(classes, repetition_penalty),
        CJKAdjacentRepeatLogitsProcessor(classes),
        CJKNoRepeatNGramLogitsProcessor(classes, ngram_size),
        CJKPunctuationGateLogitsProcessor(classes, min_comma, min_period, period_penalty),
    ])


def build_sentence_stopping(tokenizer_or_classes: PreTrainedTokenizerBase | TokenClasses, prompt_length: int, *,
                            min_new_tokens: int = 16, n_sentences: int = 1) -> StoppingCriteriaList:
    """One Chinese sentence, at least 16 new tokens (seed 004 §F; S5)."""
    classes = _classes(tokenizer_or_classes)
    return StoppingCriteriaList([SentenceStoppingCriteria(classes, prompt_length, min_new_tokens, n_sentences)])


def _classes(tokenizer_or_classes: PreTrainedTokenizerBase | TokenClasses) -> TokenClasses:
    if isinstance(tokenizer_or_classes, TokenClasses):
        return tokenizer_or_classes
    return TokenClasses.from_tokenizer(tokenizer_or_classes)
