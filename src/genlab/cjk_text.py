"""What token ids spell, as tensors: the vocabulary facts and the decoded character history the CJK logits
processors work on (SPEC S3–S6; helper of ``logits_process``, travels with it).

Real tokenizers do not spell one character per id. Byte-level BPE (Qwen2, SmolLM2) splits rare characters into
byte fragments and glues marks to characters (``，并``, ``”，``, ``::``); SentencePiece (Gemma) puts spaces in front
(``▁真``) and falls back to ``<0xE4>`` byte tokens. So the rules are stated over CHARACTERS: every id's UTF-8
bytes are recovered once per tokenizer (:func:`token_bytes`), and each call decodes the history's bytes as UTF-8
with tensor ops (:meth:`TokenClasses.history`): a character split over two ids is one character, a character
written inside a mixed token (``，并``) is in the history, and an incomplete character at the end is kept as a
pending fragment that the next id may complete.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

PUNCTUATION_MARKS = "，。、：:；！？"  # seed 004 §D: the marks whose character density is watched
COMMA_LIKE_MARKS = "，、：:"  # gated until 4 CJK content characters
PERIOD_MARKS = "。"  # penalised until 8 CJK content characters
SENTENCE_END_MARKS = "。."  # one sentence ends at either (seed 004 §F)
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF))  # unified, extension A, compatibility
MAX_TOKEN_BYTES = 24  # longer ids (runs of spaces, long Latin words) are cut; 8 CJK characters fit
HASH_BASE = 1_000_003  # rolling hash of character strings (int64 arithmetic wraps)
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def is_cjk_char(char: str) -> bool:
    """True for a CJK unified ideograph (content character), False for marks, Latin, digits, spaces."""
    code = ord(char)
    return any(low <= code <= high for low, high in CJK_RANGES)


def is_cjk_code(codes: torch.Tensor) -> torch.Tensor:
    """Elementwise :func:`is_cjk_char` over code points (−1 and other padding read False)."""
    return torch.stack([(codes >= low) & (codes <= high) for low, high in CJK_RANGES]).any(0)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte ↔ printable-character table, inverted (byte-level BPE spells bytes with these characters)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


def token_bytes(tokenizer: PreTrainedTokenizerBase) -> list[bytes]:
    """The UTF-8 bytes each id stands for (special ids: none): its decoded text, or, where that text is a broken
    character (U+FFFD), the raw bytes behind it — a ``<0xNN>`` byte token or a byte-level BPE piece."""
    ids = range(len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=True)
    pieces = tokenizer.convert_ids_to_tokens(list(ids))
    special, decoder = set(tokenizer.all_special_ids), _byte_decoder()
    out = []
    for i, text, piece in zip(ids, texts, pieces):
        if i in special:
            out.append(b"")
        elif "\ufffd" not in text or piece is None:
            out.append(text.encode("utf-8"))
        elif _BYTE_TOKEN.fullmatch(piece):
            out.append(bytes([int(_BYTE_TOKEN.fullmatch(piece).group(1), 16)]))
        elif all(c in decoder for c in piece):
            out.append(bytes(decoder[c] for c in piece))
        else:
            out.append(text.encode("utf-8"))
    return out


class ContentMemo:
    """A small LRU keyed by the CONTENT of ``input_ids`` (and extra hashable parts): a pure function of the ids
    is computed once per distinct history. Speculative decoding asks for the same prefixes twice — the edge's
    draft step j and the cloud's verification slot j see committed + draft[:j] — so the second is a lookup."""

    def __init__(self, size: int = 32):
        self.size, self.entries = size, OrderedDict()

    def get(self, input_ids: torch.Tensor, extra: tuple, compute):
        key = (tuple(input_ids.shape), str(input_ids.device), *extra, input_ids.cpu().numpy().tobytes())
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        value = self.entries[key] = compute()
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return value


def _string_hash(codes: list[int]) -> int:
    """Rolling hash of a character string, its length folded in (64-bit wrap, as torch computes it)."""
    value = len(codes)
    for code in codes:
        value = (value * HASH_BASE + code) & 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def _compact(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(batch, n) → the kept values moved to the right end in order, −1 to their left (right-aligned)."""
    order = torch.sort(keep.to(torch.int8), dim=1, stable=True).indices
    return torch.where(keep.gather(1, order), values.gather(1, order), -1)


def _shift(values: torch.Tensor, by: int) -> torch.Tensor:
    """values[:, i + by] at i (−1 past the end)."""
    return torch.nn.functional.pad(values[:, by:], (0, by), value=-1)


def utf8_decode(stream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-aligned byte streams (batch, n), −1 padded → (characters (batch, n) right-aligned, −1 padded;
    pending prefix (batch,) code bits of an incomplete last character; missing (batch,) bytes it still needs)."""
    lead_length = torch.where(stream < 0, 0, torch.where(stream < 0x80, 1, torch.where(
        stream >= 0xF0, 4, torch.where(stream >= 0xE0, 3, torch.where(stream >= 0xC0, 2, 0)))))
    follow = [_shift(stream, j) for j in (1, 2, 3)]
    is_cont = [(b >= 0x80) & (b < 0xC0) for b in follow]
    payload = [b & 0x3F for b in follow]
    masks = torch.tensor([0, 0x7F, 0x1F, 0x0F, 0x07], device=stream.device)
    first_bits = stream.clamp(min=0) & masks[lead_length]
    code, complete, present = first_bits.clone(), lead_length > 0, torch.ones_like(stream)
    for j in range(3):
        needed = lead_length > j + 1
        code = torch.where(needed, (code << 6) | torch.where(is_cont[j], payload[j], 0), code)
        ok = ~needed | is_cont[j]
        complete &= ok
        present += (needed & is_cont[j] & (present == j + 1)).long()
    chars = _compact(code, complete)
    # the last lead byte of each row, if its character runs past the end of the stream, is pending
    positions = torch.arange(stream.shape[1], device=stream.device).expand_as(stream)
    last_lead = torch.where(lead_length > 0, positions, -1).amax(1)
    at = last_lead.clamp(min=0)[:, None]
    length, have = lead_length.gather(1, at)[:, 0], present.gather(1, at)[:, 0]
    missing = torch.where((last_lead >= 0) & (have < length) & (have == stream.shape[1] - last_lead), length - have, 0)
    prefix = torch.where(missing > 0, code.gather(1, at)[:, 0], 0)  # the missing bits are already zero
    return chars, prefix, missing


@dataclass(frozen=True)
class History:
    """The decoded text of a batch of ``input_ids``: ``chars`` (batch, n) every complete character and ``cjk``
    (batch, n) its CJK characters only (both right-aligned, −1 padded); ``last_char`` (batch,) the last complete
    non-space character; ``pending_prefix`` / ``pending_missing`` (batch,) an incomplete last character;
    ``cjk_since_mark`` (batch,) CJK characters after the last punctuation mark (a pending CJK fragment counts)."""

    chars: torch.Tensor
    cjk: torch.Tensor
    last_char: torch.Tensor
    pending_prefix: torch.Tensor
    pending_missing: torch.Tensor
    cjk_since_mark: torch.Tensor

    def ngram_hashes(self, n: int) -> torch.Tensor:
        """(batch, windows) hashes of every CJK n-gram written (−1 padded windows excluded: their hash is −1)."""
        windows = self.cjk.unfold(1, n, 1) if self.cjk.shape[1] >= n else self.cjk[:, :0, None].expand(-1, -1, n)
        value = torch.full(windows.shape[:2], n, dtype=torch.long, device=windows.device)
        for j in range(n):
            value = value * HASH_BASE + windows[..., j]
        return torch.where((windows >= 0).all(-1), value, -1)


@dataclass(frozen=True)
class TokenClasses:
    """Per-id facts as (vocab,) tensors, built once per tokenizer (:meth:`from_tokenizer`).

    Token level (stopping, the S4 density gate): ``cjk`` content token (≥ 1 CJK character, no mark); ``punct`` /
    ``comma`` / ``period`` / ``sentence_end`` contains such a mark; ``n_chars`` / ``n_punct_chars`` characters
    and mark characters it spells (a byte fragment that starts a character counts as one); ``point_only``,
    ``digit_end``, ``digit_point``: the decimal-point rule of :meth:`sentence_ends`.
    Character level (the processors): ``bytes`` (vocab, MAX_TOKEN_BYTES) UTF-8, −1 padded; ``first_char`` the
    first non-space character (−1 when the id starts inside a character); ``lead_cont`` / ``cont_bits`` the
    continuation bytes it starts with and their bits; ``cjk_first`` / ``cjk_second`` its first two CJK
    characters; ``cjk_hash`` / ``cjk_count`` the hash and length of its CJK string (first 4 characters);
    ``inner_repeat`` it spells two identical CJK characters in a row (哈哈); ``cjk_lead`` CJK characters before
    its first mark (all of them when it has none). Sparse index lists, so a rule touches only the ids it can
    concern: ``fragment_ids`` (start inside a character), ``cjk_ids`` (spell a CJK character), ``pair_ids``
    (spell two). ``texts``: what each id decodes to.
    """

    texts: tuple[str, ...]
    cjk: torch.Tensor
    punct: torch.Tensor
    comma: torch.Tensor
    period: torch.Tensor
    sentence_end: torch.Tensor
    n_chars: torch.Tensor
    n_punct_chars: torch.Tensor
    point_only: torch.Tensor
    digit_end: torch.Tensor
    digit_point: torch.Tensor
    bytes: torch.Tensor
    first_char: torch.Tensor
    first_is_cjk: torch.Tensor
    lead_cont: torch.Tensor
    cont_bits: torch.Tensor
    cjk_first: torch.Tensor
    cjk_second: torch.Tensor
    cjk_hash: torch.Tensor
    cjk_count: torch.Tensor
    inner_repeat: torch.Tensor
    cjk_lead: torch.Tensor
    fragment_ids: torch.Tensor
    cjk_ids: torch.Tensor
    pair_ids: torch.Tensor
    _fitted: dict = field(default_factory=dict, compare=False, repr=False)  # (name, vocab, device) -> tensor
    _histories: ContentMemo = field(default_factory=ContentMemo, compare=False, repr=False)

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> "TokenClasses":
        return cls.from_bytes(token_bytes(tokenizer))

    @classmethod
    def from_texts(cls, texts: list[str]) -> "TokenClasses":
        """Classes from each id's text (``texts[i]`` is what id ``i`` spells): a character-level vocabulary."""
        return cls.from_bytes([t.encode("utf-8") for t in texts])

    @classmethod
    def from_bytes(cls, pieces: list[bytes]) -> "TokenClasses":
        texts = [p.decode("utf-8", errors="ignore") for p in pieces]
        own = [_own_characters(p) for p in pieces]  # complete characters after any leading continuation bytes

        def flags(rule) -> torch.Tensor:
            return torch.tensor([bool(rule(t)) for t in texts], dtype=torch.bool)

        def longs(values) -> torch.Tensor:
            return torch.tensor(list(values), dtype=torch.long)

        punct = flags(lambda t: any(c in PUNCTUATION_MARKS for c in t))
        cjk_strings = [[ord(c) for c in chars if is_cjk_char(c)] for chars in own]
        padded = torch.full((len(pieces), MAX_TOKEN_BYTES), -1, dtype=torch.int16)
        for i, piece in enumerate(pieces):
            cut = piece[:MAX_TOKEN_BYTES]
            padded[i, : len(cut)] = torch.tensor(list(cut), dtype=torch.int16)
        lead_cont = [_leading_continuations(p) for p in pieces]
        nonzero = lambda flags: torch.tensor([i for i, f in enumerate(flags) if f], dtype=torch.long)  # noqa: E731
        return cls(
            texts=tuple(texts),
            cjk=flags(lambda t: any(is_cjk_char(c) for c in t)) & ~punct,
            punct=punct,
            comma=flags(lambda t: any(c in COMMA_LIKE_MARKS for c in t)),
            period=flags(lambda t: any(c in PERIOD_MARKS for c in t)),
            sentence_end=flags(lambda t: any(c in SENTENCE_END_MARKS for c in t)),
            n_chars=longs(sum(1 for b in p if b < 0x80 or b >= 0xC0) for p in pieces),
            n_punct_chars=longs(sum(c in PUNCTUATION_MARKS for c in t) for t in texts),
            point_only=flags(lambda t: "." in t and "。" not in t),
            digit_end=flags(lambda t: t[-1:].isascii() and t[-1:].isdigit()),
            digit_point=flags(lambda t: len(t) > 1 and t.endswith(".") and t[-2].isdigit()),
            bytes=padded,
            first_char=longs(-1 if n else next((ord(c) for c in chars if not c.isspace()), -1)
                             for n, chars in zip(lead_cont, own)),
            first_is_cjk=torch.tensor([n == 0 and bool(chars.strip()) and is_cjk_char(chars.strip()[0])
                                       for n, chars in zip(lead_cont, own)], dtype=torch.bool),
            lead_cont=longs(lead_cont),
            cont_bits=longs(_continuation_bits(p, n) for p, n in zip(pieces, lead_cont)),
            cjk_first=longs(s[0] if s else -1 for s in cjk_strings),
            cjk_second=longs(s[1] if len(s) > 1 else -1 for s in cjk_strings),
            cjk_hash=longs(_string_hash(s[:4]) if s else 0 for s in cjk_strings),
            cjk_count=longs(min(len(s), 4) for s in cjk_strings),
            inner_repeat=torch.tensor([_has_adjacent_repeat(chars) for chars in own], dtype=torch.bool),
            cjk_lead=longs(_cjk_before_first_mark(t) for t in texts),
            fragment_ids=nonzero(n > 0 for n in lead_cont),
            cjk_ids=nonzero(len(c) > 0 for c in cjk_strings),
            pair_ids=nonzero(len(c) > 1 for c in cjk_strings),
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
            fill = -1 if name in ("first_char", "cjk_first", "cjk_second") else 0
            self._fitted[key] = torch.nn.functional.pad(values, (0, vocab_size - values.shape[0]), value=fill)
        return self._fitted[key]

    def lookup(self, name: str, input_ids: torch.Tensor) -> torch.Tensor:
        """Field ``name`` at each id of ``input_ids`` (ids beyond the tokenizer read as padding: False / 0 / −1)."""
        values = getattr(self, name).to(input_ids.device)
        inside = (input_ids < values.shape[0])
        picked = values[input_ids.clamp(max=values.shape[0] - 1)]
        if picked.ndim > inside.ndim:
            inside = inside[..., None]
        return torch.where(inside, picked, -1 if name == "bytes" else 0).to(values.dtype)

    def history(self, input_ids: torch.Tensor) -> History:
        """The decoded history of ``input_ids`` (batch, seq), memoised by content (:class:`ContentMemo`): every
        processor of a stack asks for it in turn, and the verification slots ask again for the draft's."""
        return self._histories.get(input_ids, (), lambda: self._decode_history(input_ids))

    def _decode_history(self, input_ids: torch.Tensor) -> History:
        stream = self.lookup("bytes", input_ids).long().flatten(1)  # (batch, seq · MAX_TOKEN_BYTES)
        chars, prefix, missing = utf8_decode(_compact(stream, stream >= 0))
        marks = torch.zeros_like(chars, dtype=torch.bool)
        for mark in PUNCTUATION_MARKS:
            marks |= chars == ord(mark)
        cjk_flags = is_cjk_code(chars)
        positions = torch.arange(chars.shape[1], device=chars.device).expand_as(chars)
        last_mark = torch.where(marks, positions, -1).amax(1, keepdim=True)
        # a pending fragment is a CJK character when every character it could become is one
        pending_cjk = (missing > 0) & is_cjk_code(prefix) & is_cjk_code(prefix + (1 << (6 * missing)) - 1)
        spaces = (chars == ord(" ")) | (chars == ord("\n")) | (chars == ord("\t")) | (chars == 0x3000)
        visible = _compact(chars, (chars >= 0) & ~spaces)
        return History(chars=chars, cjk=_compact(chars, cjk_flags), last_char=visible[:, -1],
                       pending_prefix=prefix, pending_missing=missing,
                       cjk_since_mark=(cjk_flags & (positions > last_mark)).sum(1) + pending_cjk.long())

    def fragment_first_chars(self, history: History) -> torch.Tensor:
        """(batch, fragments) the character each of :attr:`fragment_ids` completes with the history's pending
        fragment (−1 where it does not fit)."""
        device = history.chars.device
        lead = self.lead_cont[self.fragment_ids].to(device)[None, :]
        completed = history.pending_prefix[:, None] | self.cont_bits[self.fragment_ids].to(device)[None, :]
        return torch.where(lead == history.pending_missing[:, None], completed, -1)

    def cjk_since_punctuation(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch,) CJK characters written since the last punctuation mark (over the whole history if none)."""
        return self.history(input_ids).cjk_since_mark

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


def _leading_continuations(piece: bytes) -> int:
    """How many UTF-8 continuation bytes (0x80–0xBF) the id starts with (at most 3)."""
    count = 0
    while count < min(len(piece), 3) and 0x80 <= piece[count] < 0xC0:
        count += 1
    return count


def _continuation_bits(piece: bytes, count: int) -> int:
    value = 0
    for byte in piece[:count]:
        value = (value << 6) | (byte & 0x3F)
    return value


def _own_characters(piece: bytes) -> str:
    """The complete characters an id spells by itself: leading continuation bytes and a cut last character
    dropped."""
    return piece[_leading_continuations(piece):].decode("utf-8", errors="ignore")


def _has_adjacent_repeat(chars: str) -> bool:
    visible = [c for c in chars if not c.isspace()]
    return any(a == b and is_cjk_char(a) for a, b in zip(visible, visible[1:]))


def _cjk_before_first_mark(text: str) -> int:
    cut = min((text.find(m) for m in PUNCTUATION_MARKS if m in text), default=len(text))
    return sum(is_cjk_char(c) for c in text[:cut])
