"""Concept-first decoding (SPEC P8): ``generate(u)`` plans typed concepts, then executes them into text.

``plan`` decodes every concept type at once (v3.1): each step feeds one token per type (or 1 + n with the
multi-token-prediction heads) into the planner's KV cache, where a type sees u and its own past only. A type
ends at its ``<eos>`` or at its max length. ``execute`` prefills the executor with the concept-only prefix
and decodes text token by token with a KV cache, through a standard ``LogitsProcessorList`` built from the
``GenerationConfig`` by transformers itself (temperature, top-k, top-p, repetition penalty, no_repeat_ngram_size,
min_new_tokens, …) plus any user processors; ``cover_plan`` adds :class:`PlanCoverageLogitsProcessor`, which lets
a row end only once its text holds every text concept of its plan (lexically constrained stopping).
"""

from __future__ import annotations

import copy

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, GenerationMixin, LogitsProcessor, LogitsProcessorList
from transformers.cache_utils import DynamicCache
from transformers.utils import ModelOutput

from .configuration_planner import CONCEPT_EOS, CONCEPT_PAD, NUM_CONCEPT_SPECIALS
from .pointer_generator import write

DEFAULT_MAX_NEW_TOKENS = 64


@dataclass
class PlanAndExecuteOutput(ModelOutput):
    """``generate(..., return_concepts=True)``: the text ids and the plan they were written from (P8)."""

    sequences: torch.LongTensor | None = None  # (batch, new tokens), padded after </s>
    concept_ids: torch.LongTensor | None = None  # (batch, types, max length), <pad> after each type's end


def choose(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int | None,
           generator: torch.Generator | None) -> torch.Tensor:
    """argmax, or a sample from softmax(logits / temperature) restricted to the top k; over the last dim."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)
    flat = logits.flatten(0, -2).softmax(-1)
    return torch.multinomial(flat, 1, generator=generator).view(logits.shape[:-1])


def diverse(logits: torch.Tensor, penalty: float) -> torch.Tensor:
    """One step of diverse beam search with one beam per group: (batch, G, ...,  V) logits → (batch, G, ...)
    ids. Group g takes the argmax of its log-probabilities minus ``penalty`` × the number of groups before it that
    chose each id (Hamming diversity); group 0 is greedy."""
    logp = logits.float().log_softmax(-1)
    chosen = torch.zeros_like(logp[:, 0])  # (batch, ..., V) how many earlier groups chose each id
    ids = []
    for group in range(logp.shape[1]):
        best = (logp[:, group] - penalty * chosen).argmax(-1)
        chosen = chosen.scatter_add(-1, best[..., None], torch.ones_like(chosen[..., :1]))
        ids.append(best)
    return torch.stack(ids, 1)


def process_concepts(processors: LogitsProcessorList, columns: list[torch.Tensor], scores: torch.Tensor) -> torch.Tensor:
    """``processors`` on one planning step's scores (batch, types, 1, V): each type is a row whose ``input_ids`` are
    its concepts so far (``columns``, each (batch, types))."""
    b, k, _, v = scores.shape
    history = torch.stack(columns, -1) if columns else scores.new_zeros(b, k, 0, dtype=torch.long)
    return processors(history.flatten(0, 1), scores.reshape(b * k, v)).view(b, k, 1, v)


def split_words(concepts: list[int], separator: int) -> list[tuple[int, ...]]:
    """Concept ids split at ``separator`` into words, the last one as far as it goes (empty after a separator)."""
    words = [[]]
    for concept in concepts:
        if concept == separator:
            words.append([])
        else:
            words[-1].append(concept)
    return [tuple(word) for word in words]


class WordChoiceLogitsProcessor(LogitsProcessor):
    """Plans made of whole candidate words, each named at most once (constrained decoding over a trie of words).

    ``words``: per planned row (batch · types, as ``process_concepts`` lays them out) its candidate words as tuples
    of concept ids, or ``None`` to leave the row free. At a word's start a row may name the first concept of a word
    it has not named yet, or end; inside a word only a concept that continues some candidate; a finished word may be
    followed by the end, by ``separator`` while another word is left, or by more (a longer candidate extending it).
    """

    def __init__(self, words: list[list[tuple[int, ...]] | None], separator: int):
        self.words, self.separator = words, separator

    def allowed(self, row: int, history: list[int]) -> list[int] | None:
        """The concept ids row ``row`` may name after ``history`` (its concepts so far); ``None``: any."""
        words = self.words[row]
        if words is None:
            return None
        if CONCEPT_EOS in history or CONCEPT_PAD in history:  # ended: what it names is dropped
            return [CONCEPT_EOS]
        *named, partial = split_words(history, self.separator)
        open_words = [w for w in words if w not in named]
        next_ids = {w[len(partial)] for w in open_words if len(w) > len(partial) and w[:len(partial)] == partial}
        if not partial or partial in open_words:  # a separator only where another word may follow
            next_ids |= {CONCEPT_EOS} | ({self.separator} if partial and len(open_words) > 1 else set())
        return sorted(next_ids) or [CONCEPT_EOS]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[0] != len(self.words):
            raise ValueError(f"WordChoiceLogitsProcessor holds words for {len(self.words)} rows, got "
                             f"{input_ids.shape[0]}")
        banned = torch.zeros_like(scores, dtype=torch.bool)
        for row, history in enumerate(input_ids.tolist()):
            allowed = self.allowed(row, history)
            if allowed is not None:
                banned[row] = True
                banned[row, allowed] = False
        return scores.masked_fill(banned, torch.finfo(scores.dtype).min)


class PlanCoverageLogitsProcessor(LogitsProcessor):
    """``eos_token_id`` is suppressed in every row whose text (``input_ids`` after its first ``prompt_length``
    columns) does not yet hold all of the row's ``required`` token ids (batch, R; negative entries require
    nothing): the text may not stop before its plan is written (P8). A pure function of ``input_ids``, so it runs
    in any ``generate(logits_processor=...)`` of a batch of ``len(required)`` rows (greedy or sampling). A row can
    still be cut by ``max_new_tokens``; nothing makes it write a missing token but its own scores."""

    def __init__(self, required: torch.Tensor, eos_token_id: int, prompt_length: int = 0):
        self.required, self.eos_token_id, self.prompt_length = required, eos_token_id, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[0] != self.required.shape[0]:
            raise ValueError(f"PlanCoverageLogitsProcessor holds {self.required.shape[0]} rows of required tokens, "
                             f"got a batch of {input_ids.shape[0]} (num_beams and num_return_sequences must be 1)")
        required = self.required.to(input_ids.device)
        text = input_ids[:, self.prompt_length:]
        held = (text[:, :, None] == required[:, None, :]).any(1) | (required < 0)  # (batch, R)
        missing = ~held.all(1)
        scores = scores.clone()
        scores[missing, self.eos_token_id] = torch.finfo(scores.dtype).min
        return scores


class PlannerExecutorGenerationMixin(GenerationMixin):
    """``plan`` (P1, P5), ``execute`` (P3) and ``generate`` = plan then execute (P8)."""

    @torch.no_grad()
    def plan(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, do_sample: bool = False,
             temperature: float = 1.0, top_k: int | None = None, use_mtp: bool = False,
             generator: torch.Generator | None = None, num_beam_groups: int = 1,
             diversity_penalty: float = 0.0, no_repeat_concepts: bool = False,
             logits_processor: LogitsProcessorList | None = None, input_words: bool = False) -> torch.Tensor:
        """u → concept ids (batch, types, max length), ``<pad>`` after each type's end (its ``<eos>`` dropped).

        ``use_mtp`` accepts the multi-token-prediction heads' guesses as they are (1 + n tokens per step).
        ``num_beam_groups`` G > 1: diverse beam search with G groups of one beam (greedy only, no MTP); returns
        (batch · G, types, max length), each example's G plans together, group 0 the greedy plan (``diverse``).
        A model trained straight-through or as a soft mixture plans as it was trained: ``relaxed_plan``'s ids
        (full length; ``do_sample`` = Gumbel-max sampling at temperature 1).
        ``no_repeat_concepts``: a type never names a concept it has already named (the keywords proposer's character
        plans never do: they keep first occurrences), the plan-side ``no_repeat_ngram_size=1``; the word separator
        (``plan_separator_id``) may repeat.
        ``logits_processor``: standard transformers processors on each type's next-concept scores, called with a
        (batch · types, concept vocab) row per type and that type's concepts so far as ``input_ids`` (batch · types,
        concepts so far; none at the first step). Concept ids are the planner's (``<eos>`` = ``CONCEPT_EOS``), so
        ``SequenceBiasLogitsProcessor({(CONCEPT_EOS,): -2.0})`` plans longer and
        ``MinLengthLogitsProcessor(3, CONCEPT_EOS)`` names at least 3 concepts per type.
        ``input_words``: every text type names only whole words of u, each at most once (``input_word_choices``).
        """
        if self.config.concept_gradient != "hard_em":
            self.check_relaxed_planning(temperature=temperature, top_k=top_k, use_mtp=use_mtp,
                                        num_beam_groups=num_beam_groups, no_repeat_concepts=no_repeat_concepts,
                                        logits_processor=bool(logits_processor), input_words=input_words)
            return self.relaxed_plan(input_ids, attention_mask, noise=do_sample, generator=generator).concept_ids
        if num_beam_groups > 1:
            if do_sample or use_mtp:
                raise ValueError("num_beam_groups > 1 is a greedy search without the MTP heads: "
                                 f"got do_sample={do_sample}, use_mtp={use_mtp}")
            input_ids = input_ids.repeat_interleave(num_beam_groups, 0)
            attention_mask = None if attention_mask is None else attention_mask.repeat_interleave(num_beam_groups, 0)
        if input_words:
            logits_processor = LogitsProcessorList([*(logits_processor or []),
                                                    self.input_word_choices(input_ids, attention_mask)])
        k, device = self.config.num_concept_types, input_ids.device
        b = input_ids.shape[0]
        max_lengths = torch.tensor(self.config.concept_max_lengths, device=device)  # (types,)
        longest = int(max_lengths.max())
        heads = 1 + (len(self.mtp_proj) if use_mtp else 0)
        u = self.encode_input(input_ids, attention_mask)
        cache, key_valid, u_length = u.cache, u.valid, u.length
        key_type = torch.zeros(input_ids.shape[1], dtype=torch.long, device=device)
        fed = torch.arange(k, device=device)[None, :, None].expand(b, k, 1)  # the SEPs (planner table rows)
        columns, done, offset = [], torch.zeros(b, k, dtype=torch.bool, device=device), 0
        # (b, k, 1, V): what each type has named so far, when it may not name it again
        named = None if not no_repeat_concepts else torch.zeros(b, k, 1, self.max_type_vocab, dtype=torch.bool,
                                                                device=device)
        while len(columns) <= longest:
            n = fed.shape[2]
            hidden = self.planner_segments(fed, torch.arange(offset, offset + n, device=device), u_length, cache,
                                           key_valid, key_type)
            key_valid = torch.cat([key_valid, key_valid.new_ones(b, k * n)], 1)
            key_type = torch.cat([key_type, torch.arange(1, k + 1, device=device).repeat_interleave(n)])
            offset += n
            last = hidden[:, :, -1:]  # (batch, types, 1, hidden)
            guesses = torch.cat([last] + [proj(last) for proj in self.mtp_proj[: heads - 1]], 2)
            logits = self.planner_logits(guesses, u)  # (b, k, heads, V)
            accepted = []
            for head in range(heads):  # at most 1 + planner_mtp_heads columns per step
                scores = logits[:, :, head : head + 1]  # (b, k, 1, V)
                if named is not None:
                    scores = scores.masked_fill(named, torch.finfo(scores.dtype).min)
                if logits_processor:
                    scores = process_concepts(logits_processor, columns, scores)
                if num_beam_groups > 1:
                    new = diverse(scores.view(-1, num_beam_groups, *scores.shape[1:]), diversity_penalty).flatten(0, 1)
                else:
                    new = choose(scores, do_sample, temperature, top_k, generator)  # (b, k, 1)
                token = torch.where(len(columns) >= max_lengths, CONCEPT_EOS, new[..., 0])
                token = token.masked_fill(done, CONCEPT_PAD)
                if named is not None:  # specials (<eos>, <pad>) and the word separator may repeat
                    repeatable = token < NUM_CONCEPT_SPECIALS
                    if self.config.plan_separator_id is not None:
                        repeatable |= token == NUM_CONCEPT_SPECIALS + self.config.plan_separator_id
                    content = F.one_hot(token, self.max_type_vocab).bool() & ~repeatable[..., None]
                    named = named | content[:, :, None]
                done = done | (token == CONCEPT_EOS)
                columns.append(token)
                accepted.append(token)
                if len(columns) > longest:
                    break
            if bool(done.all()):
                break
            fed = self.planner_concept_ids(torch.stack(accepted, -1))
        concepts = torch.stack(columns, -1)[..., :longest]
        concepts = torch.nn.functional.pad(concepts, (0, longest - concepts.shape[-1]), value=CONCEPT_PAD)
        return concepts.masked_fill(concepts == CONCEPT_EOS, CONCEPT_PAD)

    def input_word_choices(self, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor | None = None) -> WordChoiceLogitsProcessor:
        """A :class:`WordChoiceLogitsProcessor` for planning from u: each text concept type names only whole words
        of u (its tokens split at ``plan_separator_id``), each at most once; other types are free."""
        if self.config.plan_separator_id is None or not self.config.text_concept_types:
            raise ValueError("planning from u's words needs text_concept_types and plan_separator_id (word plans), got "
                             f"text_concept_types={self.config.text_concept_types}, "
                             f"plan_separator_id={self.config.plan_separator_id}")
        separator = self.config.plan_separator_id + NUM_CONCEPT_SPECIALS
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        text = self.text_types(input_ids.device).tolist()
        words = []
        for tokens, valid in zip(input_ids.tolist(), mask.bool().tolist()):
            concepts = [t + NUM_CONCEPT_SPECIALS for t, keep in zip(tokens, valid) if keep]
            row = list(dict.fromkeys(word for word in split_words(concepts, separator) if word))  # once each
            words += [row if is_text else None for is_text in text]
        return WordChoiceLogitsProcessor(words, separator)

    def check_relaxed_planning(self, **options) -> None:
        """``ValueError`` naming the planning options a relaxed (``straight_through``/``soft_mixture``) planner
        does not take: it plans greedily or by Gumbel-max sampling, one concept per step, in one group."""
        defaults = {"temperature": 1.0, "top_k": None, "use_mtp": False, "num_beam_groups": 1,
                    "no_repeat_concepts": False, "logits_processor": False, "input_words": False}
        changed = sorted(name for name, value in options.items() if value != defaults[name])
        if changed:
            raise ValueError(f"a planner trained with concept_gradient={self.config.concept_gradient!r} plans as it "
                             f"was trained (greedy or do_sample); it does not take {changed}")

    def _logits_processors(self, config: GenerationConfig, extra: LogitsProcessorList | None,
                           device: torch.device) -> LogitsProcessorList:
        """transformers' own processors for ``config`` (repetition penalty, n-gram blocking, min_new_tokens, bad
        words, and temperature / top-k / top-p when sampling, …) with the user's ``extra`` ones; the text so far
        starts with its BOS, the processors' one-token "prompt". ``config`` gets its special-token tensors."""
        if (config.num_beams or 1) > 1:
            raise ValueError(f"the executor decodes greedily or by sampling: num_beams must be 1, got {config.num_beams}")
        self._prepare_special_tokens(config, device=device)
        return self._get_logits_processor(config, input_ids_seq_length=1, logits_processor=extra or LogitsProcessorList(),
                                          device=device)

    @torch.no_grad()
    def execute(self, concept_ids: torch.Tensor, generation_config: GenerationConfig | None = None,
                logits_processor: LogitsProcessorList | None = None, generator: torch.Generator | None = None,
                streamer=None, concept_embeds: torch.Tensor | None = None, cover_plan: bool = False,
                **kwargs) -> torch.Tensor:
        """Concepts → text ids (batch, new tokens) with the executor's KV cache (P3); rows pad after ``</s>``.
        ``streamer`` (a transformers ``BaseStreamer``, batch 1) gets every token as it is written;
        ``concept_embeds`` (batch, types, L, hidden) replaces the ids' rows (a soft-mixture plan); ``cover_plan``:
        a row may not write ``</s>`` before its text holds every text concept of its plan
        (:class:`PlanCoverageLogitsProcessor`)."""
        config = copy.deepcopy(generation_config or self.generation_config)
        unused = config.update(**kwargs)
        if unused:  # a misspelt max_new_tokens would otherwise be kept as an attribute and ignored
            raise ValueError(f"unknown generate arguments {sorted(unused)}; the executor takes GenerationConfig "
                             "fields (max_new_tokens, do_sample, temperature, top_k, top_p, …)")
        max_new = config.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        embeds, positions, _, valid, copy_tokens = self.executor_prefix(concept_ids, concept_embeds)
        processors = self._logits_processors(config, logits_processor, valid.device)
        if cover_plan:  # the text so far is BOS + new tokens: the processor skips the BOS
            processors.append(PlanCoverageLogitsProcessor(copy_tokens, self.config.eos_token_id, prompt_length=1))
        b, width = valid.shape
        if streamer is not None and b != 1:
            raise ValueError(f"streamers take one sequence (batch size 1), got a batch of {b}")
        # (batch, prefix + new); None when the prefix has no padding: decoding steps then need no mask
        key_valid = torch.cat([valid, valid.new_ones(b, max_new)], 1) if not bool(valid.all()) else None
        cache = DynamicCache(config=self.executor.config)
        hidden = self.executor_step(embeds, positions, valid, cache)
        slots = self.copy_slots(hidden, copy_tokens)  # what the copy head points at (executor_copy)
        checklist = slots is not None and self.copy_head.checklist is not None
        written = torch.zeros_like(copy_tokens, dtype=torch.bool)[:, None] if checklist else None  # (batch, 1, P)
        # what of the plan is left (batch, 1, hidden) changes only when a token writes a slot: recomputed then
        update = self.copy_head.checklist(slots, written) if checklist else None
        text = torch.full((b, 1), self.config.bos_token_id, dtype=torch.long, device=valid.device)
        unfinished = torch.ones(b, dtype=torch.bool, device=valid.device)
        for step in range(1, max_new + 1):
            scores = processors(text, self.text_logits(hidden[:, -1:], slots, written, update)[:, 0].float())
            token = choose(scores, bool(config.do_sample), 1.0, None, generator)
            token = token.masked_fill(~unfinished, self.config.pad_token_id)
            if checklist:
                now = write(written, token, slots)
                if not now.equal(written):
                    written, update = now, self.copy_head.checklist(slots, now)
            text = torch.cat([text, token[:, None]], 1)
            if streamer is not None:
                streamer.put(token.cpu())
            unfinished = unfinished & (token != self.config.eos_token_id)
            if step == max_new or not bool(unfinished.any()):
                break
            hidden = self.executor_step(self.text_embeds(token[:, None]), positions.new_full((b, 1), step),
                                        None if key_valid is None else key_valid[:, : width + step], cache)
        if streamer is not None:
            streamer.end()
        return text[:, 1:]

    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 concept_ids: torch.Tensor | None = None, generation_config: GenerationConfig | None = None,
                 logits_processor: LogitsProcessorList | None = None, return_concepts: bool = False,
                 plan_do_sample: bool = False, plan_temperature: float = 1.0, use_mtp: bool = False,
                 plan_no_repeat: bool = False, generator: torch.Generator | None = None, streamer=None,
                 cover_plan: bool = False, plan_logits_processor: LogitsProcessorList | None = None,
                 plan_input_words: bool = False, **kwargs):
        """Plan from u (unless ``concept_ids`` are given), then execute (P8). A soft-mixture model's executor
        reads its plan's soft embeddings, as in training (``relaxed_plan``). ``plan_no_repeat``: no type names a
        concept twice (``plan``'s ``no_repeat_concepts``); ``plan_logits_processor`` and ``plan_input_words`` go to
        ``plan`` (``logits_processor``, ``input_words``); ``cover_plan``: the text may not end before it holds
        every text concept of the plan (``execute``).

        Returns the text ids, or a :class:`PlanAndExecuteOutput` with the concepts when ``return_concepts``
        (or ``return_dict_in_generate``) is set.
        """
        return_dict = return_concepts or kwargs.pop("return_dict_in_generate", False)
        concept_embeds = None
        if concept_ids is None:
            if input_ids is None:
                raise ValueError("generate needs input_ids (u) to plan from, or concept_ids to execute")
            if self.config.concept_gradient == "soft_mixture":
                self.check_relaxed_planning(temperature=plan_temperature, use_mtp=use_mtp,
                                            no_repeat_concepts=plan_no_repeat,
                                            logits_processor=bool(plan_logits_processor),
                                            input_words=plan_input_words)
                with torch.no_grad():
                    concept_ids, concept_embeds = self.relaxed_plan(input_ids, attention_mask, noise=plan_do_sample,
                                                                    generator=generator)[:2]
            else:
                concept_ids = self.plan(input_ids, attention_mask, do_sample=plan_do_sample,
                                        temperature=plan_temperature, use_mtp=use_mtp, generator=generator,
                                        no_repeat_concepts=plan_no_repeat, logits_processor=plan_logits_processor,
                                        input_words=plan_input_words)
        sequences = self.execute(concept_ids, generation_config, logits_processor, generator, streamer,
                                 concept_embeds=concept_embeds, cover_plan=cover_plan, **kwargs)
        return PlanAndExecuteOutput(sequences=sequences, concept_ids=concept_ids) if return_dict else sequences
