"""CJK logits processors and the one-sentence stopping criterion of edge/cloud decoding (SPEC S3, S5; seed 004).

Every processor has the standard ``LogitsProcessor`` signature ``(input_ids (batch, seq), scores (batch, vocab))
-> scores`` and is a PURE function of ``input_ids``: it keeps no state between calls, so the same stack runs on
the edge's draft steps, on the cloud's verification slots and again after a rollback (seed 004 §C–E), and in any
ordinary ``model.generate(logits_processor=...)`` call. Nothing loops over the batch: per-token facts are
precomputed once per tokenizer as vocabulary tensors (:class:`TokenClasses`) and the rules are tensor ops.

Mark ids are DERIVED from the tokenizer by decoding every id: with the character-level corpus tokenizer one
mark is one id, with the real Qwen2 tokenizer a mark lives in many ids (``，`` ``，\\n`` ``”，`` ``，并`` …), and
each rule uses the set of ids whose decoded text contains the mark.

The recommended stack (:func:`build_cjk_processors`, seed 004 TL;DR 1, 3–5) in order: CJK-only repetition
penalty 1.22 → adjacent identical CJK character ban → CJK 3-gram ban over the punctuation-stripped history →
comma gating (``，、：:`` only after ≥ 4 CJK content characters since the last punctuation; ``。`` −8 before 8)
→ temperature ONCE: the stack holds none, ``generate(temperature=…)`` applies it after every custom processor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import (LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase, StoppingCriteria,
                          StoppingCriteriaList)

PUNCTUATION_MARKS = "，。、：:；！？"  # seed 004 §D: the marks whose character density is watched
COMMA_LIKE_MARKS = "，、：:"  # gated until 4 CJK content characters
PERIOD_MARKS = "。"  # penalised until 8 CJK content characters
SENTENCE_END_MARKS = "。."  # one sentence ends at either (seed 004 §F)
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF))  # unified, extension A, compatibility


def is_cjk_char(char: str) -> bool:
    """True for a CJK unified ideograph (content character), False for marks, Latin, digits, spaces."""
    code = ord(char)
    return any(low <= code <= high for low, high in CJK_RANGES)


def _last_index(flags: torch.Tensor) -> torch.Tensor:
    """(batch, seq) bool -> (batch,) index of the last True per row, -1 where there is none."""
    positions = torch.arange(flags.shape[1], device=flags.device).expand_as(flags)
    return torch.where(flags, positions, -1).amax(dim=1)


@dataclass(frozen=True)
class TokenClasses:
    """What each vocabulary id decodes to, as (vocab,) tensors; built once per tokenizer by :meth:`from_tokenizer`.

    ``cjk``: content token (decodes to ≥ 1 CJK character and no punctuation mark); ``punct``: contains a
    :data:`PUNCTUATION_MARKS` character; ``comma`` / ``period`` / ``sentence_end``: contains such a mark;
    ``cjk_tail``: CJK characters after the last mark in the token (all its CJK characters when it has no mark);
    ``first_char`` / ``last_char``: code point of the first / last character when it is CJK, else −1;
    ``n_chars`` / ``n_punct_chars``: decoded characters and mark characters (character-level density, S4);
    ``point_only``: ends a sentence with ``.`` only (no ``。``), so a digit right before it makes it a decimal
    point; ``digit_end`` / ``digit_point``: the text ends with a digit / with a digit and ``.``.
    """

    cjk: torch.Tensor
    punct: torch.Tensor
    comma: torch.Tensor
    period: torch.Tensor
    sentence_end: torch.Tensor
    cjk_tail: torch.Tensor
    first_char: torch.Tensor
    last_char: torch.Tensor
    n_chars: torch.Tensor
    n_punct_chars: torch.Tensor
    point_only: torch.Tensor
    digit_end: torch.Tensor
    digit_point: torch.Tensor
    _fitted: dict = field(default_factory=dict, compare=False, repr=False)  # (name, vocab, device) -> tensor

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> "TokenClasses":
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=True)
        special = set(tokenizer.all_special_ids)
        texts = ["" if i in special else text for i, text in enumerate(texts)]
        return cls.from_texts(texts)

    @classmethod
    def from_texts(cls, texts: list[str]) -> "TokenClasses":
        """Classes from each id's decoded text (``texts[i]`` is what id ``i`` decodes to)."""

        def contains(marks: str) -> torch.Tensor:
            return torch.tensor([any(c in marks for c in t) for t in texts], dtype=torch.bool)

        def edge_char(t: str, index: int) -> int:
            return ord(t[index]) if t and is_cjk_char(t[index]) else -1

        def cjk_after_last_mark(t: str) -> int:
            cut = max(t.rfind(mark) for mark in PUNCTUATION_MARKS)
            return sum(is_cjk_char(c) for c in t[cut + 1 :])

        punct = contains(PUNCTUATION_MARKS)
        has_cjk = torch.tensor([any(is_cjk_char(c) for c in t) for t in texts], dtype=torch.bool)
        return cls(
            cjk=has_cjk & ~punct,
            punct=punct,
            comma=contains(COMMA_LIKE_MARKS),
            period=contains(PERIOD_MARKS),
            sentence_end=contains(SENTENCE_END_MARKS),
            cjk_tail=torch.tensor([cjk_after_last_mark(t) for t in texts], dtype=torch.long),
            first_char=torch.tensor([edge_char(t, 0) for t in texts], dtype=torch.long),
            last_char=torch.tensor([edge_char(t, -1) for t in texts], dtype=torch.long),
            n_chars=torch.tensor([len(t) for t in texts], dtype=torch.long),
            n_punct_chars=torch.tensor([sum(c in PUNCTUATION_MARKS for c in t) for t in texts], dtype=torch.long),
            point_only=contains(".") & ~contains("。"),
            digit_end=torch.tensor([t[-1:].isascii() and t[-1:].isdigit() for t in texts], dtype=torch.bool),
            digit_point=torch.tensor([len(t) > 1 and t.endswith(".") and t[-2].isdigit() for t in texts],
                                     dtype=torch.bool),
        )

    def fit(self, name: str, vocab_size: int, device: torch.device) -> torch.Tensor:
        """Field ``name`` padded (False / 0 / −1) to the model's ``vocab_size`` (models often pad the vocabulary).

        Cached per (name, vocab_size, device): processors call this on every decoding step.
        """
        key = (name, vocab_size, str(device))
        if key not in self._fitted:
            values = getattr(self, name).to(device)
            if vocab_size < values.shape[0]:
                raise ValueError(f"scores have {vocab_size} columns but the tokenizer has {values.shape[0]} ids")
            fill = -1 if name in ("first_char", "last_char") else 0
            self._fitted[key] = torch.nn.functional.pad(values, (0, vocab_size - values.shape[0]), value=fill)
        return self._fitted[key]

    def lookup(self, name: str, input_ids: torch.Tensor) -> torch.Tensor:
        """Field ``name`` at each id of ``input_ids`` (ids beyond the tokenizer read as False / 0 / −1)."""
        values = getattr(self, name).to(input_ids.device)
        inside = input_ids < values.shape[0]
        fill = -1 if name in ("first_char", "last_char") else 0
        return torch.where(inside, values[input_ids.clamp(max=values.shape[0] - 1)], fill).to(values.dtype)

    def cjk_since_punctuation(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch,) CJK characters written since the last punctuation mark (over the whole history if none).

        The last mark's own token counts the CJK characters after its mark (``cjk_tail``), later tokens all theirs.
        """
        last = _last_index(self.lookup("punct", input_ids)).clamp(min=0)  # (batch,)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return torch.where(positions[None, :] >= last[:, None], self.lookup("cjk_tail", input_ids), 0).sum(1)

    def sentence_ends(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, seq) bool: the token ends a sentence (``。`` or ``.``), unless its ``.`` follows a digit — a
        decimal point (``1032.5``) — in the token itself or in the previous one."""
        after_digit = torch.nn.functional.pad(self.lookup("digit_end", input_ids)[:, :-1], (1, 0), value=False)
        decimal = self.lookup("point_only", input_ids) & (after_digit | self.lookup("digit_point", input_ids))
        return self.lookup("sentence_end", input_ids) & ~decimal

    def punctuation_density(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(batch,) character-level punctuation density of ``token_ids`` (batch, block) decoded (S4)."""
        chars = self.lookup("n_chars", token_ids).sum(1)
        return self.lookup("n_punct_chars", token_ids).sum(1) / chars.clamp(min=1)


class _CJKProcessor(LogitsProcessor):
    """Shares one :class:`TokenClasses` between the processors built for a tokenizer."""

    def __init__(self, classes: TokenClasses):
        self.classes = classes


class CJKRepetitionPenaltyLogitsProcessor(_CJKProcessor):
    """Repetition penalty on CJK content tokens only; punctuation is never pushed (seed 004 §E; S3).

    Like ``RepetitionPenaltyLogitsProcessor`` (positive scores divided, negative multiplied) for every CJK
    content id already in ``input_ids``.
    """

    def __init__(self, classes: TokenClasses, penalty: float = 1.22):
        super().__init__(classes)
        if not penalty > 0:
            raise ValueError(f"penalty must be > 0, got {penalty}")
        self.penalty = float(penalty)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, input_ids, True)  # (batch, vocab)
        target = seen & self.classes.fit("cjk", scores.shape[1], scores.device)
        penalised = torch.where(scores > 0, scores / self.penalty, scores * self.penalty)
        return torch.where(target, penalised, scores)


class CJKAdjacentRepeatLogitsProcessor(_CJKProcessor):
    """Ban a token whose first character repeats the CJK character just written ("真真", seed 004 §C; S3)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        last_char = self.classes.lookup("last_char", input_ids[:, -1:])  # (batch, 1), −1 when not CJK
        first_char = self.classes.fit("first_char", scores.shape[1], scores.device)  # (vocab,)
        banned = (first_char[None, :] == last_char) & (last_char >= 0)
        return scores.masked_fill(banned, -float("inf"))


class CJKNoRepeatNGramLogitsProcessor(_CJKProcessor):
    """Ban the CJK token that would repeat an n-gram of the punctuation-stripped CJK history (seed 004 §C; S3).

    The history keeps only CJK content tokens (marks, Latin, padding dropped), so "员在，员在" is caught.
    ``ngram_size`` is 2 or 3; the seed's mild default is 3.
    """

    def __init__(self, classes: TokenClasses, ngram_size: int = 3):
        super().__init__(classes)
        if ngram_size not in (2, 3):
            raise ValueError(f"ngram_size must be 2 or 3, got {ngram_size}")
        self.ngram_size = ngram_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n, seq = self.ngram_size, input_ids.shape[1]
        if seq < n:
            return scores
        content = self.classes.lookup("cjk", input_ids)  # (batch, seq)
        # Stable sort moves the content tokens to the right end, in order: the stripped history, right-aligned.
        order = torch.sort(content.to(torch.int8), dim=1, stable=True).indices
        history = input_ids.gather(1, order)  # (batch, seq)
        valid = torch.arange(seq, device=input_ids.device)[None, :] >= seq - content.sum(1, keepdim=True)
        windows, valid_windows = history.unfold(1, n, 1), valid.unfold(1, n, 1)  # (batch, seq-n+1, n)
        # Every n-gram written so far — the last one included, as in HF's NoRepeatNGram — whose first n-1 tokens
        # equal the last n-1 tokens bans its last token.
        prefix = history[:, seq - n + 1 :]  # (batch, n-1)
        match = (windows[:, :, :-1] == prefix[:, None, :]).all(-1) & valid_windows.all(-1)
        match &= valid[:, seq - n + 1 :].all(-1, keepdim=True)
        banned_ids = torch.where(match, windows[:, :, -1], scores.shape[1])  # vocab = "no ban" column
        banned = torch.zeros(scores.shape[0], scores.shape[1] + 1, dtype=torch.bool, device=scores.device)
        banned.scatter_(1, banned_ids, True)
        return scores.masked_fill(banned[:, :-1], -float("inf"))


class CJKPunctuationGateLogitsProcessor(_CJKProcessor):
    """Comma gating (seed 004 §D; S3): ``，、：:`` banned until ``min_comma`` CJK content characters have been
    written since the last punctuation mark; ``。`` gets ``period_penalty`` (−8) until ``min_period`` (8)."""

    def __init__(self, classes: TokenClasses, min_comma: int = 4, min_period: int = 8, period_penalty: float = -8.0):
        super().__init__(classes)
        if min_comma < 0 or min_period < 0:
            raise ValueError(f"min_comma and min_period must be ≥ 0, got {min_comma}, {min_period}")
        self.min_comma, self.min_period, self.period_penalty = min_comma, min_period, float(period_penalty)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        since = self.classes.cjk_since_punctuation(input_ids)[:, None]  # (batch, 1)
        comma = self.classes.fit("comma", scores.shape[1], scores.device)[None, :]
        period = self.classes.fit("period", scores.shape[1], scores.device)[None, :]
        scores = scores.masked_fill(comma & (since < self.min_comma), -float("inf"))
        return scores + (period & (since < self.min_period)) * self.period_penalty


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
    temperature inside the stack would be applied a second time (seed 004's bug A)."""
    classes = _classes(tokenizer_or_classes)
    return LogitsProcessorList([
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
