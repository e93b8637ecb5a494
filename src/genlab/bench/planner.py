"""`genlab bench planner --task keywords|next_sentence`: what hard-EM concept-first decoding buys (SPEC B, P4–P7).

Two models are trained on the same (u, y) pairs of the task with the same batch, learning rate and number of
optimiser steps (a wall-clock cap is only a safety stop, and the steps done are recorded in "budget"): the
planner–executor (`genlab train planner`) and an AR Qwen2 of the same total parameter count trained on
p(y | u) (``u <sep> y </s>``, loss on y only). On held-out pairs (the validation split, by sentence):

- ``nll_zstar`` NLL(y | z*) per y token, z* from the E-step (which sees y: an oracle plan);
- ``nll_planner_z`` NLL(y | ẑ) with ẑ the planner's greedy plan from u (the deployable path); with the keywords
  proposer ``nll_u_plan`` beside it, NLL(y | u's own words as the plan) (the planner-free baseline below);
- ``nll_bound`` (−log p(y | z*) − log p(z* | u)) per y token, an upper bound on −log p(y | u);
- ``nll_ar`` the AR model's NLL(y | u); ``nll_ratio_vs_ar`` = nll_planner_z / nll_ar (the figure SPEC B names),
  with ``nll_zstar_ratio_vs_ar`` and ``nll_bound_ratio_vs_ar`` beside it;
- ``delta_nll_shuffle`` / ``_mask`` / ``_random``: NLL rise when z* is replaced (target ≥ 1 nat/token);
- ``concept_drop_50``: the P7 probe's rise when half the concepts are dropped;
- ``keyword_coverage`` / ``ar_keyword_coverage``: of u's keywords that y uses (u's "、"-separated words on the
  ``keywords`` task, u's characters otherwise), the share the greedy generation from u contains (CommonGen's
  coverage) — the planner–executor's and the AR model's;
- where that coverage is lost: ``oracle_keyword_coverage``, the same for the executor's greedy text from the
  proposer's full plan (an oracle: it sees y), and ``plan_precision`` / ``plan_recall``, the planner's greedy
  plan against that plan as sets of concepts (pooled over the examples);
- with the keywords proposer, the planner-free baseline the planner has to beat: ``u_plan_keyword_coverage``, the
  executor's greedy text from u's own characters as the plan (first occurrences, u's order, cut to the longest
  plan: a planner that drops nothing, distractors included), and ``u_plan_precision`` / ``u_plan_recall`` of
  that plan against the oracle plan;
- ``covered_<figure>`` for each of those four coverages: the same texts made to cover their plan (the executor
  may not write ``</s>`` before its text holds every text concept of its plan, ``PlanCoverageLogitsProcessor``;
  the AR model before it holds every character of the u plan, or, without the keywords proposer, is not
  measured), with ``<text>_chars``, the mean length in characters of each set of texts beside ``reference_chars``
  (y's): coverage bought with longer text shows there; ``<text>_split``, the share of keywords whose characters
  the free text holds but never as the word (lost to rendering, not to the plan);
- ``win_<source>``: the share of held-out E-steps whose z* came from each source;
- decoding options for the planner's plan (training unchanged): ``--plan-no-repeat``, ``--plan-input-words`` (only
  whole words of u, each once: ``plan(input_words=True)``) and ``--plan-eos-biases`` (a bias on the plan's
  ``<eos>``; of several, ``plan_eos_bias`` is the one whose plans give the lowest NLL(y | planner z) on
  ``--tune-pairs`` validation pairs that are not evaluated, each bias's NLL there in the config);
- with ``--concept-gradient straight_through|soft_mixture`` (no E-step, so no z*, bound or win rates): the NLL
  through the planner's own plan as the executor reads it in training (its ids, or its soft mixture), and the
  ΔNLLs and concept drop of that plan;
- ``executor_decode_ratio``: executor KV-cached greedy decoding tokens/s over a plain ``Qwen2ForCausalLM`` of
  the executor's size with an equally long prompt, loaded the same way (batch 1; ``_b16`` too), target ≥ 0.95;
  both write exactly 64 tokens, the executor's ``</s>`` held back by one transformers processor on either side
  (before, only the executor ran one: the plain model had no ``</s>``), timed back to back; the ratio is the
  median of the per-pair ratios.

The monitor curves of the planner run (P6) are plotted by ``genlab.report.plot_planner_monitors``;
`genlab bench planner` puts them beside the JSON as ``<json stem>_monitors.png``.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessorList, Qwen2ForCausalLM, SequenceBiasLogitsProcessor

from ..configuration_planner import (CONCEPT_EOS, CONCEPT_GRADIENTS, ESTEP_SELECTIONS, ESTEP_WARMUP_ENDS,
                                     NUM_CONCEPT_SPECIALS, PROPOSERS)
from ..generation_planner import PlanCoverageLogitsProcessor
from ..modeling_planner import PlannerExecutorModel, concept_slot_mask
from ..runs import read_manifest
from ..timing import paired_seconds
from ..tokenization import FIRST_ORDINARY_ID, load_tokenizer
from ..trainers.planner_baseline import ar_collate
from ..trainers.planner_data import TASKS, collate, run_pairs
from ..trainers.planner_estep import estep, input_plan, make_proposer, win_rates
from ..trainers.planner_monitors import delta_nll
from . import target, write_result
from .probe import concept_drop, training_plans

NEW_TOKENS = 64


@dataclass
class PlannerBenchConfig:
    """`genlab bench planner`: what to measure; the planner and its AR baseline are trained first when incomplete."""

    json: str | None = field(default=None, metadata={"help": "where to write the benchmark JSON"})
    task: str = field(default="next_sentence", metadata={"choices": list(TASKS), "help": "the (u, y) task"})
    run_dir: str | None = field(default=None, metadata={
        "help": "the planner run (default runs/bench/planner-<task>)"})
    ar_run_dir: str | None = field(default=None, metadata={
        "help": "the AR p(y|u) baseline run (default runs/bench/planner-<task>-ar)"})
    steps: int = field(default=500, metadata={"help": "optimiser steps for each model"})
    budget: float | None = field(default=None, metadata={"help": "safety cap on each training's wall clock (s)"})
    batch_size: int = field(default=16, metadata={"help": "training batch of both models"})
    concept_gradient: str = field(default="hard_em", metadata={
        "choices": list(CONCEPT_GRADIENTS),
        "help": "how the planner is trained: hard-EM, or (no E-step) straight-through / soft mixture"})
    concept_temperature: float = field(default=1.0, metadata={
        "help": "τ of the Gumbel-softmax plan (straight_through / soft_mixture only)"})
    proposer: str | None = field(default=None, metadata={
        "choices": list(PROPOSERS), "help": "E-step proposer (default: keywords on the keywords task)"})
    estep_selection: str = field(default="likelihood", metadata={"choices": list(ESTEP_SELECTIONS)})
    warmup_estep: int = field(default=250, metadata={"help": "W of the planner's E-step"})
    warmup_end: str = field(default="steps", metadata={
        "choices": list(ESTEP_WARMUP_ENDS), "help": "when the planner's plans join the E-step (steps: at W; gain)"})
    entropy_bonus: float = field(default=0.0, metadata={"help": "λ of the planner's entropy bonus (0: off)"})
    z_dropout: float = field(default=0.0, metadata={"help": "p of the executor's z-dropout (0: off)"})
    executor_copy: bool = field(default=False, metadata={
        "help": "give the executor a pointer-generator head over the plan's keywords"})
    planner_copy: bool = field(default=False, metadata={
        "help": "give the planner a pointer-generator head over u's tokens"})
    checklist: bool = field(default=False, metadata={
        "help": "the executor's copy head reads which plan keywords its text already holds"})
    plan_words: bool = field(default=False, metadata={
        "help": "keyword plans keep u's words whole, \"、\" between them (keywords proposer)"})
    input_plans: bool = field(default=False, metadata={
        "help": "the E-step also scores the plan of u itself (source 'input'; keywords proposer)"})
    unlikelihood: float = field(default=0.0, metadata={
        "help": "α of the token-level unlikelihood of already-written tokens in text and plans (0: off)"})
    plan_no_repeat: bool = field(default=False, metadata={
        "help": "evaluate with plans that name each concept once (plan's no_repeat_concepts; training unchanged)"})
    plan_input_words: bool = field(default=False, metadata={
        "help": "evaluate with plans made of whole words of u, each once (plan's input_words; word plans)"})
    plan_eos_biases: list[float] = field(default_factory=lambda: [0.0], metadata={
        "help": "biases on the plan's <eos> logit (< 0: longer plans); with several, the one with the lowest "
                "NLL(y | planner z) on --tune-pairs validation pairs that are not evaluated"})
    tune_pairs: int = field(default=256, metadata={"help": "validation pairs that choose the plan's <eos> bias"})
    diverse_beam: float = field(default=0.0, metadata={
        "help": "Hamming penalty of the E-step's diverse beam search over planner plans (0: off)"})
    prior_weight: float = field(default=1.0, metadata={"help": "β_max of the E-step score (SPEC P4: 1)"})
    keywords: int = field(default=8, metadata={"help": "longest keyword plan (concepts)"})
    max_text_length: int = field(default=48, metadata={"help": "longest y, in tokens"})
    eval_pairs: int = field(default=256, metadata={"help": "held-out pairs"})
    repeats: int = field(default=7, metadata={"help": "timed repeats per figure (median)"})
    seed: int = field(default=0, metadata={"help": "seed of training and evaluation"})

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.concept_gradient not in CONCEPT_GRADIENTS:
            raise ValueError(f"--concept-gradient must be one of {CONCEPT_GRADIENTS}, got {self.concept_gradient!r}")
        stem = "planner" if self.task == "next_sentence" else f"planner-{self.task}"
        self.run_dir = self.run_dir or f"runs/bench/{stem}"
        self.ar_run_dir = self.ar_run_dir or f"runs/bench/{stem}-ar"
        self.proposer = self.proposer or ("keywords" if self.task == "keywords" else "rare_characters")


@dataclass
class KeywordsBenchConfig(PlannerBenchConfig):
    """`genlab bench planner-keywords` = `genlab bench planner --task keywords` (its own results file)."""

    task: str = field(default="keywords", metadata={"choices": list(TASKS), "help": "the (u, y) task"})


def ar_nll_sum(ar, tokenizer, batch: dict) -> float:
    """The AR model's summed NLL of the batch's y given ``u <sep>``."""
    joined = ar_collate([{"input_ids": u[um.bool()].tolist() + [tokenizer.sep_token_id] + t[tm.bool()].tolist(),
                          "labels": [-100] * (int(um.sum()) + 1) + t[tm.bool()].tolist()}
                         for u, um, t, tm in zip(batch["input_ids"], batch["attention_mask"], batch["text_ids"],
                                                 batch["text_attention_mask"])])
    return float(ar(**joined).loss) * int(batch["text_attention_mask"].sum())


def summed_nll(model, batch: dict):
    """(z, embeds or None) → the executor's summed NLL of the batch's y given that plan."""
    return lambda z, embeds=None: float(model.executor_forward(z, batch["text_ids"], batch["text_attention_mask"],
                                                               embeds).token_nll.sum())


@torch.no_grad()
def held_out_figures(model, ar, tokenizer, batches: list[dict], step: int, plan_options: dict | None = None) -> dict:
    """Per-y-token NLLs of the planner–executor (z*, planner z, bound), the AR model, ΔNLL(z*) and the share of
    z* each E-step source won. ``plan_options``: keyword arguments of the planner's ``plan``."""
    proposer = make_proposer(model, tokenizer)
    generator = torch.Generator().manual_seed(0)
    wins: dict[str, float] = {}
    sums = dict.fromkeys(("nll_zstar", "nll_planner_z", "nll_bound", "nll_ar", "delta_nll_shuffle",
                          "delta_nll_mask", "delta_nll_random", "zstar_concepts"), 0.0)
    if model.config.proposer == "keywords":
        sums["nll_u_plan"] = 0.0
    tokens = 0
    for batch in batches:
        nll = summed_nll(model, batch)
        result = estep(model, proposer, batch, step, generator=generator)
        z_star = result.plans
        for name, rate in win_rates(result).items():
            wins[name] = wins.get(name, 0.0) + float(rate) * len(z_star)
        base = nll(z_star)
        sums["nll_zstar"] += base
        sums["nll_bound"] += base - float(model.planner_forward(batch["input_ids"], batch["attention_mask"], z_star).log_prob.sum())
        sums["nll_planner_z"] += nll(model.plan(batch["input_ids"], batch["attention_mask"], **(plan_options or {})))
        if "nll_u_plan" in sums:  # the planner-free plan: every word of u, in u's order
            sums["nll_u_plan"] += nll(input_plan(proposer, batch))
        for name, value in delta_nll(nll, z_star, model.config.concept_vocab_sizes, generator).items():
            sums[name] += value
        sums["zstar_concepts"] += float(concept_slot_mask(z_star).sum())
        sums["nll_ar"] += ar_nll_sum(ar, tokenizer, batch)
        tokens += int(batch["text_attention_mask"].sum())
    figures = {k: v / tokens for k, v in sums.items() if k != "zstar_concepts"}
    examples = sum(len(b["index"]) for b in batches)
    figures["zstar_concepts_per_example"] = sums["zstar_concepts"] / examples
    return {**figures, **{name: total / examples for name, total in wins.items()}}


@torch.no_grad()
def relaxed_figures(model, ar, tokenizer, batches: list[dict]) -> dict:
    """A straight-through / soft-mixture model read as it trains: NLL(y | its own noise-free plan) per y token (ids,
    or the soft mixture), the ΔNLLs of that plan (``delta_nll``: shuffled with its embeddings; all-``<mask>`` and
    random as ids) and the AR model's NLL."""
    generator = torch.Generator().manual_seed(0)
    sums = dict.fromkeys(("nll_planner_z", "nll_ar", "delta_nll_shuffle", "delta_nll_mask", "delta_nll_random"), 0.0)
    tokens = 0
    for batch in batches:
        nll = summed_nll(model, batch)
        plan, embeds = model.relaxed_plan(batch["input_ids"], batch["attention_mask"])[:2]
        sums["nll_planner_z"] += nll(plan, embeds)
        for name, value in delta_nll(nll, plan, model.config.concept_vocab_sizes, generator, embeds).items():
            sums[name] += value
        sums["nll_ar"] += ar_nll_sum(ar, tokenizer, batch)
        tokens += int(batch["text_attention_mask"].sum())
    return {k: v / tokens for k, v in sums.items()}


def keywords_of(u: str, y: str, task: str) -> list[str]:
    """u's keywords that y uses: its "、"-separated words on the keywords task, its characters otherwise."""
    units = u.split("、") if task == "keywords" else list(dict.fromkeys(u))
    return [w for w in units if w and w in y]


def coverage(keywords: list[list[str]], texts: list[str]) -> float:
    """Share of the keywords that occur in their generated text (CommonGen's coverage, pooled)."""
    hits = sum(w in text for words, text in zip(keywords, texts) for w in words)
    return hits / max(1, sum(len(words) for words in keywords))


def split_share(keywords: list[list[str]], texts: list[str]) -> float:
    """Share of the keywords whose characters all occur in their text but never as the word (pooled)."""
    split = sum(w not in text and all(c in text for c in w) for words, text in zip(keywords, texts) for w in words)
    return split / max(1, sum(len(words) for words in keywords))


def ar_texts(ar, tokenizer, batch: dict, new_tokens: int, required: torch.Tensor | None = None) -> torch.Tensor:
    """The AR model's greedy continuations of ``u <sep>`` (batch, new tokens); with ``required`` (batch, R) token
    ids it may not stop before it has written them all (``PlanCoverageLogitsProcessor``)."""
    prompts = [u[m.bool()].tolist() + [tokenizer.sep_token_id] for u, m in zip(batch["input_ids"], batch["attention_mask"])]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, prompt in enumerate(prompts):  # left padding: generation continues every row at the same column
        ids[i, width - len(prompt):], mask[i, width - len(prompt):] = torch.tensor(prompt), 1
    processors = LogitsProcessorList(
        [] if required is None else [PlanCoverageLogitsProcessor(required, tokenizer.eos_token_id, prompt_length=width)])
    continued = ar.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                            logits_processor=processors)
    return continued[:, width:]


def concept_set(plan: torch.Tensor, ignore: int | None = None) -> set[tuple[int, int]]:
    """One example's plan (types, L) → its content concepts but ``ignore`` as a set of (type, concept id)."""
    return {(k, int(c)) for k, ids in enumerate(plan) for c in ids[concept_slot_mask(ids)] if c != ignore}


def plan_overlap(plans: torch.Tensor, oracle: torch.Tensor, ignore: int | None = None) -> tuple[int, int, int]:
    """(concepts both plans hold, the planner's, the oracle's), summed over the batch of plans (batch, types, L);
    the concept ``ignore`` (a word separator) is not counted."""
    sets = [(concept_set(a, ignore), concept_set(b, ignore)) for a, b in zip(plans, oracle)]
    return sum(len(a & b) for a, b in sets), sum(len(a) for a, _ in sets), sum(len(b) for _, b in sets)


def planned_concepts(model, batch: dict, plan_options: dict | None) -> torch.Tensor | None:
    """The planner's plan of ``batch`` under ``plan_options`` (``plan``'s keyword arguments), or ``None`` for a
    soft-mixture model, whose ``generate`` plans itself (its executor reads soft embeddings)."""
    if model.config.concept_gradient == "soft_mixture":
        return None
    return model.plan(batch["input_ids"], batch["attention_mask"], **(plan_options or {}))


@torch.no_grad()
def generations(model, ar, tokenizer, batch: dict, proposer, new_tokens: int,
                plan_options: dict | None = None) -> tuple[dict[str, list[str]], dict]:
    """Every greedy text the coverage figures read, by name, and the plans they come from: the planner–executor's
    from u (``planner``), the executor's from the ``oracle`` plan and, with the keywords proposer, from the
    ``u_plan``; each also ``_covered`` (it may not stop before its plan is written); the AR model's (``ar``, and
    ``ar_covered``: it may not stop before it has written the u plan's characters)."""
    decode = lambda ids: [t.replace(" ", "") for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]  # noqa: E731
    concepts = planned_concepts(model, batch, plan_options)
    planned = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=new_tokens, do_sample=False,
                             return_concepts=True, concept_ids=concepts)
    plans = {"planner": planned.concept_ids, "oracle": proposer(batch)[:, -1]}  # the oracle's longest granularity
    if model.config.proposer == "keywords":  # u's characters are a plan only for text keyword concepts
        plans["u_plan"] = input_plan(proposer, batch)
    texts = {"planner": decode(planned.sequences), "ar": decode(ar_texts(ar, tokenizer, batch, new_tokens)),
             "planner_covered": decode(model.generate(batch["input_ids"], batch["attention_mask"], cover_plan=True,
                                                      max_new_tokens=new_tokens, do_sample=False,
                                                      concept_ids=concepts))}
    for name in plans.keys() - {"planner"}:
        for cover in (False, True):
            texts[name + "_covered" * cover] = decode(model.execute(plans[name], max_new_tokens=new_tokens,
                                                                    do_sample=False, cover_plan=cover))
    if "u_plan" in plans:
        required = model.executor_prefix(plans["u_plan"]).copy_tokens
        texts["ar_covered"] = decode(ar_texts(ar, tokenizer, batch, new_tokens, required))
    return texts, plans


COVERAGE_FIGURES = {"planner": "keyword_coverage", "ar": "ar_keyword_coverage", "oracle": "oracle_keyword_coverage",
                    "u_plan": "u_plan_keyword_coverage"}


@torch.no_grad()
def coverage_figures(model, ar, tokenizer, batches: list[dict], task: str, new_tokens: int,
                     plan_options: dict | None = None) -> tuple[dict, list]:
    """keyword_coverage / ar_keyword_coverage over the held-out pairs, where the planner–executor loses it (the
    executor from the oracle plan; the planner's plan against it), the same with every text made to cover its
    plan, mean text lengths, and a few (u, y, planner, AR) examples."""
    proposer = make_proposer(model, tokenizer)
    separator = None if model.config.plan_separator_id is None else NUM_CONCEPT_SPECIALS + model.config.plan_separator_id
    keywords, references, texts, shown = [], [], defaultdict(list), []
    overlap = defaultdict(lambda: torch.zeros(3))
    for batch in batches:
        us = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
        ys = tokenizer.batch_decode(batch["text_ids"], skip_special_tokens=True)
        generated, plans = generations(model, ar, tokenizer, batch, proposer, new_tokens, plan_options)
        for name, made in generated.items():
            texts[name] += made
        for name in plans.keys() - {"oracle"}:
            overlap[name] += torch.tensor(plan_overlap(plans[name], plans["oracle"], separator))
        for i, (u, y) in enumerate(zip(us, ys)):
            u, y = u.replace(" ", ""), y.replace(" ", "")
            keywords.append(keywords_of(u, y, task))
            references.append(y)
            if len(shown) < 8:
                shown.append({"u": u, "y": y, "planner_executor": generated["planner"][i], "ar": generated["ar"][i]})
    figures = {"keywords_per_example": sum(map(len, keywords)) / max(1, len(keywords)),
               "reference_chars": sum(map(len, references)) / max(1, len(references))}
    for name, made in texts.items():
        plain = name.removesuffix("_covered")
        figures[("covered_" if name != plain else "") + COVERAGE_FIGURES[plain]] = coverage(keywords, made)
        figures[f"{name}_chars"] = sum(map(len, made)) / max(1, len(made))
        if name == plain:
            figures[f"{name}_split"] = split_share(keywords, made)
    for name, (both, mine, theirs) in overlap.items():
        label = "plan" if name == "planner" else name  # plan_precision, u_plan_precision
        figures[f"{label}_precision"], figures[f"{label}_recall"] = both / max(1, mine), both / max(1, theirs)
    return figures, shown


def decode_ratio(model: PlannerExecutorModel, concepts: torch.Tensor, batch: int, repeats: int) -> tuple[float, float, float]:
    """(executor tok/s, plain Qwen2 tok/s, median paired speed ratio) for greedy decoding of NEW_TOKENS tokens."""
    concepts = concepts[:1].expand(batch, -1, -1)
    prefix_length = model.executor_prefix(concepts).valid.shape[1]
    config = model.config.stack_config("executor", 1024)
    config.tie_word_embeddings = True
    with tempfile.TemporaryDirectory() as tmp:  # loaded like the executor: weights from safetensors, not fresh
        Qwen2ForCausalLM(config).save_pretrained(tmp)
        plain = Qwen2ForCausalLM.from_pretrained(tmp).eval()
    prompt = torch.randint(FIRST_ORDINARY_ID, config.vocab_size, (batch, prefix_length),
                           generator=torch.Generator().manual_seed(0))
    # both write NEW_TOKENS tokens, </s> held back by one transformers processor on each side: min_new_tokens
    # for the executor (its text starts at its BOS), min_length for generate (its min_new_tokens would add both)
    fixed = dict(max_new_tokens=NEW_TOKENS, do_sample=False)
    with torch.no_grad():
        executor_s, plain_s, ratio = paired_seconds(
            lambda: model.execute(concepts, min_new_tokens=NEW_TOKENS, **fixed),
            lambda: plain.generate(prompt, attention_mask=torch.ones_like(prompt), pad_token_id=0,
                                   eos_token_id=model.config.eos_token_id, min_length=prefix_length + NEW_TOKENS,
                                   **fixed),
            repeats=repeats)
    return batch * NEW_TOKENS / executor_s, batch * NEW_TOKENS / plain_s, ratio


def batches_of(pairs) -> list[dict]:
    """Collated batches of 32 pairs, in order."""
    return [collate([pairs[j] for j in range(i, min(i + 32, len(pairs)))]) for i in range(0, len(pairs), 32)]


def eos_bias_processor(bias: float) -> LogitsProcessorList | None:
    """``bias`` added to the plan's ``<eos>`` logit (transformers' ``SequenceBiasLogitsProcessor``); 0: none."""
    return LogitsProcessorList([SequenceBiasLogitsProcessor({(CONCEPT_EOS,): float(bias)})]) if bias else None


def measured_plan_options(result: dict) -> dict:
    """``model.plan`` options of the decoding a planner bench ``result`` (its JSON) measured: u's whole words when
    it planned them, and the ``<eos>`` bias it chose."""
    return {"input_words": bool(result["config"].get("plan_input_words", False)),
            "logits_processor": eos_bias_processor(result["figures"].get("plan_eos_bias", 0.0))}


@torch.no_grad()
def tune_eos_bias(model, batches: list[dict], biases: list[float], plan_options: dict) -> tuple[float, dict]:
    """The bias on the plan's ``<eos>`` whose plans give the lowest NLL(y | planner z) per y token over ``batches``
    (tuning pairs; the first of equals), and that NLL for every bias."""
    tokens = sum(int(batch["text_attention_mask"].sum()) for batch in batches)
    sweep = {}
    for bias in biases:
        options = {**plan_options, "logits_processor": eos_bias_processor(bias)}
        sweep[str(bias)] = sum(summed_nll(model, batch)(model.plan(batch["input_ids"], batch["attention_mask"],
                                                                   **options)) for batch in batches) / tokens
    return min(biases, key=lambda bias: sweep[str(bias)]), sweep


def run(args: PlannerBenchConfig) -> dict:
    """Measure the planner run against its AR baseline (both complete: see ``genlab.prepare``)."""
    manifest, ar_manifest = read_manifest(args.run_dir), read_manifest(args.ar_run_dir)
    model = PlannerExecutorModel.from_pretrained(args.run_dir).eval()
    tokenizer = load_tokenizer(args.run_dir)
    ar = Qwen2ForCausalLM.from_pretrained(args.ar_run_dir).eval()

    pairs = run_pairs(manifest, "validation", tokenizer, model.config).shuffle(seed=args.seed)
    evaluated = min(args.eval_pairs, len(pairs))
    batches = batches_of(pairs.select(range(evaluated)))
    hard_em = model.config.concept_gradient == "hard_em"
    plan_options = {"no_repeat_concepts": args.plan_no_repeat, "input_words": args.plan_input_words}
    if not hard_em:
        model.check_relaxed_planning(**plan_options, logits_processor=args.plan_eos_biases != [0.0])
    eos_bias, eos_sweep = args.plan_eos_biases[0], {}
    if len(args.plan_eos_biases) > 1:  # chosen on validation pairs that are not evaluated
        tuning = pairs.select(range(evaluated, min(evaluated + args.tune_pairs, len(pairs))))
        if not len(tuning):
            raise ValueError(f"--plan-eos-biases with several values needs validation pairs beyond --eval-pairs "
                             f"{args.eval_pairs}: the split holds {len(pairs)}")
        eos_bias, eos_sweep = tune_eos_bias(model, batches_of(tuning), args.plan_eos_biases, plan_options)
    plan_options["logits_processor"] = eos_bias_processor(eos_bias)
    figures = (held_out_figures(model, ar, tokenizer, batches, manifest["steps"], plan_options) if hard_em
               else relaxed_figures(model, ar, tokenizer, batches))
    figures["plan_eos_bias"] = eos_bias
    figures["nll_ratio_vs_ar"] = figures["nll_planner_z"] / figures["nll_ar"]
    if hard_em:
        figures["nll_zstar_ratio_vs_ar"] = figures["nll_zstar"] / figures["nll_ar"]
        figures["nll_bound_ratio_vs_ar"] = figures["nll_bound"] / figures["nll_ar"]
    covered, examples = coverage_figures(model, ar, tokenizer, batches, manifest.get("task", "next_sentence"),
                                         args.max_text_length, plan_options)
    figures.update(covered)
    figures["concept_drop_50"] = concept_drop(model, training_plans(model, make_proposer(model, tokenizer)),
                                              batches[:2], [0.5], args.seed)["delta_nll"]["0.5"]
    concepts = model.plan(batches[0]["input_ids"][:1], batches[0]["attention_mask"][:1], **plan_options)
    figures["executor_tok_s_b1"], figures["plain_tok_s_b1"], figures["executor_decode_ratio"] = decode_ratio(
        model, concepts, 1, args.repeats)
    figures["executor_tok_s_b16"], figures["plain_tok_s_b16"], figures["executor_decode_ratio_b16"] = decode_ratio(
        model, concepts, 16, args.repeats)
    figures["monitor_warnings"] = len(manifest["monitor_warnings"])
    figures["train_steps"], figures["ar_train_steps"] = manifest["steps"], ar_manifest["steps"]

    result = write_result(
        args.json, "planner-keywords" if manifest.get("task") == "keywords" else "planner",
        config={"run_dir": args.run_dir, "ar_run_dir": args.ar_run_dir, "task": manifest.get("task"),
                "eval_pairs": evaluated, "validation_pairs": len(pairs), "split": "validation",
                "planner_parameters": manifest["parameters"], "ar_parameters": ar_manifest["parameters"],
                "ar_layers": ar.config.num_hidden_layers, "planner_config": model.config.to_diff_dict(),
                "new_tokens": NEW_TOKENS, "repeats": args.repeats, "plan_no_repeat": args.plan_no_repeat,
                "plan_input_words": args.plan_input_words, "plan_eos_biases": args.plan_eos_biases,
                "plan_eos_bias_tuning_nll": eos_sweep,
                "monitor_warning_rules": sorted({w["rule"] for w in manifest["monitor_warnings"]})},
        budget={"max_steps": args.steps, "wall_clock_cap_s": args.budget, "planner_steps_done": manifest["steps"],
                "ar_steps_done": ar_manifest["steps"], "batch_size": args.batch_size, "learning_rate": 1e-3,
                "estep_warmup_steps": args.warmup_estep, "estep_prior_weight": args.prior_weight,
                "estep_selection": args.estep_selection, "warmup_end": args.warmup_end, "entropy_bonus": args.entropy_bonus,
                "diverse_beam": args.diverse_beam, "z_dropout": args.z_dropout,
                "executor_copy": args.executor_copy, "planner_copy": args.planner_copy,
                "unlikelihood": args.unlikelihood, "checklist": args.checklist, "plan_words": args.plan_words,
                "input_plans": args.input_plans,
                "proposer": args.proposer, "concept_gradient": args.concept_gradient,
                "concept_temperature": args.concept_temperature,
                "keywords": args.keywords, "max_text_length": args.max_text_length,
                "estep_warmup_ended_at": manifest.get("estep_warmup_ended_at")},
        figures=figures, extra={"examples": examples},
        targets={"delta_nll_shuffle": target(figures["delta_nll_shuffle"], "≥", 1.0),
                 "nll_ratio_vs_ar": target(figures["nll_ratio_vs_ar"], "≤", 1.0),
                 "keyword_coverage": target(figures["keyword_coverage"], "≥", 0.8),
                 "keyword_coverage_vs_ar": target(figures["keyword_coverage"] - figures["ar_keyword_coverage"], ">", 0.0),
                 "executor_decode_ratio": target(figures["executor_decode_ratio"], "≥", 0.95)},
    )
    print("\n".join(f"{k}: {v:.4g}" for k, v in result["figures"].items()))
    return result
