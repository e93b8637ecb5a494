"""`genlab bench merge`: MERGE on real Chinese spelling errors (SIGHAN-15) and as a generator (SPEC M10, B;
issue 12).

The same-size AR is trained first (``--ar-steps``), then MERGE and the per-character baseline for the same fixed
number of steps (``--train-steps``), both fillers starting from that AR (``--filler-init``), on the same corpus
(``genlab.prepare.merge_bench``); then everything is measured in one process:

- **SIGHAN-15** (pycorrector's ``sighan2015_test.tsv``, 707 sentences, 373 with errors): MERGE in edit mode
  (``SYSTEMS``: the Picker or the filler itself, ``detector="fill"``, finds the wrong characters; the free rule,
  the confusion-set rule, the confusion set with a word-list prior or the wider fuzzy-pinyin set with the prior
  fills them) and in auto mode, the
  per-character corrector of the same size, data and steps (the filler reading the unmasked sentence and
  predicting every character, MacBERT4CSC's recipe) and the identity. Sentence-level correction precision /
  recall / F1 as pycorrector scores them (a sentence with errors counts when the output equals the reference;
  a clean sentence is a false positive when the output changes it), the strict SIGHAN detection F1 (the changed
  positions equal the erroneous ones), the false-positive rate on the clean sentences, and sentences/s at
  batch 1 and 32 (one thread, medians). Each system's deletion threshold, round cap (and the prior's weight), and
  the headline system, are chosen on typo-noised sentences of the corpus's validation split (half of them clean),
  never on SIGHAN: the best correction F1 whose clean FPR is within the cap with 95 % confidence (Wilson bound).
  The same correctors at the same settings are scored on a second external test set, pycorrector's 500-sentence
  evaluation set (``eval500/*``; 299 with errors).
- **Generation**: MERGE gen mode (Mask-Predict re-masking after round 0) against that AR (``ar_train_steps``;
  MERGE's own steps are ``train_steps`` on top of the AR it started from): tokens/s at batch 1 and 32 (64 new
  tokens, one thread, medians), the judge's perplexity of
  both sides' samples (``--judge``: by default the pretrained Gemma-3-270M, ``genlab.clouds``, scoring with its
  own tokenizer), distinct-2, and the rounds used.
- **Ablations** (M9): at inference, the Picker as bottom-K (K_del = 15 %) instead of the threshold; trained
  for ``--ablation-steps``, the seeds' straight-through recipe (a reference model with the same short
  schedule is trained too).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rapidfuzz.distance import Levenshtein
from transformers import AutoModelForCausalLM

from ..clouds import load_cloud
from ..data import load_corpus
from ..generation_refinement import DETECTORS, pad_to
from ..modeling_merge import MergeForMaskedRefinement
from ..runs import read_manifest
from ..spelling import (FILL_RULES, PRIOR_RULES, TypoNoise, character_frequencies,
                        fill_rule, pycorrector_eval500, sighan15, typo_noise)
from ..timing import median_seconds
from ..tokenization import load_tokenizer
from ..trainers.merge_data import character_vocabulary
from . import target, write_result
from .csc import batched, csc_scores, padded, rate_upper_bound
from .merge_diagnostics import confusion_coverage, error_diagnostics
from .merge_generation import NEW_TOKENS, generation_figures

FILLS = FILL_RULES  # a substituted character becomes any token, or one of its confusion set, or one of its
# confusion set rescored by the word-list prior, or the same over the fuzzy-pinyin set (`genlab.spelling.fill_rule`)
SYSTEMS = tuple(f"{detector}_{fill}" for detector in DETECTORS for fill in FILLS  # what finds × what fixes; a
                if detector == "fill" or fill not in PRIOR_RULES)  # prior is for the fill detector, which reads it
ABLATIONS = {  # name → the `MergeTrainConfig` fields it changes (M9); trained for --ablation-steps each
    "reference": {},
    "straight_through": {"recipe": "straight_through", "picker": "bottomk", "inserter": "multinomial"},
}


@dataclass
class MergeBenchConfig:
    """`genlab bench merge`: what to measure; the runs under ``runs`` are trained first when incomplete."""

    json: str | None = field(default=None, metadata={"help": "where to write the benchmark JSON"})
    runs: str = field(default="runs/bench/merge", metadata={"help": "where the trained models are (reused if complete)"})
    preset: str = field(default="tiny", metadata={"help": "AR preset; MERGE's width/depth are matched to it"})
    train_steps: int = field(default=1600, metadata={"help": "training steps of MERGE and the baseline"})
    ar_steps: int = field(default=1600, metadata={"help": "training steps of the AR (the generation baseline, "
                                                          "and the fillers' start with --filler-init)"})
    judge: str = field(default="gemma3", metadata={"help": "the judge of generated text: a built-in cloud "
                                                           "(genlab.clouds: gemma3, smollm2) or an AR run dir"})
    filler_init: bool = field(default=True, metadata={"help": "MERGE's and the baseline's fillers start from the "
                                                                 "AR run's weights (trained first)"})
    typo_fuzzy: bool = field(default=True, metadata={
        "help": "MERGE and the baseline train on typos from the fuzzy-pinyin lists, the validation typos' channel "
                "(MergeTrainConfig.typo_fuzzy)"})
    ablation_steps: int = field(default=300, metadata={"help": "training steps per trained ablation"})
    sighan_sentences: int = field(default=0, metadata={"help": "first N sentences of SIGHAN-15 and of eval500 (0: all; smoke tests)"})
    validation_sentences: int = field(default=2000, metadata={
        "help": "noised validation sentences (threshold); half are clean, so 2000 measure an FPR near 7 %% to "
                "about ±0.8 %% (one s.e.)"})
    thresholds: str = field(
        default="0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95,0.98,0.99,0.993,0.995,0.996,0.997,0.9975,0.998,0.9985,0.999,0.9993,"
                "0.9995,0.9997,0.9998,0.9999,0.99993,0.99995,0.99998,0.99999,0.999995,0.999999",
        metadata={"help": "deletion thresholds tried on the validation split (from 0.99 up at most 0.9 apart in "
                          "logit, where the fill detector's FPR falls fastest; the word-list prior sharpens it)"})
    max_fpr: float = field(default=0.1, metadata={"help": "most clean-sentence FPR a threshold may have"})
    fpr_confidence: float = field(default=0.95, metadata={
        "help": "a threshold qualifies when the upper end of this one-sided Wilson interval of its validation "
                "clean FPR is at most --max-fpr, so the cap holds on unseen text too (0.5: the validation FPR itself)"})
    lexicon_weights: str = field(default="0.5,1", metadata={
        "help": "weights of the word-list prior (LexiconFillProcessor) of the 'lexicon' and 'fuzzy' fill rules tried "
                "on the validation split, with every threshold; the best is kept, for MERGE and the baseline each"})
    edit_rounds: int = field(default=3, metadata={
        "help": "most rounds of edit and auto mode; each system's cap (1 … this) is chosen on validation with its "
                "threshold"})
    gen_rounds: int = field(default=4, metadata={"help": "max_rounds of gen mode (Mask-Predict iterations)"})
    samples: int = field(default=32, metadata={"help": "samples per model for judge perplexity and distinct-2"})
    repeats: int = field(default=3, metadata={"help": "timed repeats per figure (median)"})
    skip_ablations: bool = field(default=False, metadata={"help": "measure the main models only"})
    ar_run: str | None = field(default=None, metadata={"help": "the AR run (default: RUNS/ar-PRESET)"})
    merge_run: str | None = field(default=None, metadata={"help": "the MERGE run (default: RUNS/merge-PRESET)"})
    baseline_run: str | None = field(default=None, metadata={"help": "the per-character baseline run"})

    def run_dir(self, name: str) -> Path:
        """``ar``, ``merge``, ``baseline`` or ``ablation-<name>``: where that model's run is."""
        given = {"ar": self.ar_run, "merge": self.merge_run, "baseline": self.baseline_run}.get(name)
        if given is not None:
            return Path(given)
        folder = {"ar": f"ar-{self.preset}", "merge": f"merge-{self.preset}", "baseline": f"baseline-{self.preset}"}
        return Path(self.runs) / folder.get(name, name)

    def threshold_grid(self) -> list[float]:
        return [float(t) for t in self.thresholds.split(",")]

    def lexicon_weight_grid(self) -> list[float]:
        return [float(w) for w in self.lexicon_weights.split(",")]


# -- correcting sentences --------------------------------------------------------------------------------------
def restore_text(source: str, source_ids: list[int], output_ids: list[int], tokenizer) -> str:
    """The output as text, with the source's own characters wherever the output kept the source's tokens (so
    characters the tokenizer reads as ``<unk>`` survive when the model leaves them alone)."""
    if len(source_ids) != len(source):  # not one token per character: decode as is
        return tokenizer.decode(output_ids, skip_special_tokens=True)
    pieces = []
    for op, s0, s1, o0, o1 in Levenshtein.opcodes(source_ids, output_ids):
        pieces.append(source[s0:s1] if op == "equal" else tokenizer.decode(output_ids[o0:o1], skip_special_tokens=True))
    return "".join(pieces)


@torch.no_grad()
def merge_correct(model, tokenizer, texts: list[str], batch_size: int = 32, rounds: list | None = None,
                  **generate_kwargs) -> list[str]:
    """MERGE ``generate`` (edit or auto mode) over ``texts`` in batches; each row's rounds are appended to
    ``rounds`` when it is given."""
    outputs = []
    for chunk in batched(texts, batch_size):
        batch = padded(tokenizer, chunk)
        out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                             return_dict_in_generate=True, **generate_kwargs)
        if rounds is not None:
            rounds.extend(out.rounds.tolist())
        outputs.extend(decode_rows(tokenizer, chunk, batch["input_ids"], out.sequences))
    return outputs


def decode_rows(tokenizer, texts: list[str], input_ids: torch.Tensor, sequences: torch.Tensor) -> list[str]:
    """Each output row as text (:func:`restore_text` against its input row)."""
    special = (tokenizer.pad_token_id, tokenizer.bos_token_id)
    return [restore_text(text, [t for t in ids.tolist() if t not in special],
                         [t for t in row.tolist() if t not in special], tokenizer)
            for text, ids, row in zip(texts, input_ids, sequences)]


def trace_steps(pad: int, input_ids: torch.Tensor, out) -> torch.Tensor:
    """(B, R + 1, N): each row before the first round and after each of the R rounds the batch ran (a row that
    stopped keeps its text), padded to one width."""
    texts_after = (input_ids, *out.round_sequences)
    width = max(s.shape[1] for s in texts_after)
    return torch.stack([pad_to(s, width, pad) for s in texts_after], 1)


@torch.no_grad()
def edit_sweep(model, tokenizer, texts: list[str], grid: list[float], batch_size: int = 32,
               **generate_kwargs) -> dict[tuple[float, int], list[str]]:
    """Edit (or auto) mode's outputs at every (threshold of ``grid``, round cap r = 1 … ``max_rounds``). Exact:

    - a cap of r rounds gives the text after round r of a longer run, since no round of edit or auto mode reads
      ``max_rounds`` (only gen mode's re-masking does) and a row that stopped keeps its text;
    - with ``detector="fill"`` one run at the lowest threshold gives every threshold: a round edits only the token
      it scores highest, when that score exceeds the threshold, so up to the first round whose highest score is
      ≤ τ every τ ≥ the lowest makes the same edits, and the output at τ is the text before that round
      (``top_delete_prob`` of the trace). The Picker deletes every token above τ: one run per threshold."""
    caps = range(1, generate_kwargs["max_rounds"] + 1)
    outputs: dict[tuple[float, int], list[str]] = {(t, r): [] for t in grid for r in caps}
    one_run = generate_kwargs.get("detector") == "fill"
    for chunk in batched(texts, batch_size):
        batch = padded(tokenizer, chunk)
        for run_threshold in [min(grid)] if one_run else grid:
            model.config.delete_threshold = run_threshold
            out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                                 return_dict_in_generate=True, **generate_kwargs)
            steps = trace_steps(tokenizer.pad_token_id, batch["input_ids"], out)  # (B, R + 1, N)
            decoded = [decode_rows(tokenizer, chunk, batch["input_ids"], steps[:, k]) for k in range(steps.shape[1])]
            for threshold in grid if one_run else [run_threshold]:
                if one_run:  # (B,) the rounds that edit at τ
                    ran = (out.top_delete_prob > threshold).long().cumprod(-1).sum(-1)
                else:  # every round the run ran
                    ran = torch.full((len(chunk),), steps.shape[1] - 1)
                for r in caps:
                    outputs[threshold, r].extend(decoded[k][i] for i, k in enumerate(ran.clamp(max=r).tolist()))
    return outputs


@torch.no_grad()
def per_character_correct(model, tokenizer, texts: list[str], batch_size: int = 32,
                          fill_candidates: torch.Tensor | None = None, fill_processor=None) -> list[str]:
    """The baseline: one round that deletes and inserts nothing; every character becomes the filler's argmax
    (among its ``fill_candidates`` row when given: the character itself or a confusable one; rescored by
    ``fill_processor`` when given, as in MERGE's ``generate``)."""
    outputs, special = [], torch.tensor(model._never_filled + [tokenizer.unk_token_id])
    for chunk in batched(texts, batch_size):
        batch = padded(tokenizer, chunk)
        none = torch.zeros(len(chunk))
        out = model(batch["input_ids"], batch["attention_mask"], edit=none, num_insertions=none.long())
        logits = out.logits.float().index_fill(-1, special, float("-inf"))
        if fill_candidates is not None:
            logits = logits.masked_fill(~fill_candidates[batch["input_ids"]], float("-inf"))
        if fill_processor is not None:
            rows, cols = batch["attention_mask"].nonzero(as_tuple=True)
            logits[rows, cols] = fill_processor(batch["input_ids"][rows], cols, logits[rows, cols])
        best = logits.argmax(-1)
        keep = torch.isin(batch["input_ids"], special)  # <s>, padding and <unk> stay as they are
        predicted = torch.where(keep, batch["input_ids"], best)
        for text, ids, row, valid in zip(chunk, batch["input_ids"], predicted, batch["attention_mask"].bool()):
            source = ids[valid].tolist()[1:]
            outputs.append(restore_text(text, source, row[valid].tolist()[1:], tokenizer))
    return outputs


def validation_pairs(tokenizer, count: int, seed: int = 1234) -> tuple[list[str], list[str]]:
    """(draft, sentence) pairs from the corpus's validation split: typo noise as in training (substitutes drawn by
    their training-split frequency) but from the fuzzy-pinyin confusion sets, so that the ``fuzzy`` fill rule's
    extra candidates can both help and hurt there, half clean. The sentences are a seeded sample of the whole
    split, so news and reviews appear in the corpus's proportions (the split lists all news first)."""
    corpus = load_corpus("all")
    rng = random.Random(seed)
    frequencies = character_frequencies(corpus["train"]["text"], character_vocabulary(tokenizer))
    eligible = [s for s in corpus["validation"]["text"] if 8 <= len(s) <= 64]
    sentences = rng.sample(eligible, min(count, len(eligible)))
    noise = TypoNoise(clean_fraction=0.5, fuzzy=True)  # the widest channel, so the candidate sets can differ
    return [typo_noise(s, rng, frequencies, noise) for s in sentences], sentences


def validation_scores(drafts: list[str], sentences: list[str], outputs: list[str], confidence: float) -> dict:
    """``csc_scores`` on the validation pairs, and ``clean_fpr_bound``: the upper end of the one-sided ``confidence``
    Wilson interval of the clean FPR, which the threshold rule caps (:func:`best_row`)."""
    scores = csc_scores(drafts, sentences, outputs)
    clean = sum(draft == sentence for draft, sentence in zip(drafts, sentences))
    return {**scores, "clean_fpr_bound": rate_upper_bound(scores["clean_fpr"], clean, confidence)}


def best_row(curve: list[dict], max_fpr: float) -> dict:
    """The row with the best correction F1 among those whose ``clean_fpr_bound`` is at most ``max_fpr`` (ties: the
    lower FPR, then the fewer rounds); the lowest-bound row when none qualifies."""
    allowed = [row for row in curve if row["clean_fpr_bound"] <= max_fpr]
    return (max(allowed, key=lambda r: (r["correction_f1"], -r["clean_fpr"], -r.get("rounds", 0))) if allowed
            else min(curve, key=lambda r: r["clean_fpr_bound"]))


def choose_edit_setting(model, tokenizer, drafts, sentences, args: MergeBenchConfig, **kwargs) -> dict:
    """The deletion threshold and round cap (≤ ``kwargs["max_rounds"]``) of ``best_row`` on the validation pairs
    (the threshold is set on the model; ``args``: the grid, FPR cap and confidence); the whole curve is returned
    too. Every (threshold, cap) comes from the runs :func:`edit_sweep` makes."""
    outputs = edit_sweep(model, tokenizer, drafts, args.threshold_grid(), **kwargs)
    curve = [{"threshold": t, "rounds": r, **validation_scores(drafts, sentences, texts, args.fpr_confidence)}
             for (t, r), texts in outputs.items()]
    best = best_row(curve, args.max_fpr)
    model.config.delete_threshold = best["threshold"]
    return {"threshold": best["threshold"], "rounds": best["rounds"], "best": best, "curve": curve}


def sentences_per_s(correct: Callable[[list[str], int], list[str]], texts: list[str], batch_size: int,
                    repeats: int) -> float:
    """Sentences/s of ``correct(texts, batch_size)`` (median of ``repeats`` after a warm-up)."""
    return len(texts) / median_seconds(lambda: correct(texts, batch_size), repeats=repeats)


# -- the benchmark -----------------------------------------------------------------------------------------------
def rule_variants(tokenizer, fill: str, weights: list[float]) -> dict[float | None, dict]:
    """The variants of a fill rule tried on validation → their keywords for ``generate`` and
    :func:`per_character_correct`: one per lexicon weight for a rule with a prior, the rule alone (``None``)
    otherwise. The candidate table and the prior's word table are built once and shared by the variants."""
    rule = fill_rule(tokenizer, fill)
    if fill not in PRIOR_RULES:
        return {None: rule}
    return {w: {**rule, "fill_processor": rule["fill_processor"].reweighted(w)} for w in weights}


def fitting_pairs(tokenizer, pairs: list[tuple[str, str]], max_positions: int) -> list[tuple[str, str]]:
    """The (draft, reference) pairs whose draft, ``<s>`` included, fits ``max_positions``."""
    lengths = [len(ids) for ids in tokenizer([s for s, _ in pairs])["input_ids"]]
    return [pair for pair, length in zip(pairs, lengths) if length <= max_positions]


def score_correctors(systems: dict, pairs: list[tuple[str, str]], test_set: str,
                     rounds_of: tuple[str, list] | None = None) -> dict[str, dict[str, float]]:
    """Each corrector's CSC scores on one test set's (draft, reference) ``pairs``; ``rounds_of`` (name, list): that
    corrector's rounds per sentence are appended to the list."""
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    scores = {}
    for name, correct in systems.items():
        outputs = correct(sources, rounds=rounds_of[1]) if rounds_of and name == rounds_of[0] else correct(sources)
        scores[name] = csc_scores(sources, targets, outputs)
        progress(f"{test_set} {name}: correction F1 {scores[name]['correction_f1']:.3f}, clean FPR "
                 f"{scores[name]['clean_fpr']:.3f}")
    return scores


def scored_figures(scores: dict[str, dict[str, float]], prefix: str, aliases: dict[str, str]) -> dict[str, float]:
    """``<prefix><system>_<score>`` for every corrector, and ``<prefix><alias>_<score>`` for each chosen one."""
    named = {**{name: name for name in scores}, **aliases}
    return {f"{prefix}{key}_{k}": v for key, name in named.items() for k, v in scores[name].items()}


def sighan_figures(merge, baseline, tokenizer, args: MergeBenchConfig) -> tuple[dict, dict]:
    """SIGHAN-15 figures of MERGE in edit mode (each of ``SYSTEMS``: the Picker or the fill detector finds the
    errors, a fill rule fixes them, each at its own validation threshold and lexicon weight), in auto mode, the
    bottom-K ablation, the baseline (its fill rule and lexicon weight chosen likewise) and the identity; as headline
    the system that did best on the validation split (never on SIGHAN). The choices made there are returned too."""
    pairs = sighan15()[: args.sighan_sentences or None]
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    drafts, sentences = validation_pairs(tokenizer, args.validation_sentences)
    edit, weights = dict(mode="edit", max_rounds=args.edit_rounds), args.lexicon_weight_grid()
    thresholds, settings = {}, {}
    for name in SYSTEMS:
        detector, fill = name.split("_")
        variants = rule_variants(tokenizer, fill, weights)
        tried = {w: choose_edit_setting(merge, tokenizer, drafts, sentences, args,
                                        detector=detector, **rule, **edit) for w, rule in variants.items()}
        weight = best_row([{**t["best"], "weight": w} for w, t in tried.items()], args.max_fpr)["weight"]
        thresholds[name] = {**tried[weight], "lexicon_weight": weight,
                            "by_weight": {str(w): t["best"] for w, t in tried.items() if w is not None}}
        settings[name] = dict(detector=detector, **variants[weight], **edit)
        settings[name]["max_rounds"] = tried[weight]["rounds"]
        best = thresholds[name]["best"]
        progress(f"validation {name}: threshold {thresholds[name]['threshold']:g}, {best['rounds']} rounds, "
                 f"lexicon weight {weight}, "
                 f"correction F1 {best['correction_f1']:.3f}, clean FPR {best['clean_fpr']:.3f} (bound "
                 f"{best['clean_fpr_bound']:.3f})")
    headline = best_row([{**thresholds[n]["best"], "system": n} for n in SYSTEMS], args.max_fpr)["system"]
    baseline_validation, baseline_rules = [], {}
    for fill in FILLS:
        variants = rule_variants(tokenizer, fill, weights)
        rows = [{**validation_scores(drafts, sentences, per_character_correct(baseline, tokenizer, drafts, **rule),
                                     args.fpr_confidence),
                 "fill": fill, "lexicon_weight": w} for w, rule in variants.items()]
        baseline_rules[fill] = variants[best_row(rows, args.max_fpr)["lexicon_weight"]]
        baseline_validation.extend(rows)
    baseline_choice = best_row(baseline_validation, args.max_fpr)
    baseline_fill = baseline_choice["fill"]

    def merge_system(name: str, **mode):
        def correct(texts, b=32, rounds=None):
            merge.config.delete_threshold = thresholds[name]["threshold"]
            return merge_correct(merge, tokenizer, texts, b, rounds, **{**settings[name], **mode})
        return correct

    systems = {
        **{f"sighan15_{name}": merge_system(name) for name in SYSTEMS},
        "sighan15_auto": merge_system(headline, mode="auto"),
        **{f"baseline_{f}": lambda texts, b=32, f=f: per_character_correct(baseline, tokenizer, texts, b,
                                                                           **baseline_rules[f]) for f in FILLS},
        "identity": lambda texts, b=32: list(texts),
    }
    used = []  # the headline's rounds per SIGHAN sentence
    chosen = {"sighan15": f"sighan15_{headline}", "baseline": f"baseline_{baseline_fill}"}
    figures = scored_figures(score_correctors(systems, pairs, "SIGHAN-15", (chosen["sighan15"], used)), "", chosen)
    eval500 = fitting_pairs(tokenizer, pycorrector_eval500()[: args.sighan_sentences or None],
                            merge.config.max_position_embeddings)  # 498: two clean ones are 261 and 322 long
    renamed = {name.removeprefix("sighan15_"): correct for name, correct in systems.items()}
    figures["eval500/sentences"] = len(eval500)  # a second external test set, the same correctors and settings
    figures.update(scored_figures(score_correctors(renamed, eval500, "eval500"), "eval500/",
                                    {"merge": headline, "baseline": chosen["baseline"]}))
    for name, (texts, wanted) in (("sighan15", (sources, targets)), ("validation", (drafts, sentences))):
        diagnostics = error_diagnostics(merge, baseline, tokenizer, texts, wanted,
                                        **{k: v for k, v in settings["fill_lexicon"].items() if k.startswith("fill_")})
        figures.update({f"{name}_diagnostic/{k}": v for k, v in diagnostics.items()})
        figures[f"{name}_diagnostic/confusion_coverage_fuzzy"] = confusion_coverage(
            tokenizer, texts, wanted, settings["fill_fuzzy"]["fill_candidates"])
    rounds = torch.tensor(used)
    for r in range(1, args.edit_rounds + 1):
        figures[f"edit_rounds_frac_{r}"] = float((rounds == r).float().mean())
    figures["edit_mean_rounds"] = float(rounds.float().mean())
    merge.config.picker = "bottomk"  # M9: K_del = 15 % of the tokens, whatever the scores say
    bottomk = csc_scores(sources, targets, merge_correct(merge, tokenizer, sources,
                                                         **{**settings[headline], "detector": "picker"}))
    merge.config.picker = "threshold"
    figures.update({f"ablation/picker_bottomk/{k}": v for k, v in bottomk.items()})
    progress("diagnostics and the bottom-K ablation done; timing the correctors")
    figures.update(correction_speeds(systems, headline, baseline_fill, thresholds, sources[:64], args))
    choice = {"system": headline, "threshold": thresholds[headline]["threshold"], "baseline_fill": baseline_fill,
              "rounds": settings[headline]["max_rounds"],
              "lexicon_weight": thresholds[headline]["lexicon_weight"],
              "baseline_lexicon_weight": baseline_choice["lexicon_weight"],
              "rule": {k: v for k, v in settings[headline].items() if k.startswith("fill_")},
              "curves": {name: thresholds[name]["curve"] for name in SYSTEMS},
              "lexicon_weights_validation": {name: thresholds[name]["by_weight"] for name in SYSTEMS
                                             if thresholds[name]["by_weight"]},
              "baseline_validation": baseline_validation}
    return figures, choice


def correction_speeds(systems: dict, headline: str, baseline_fill: str, thresholds: dict, timed: list[str],
                      args: MergeBenchConfig) -> dict[str, float]:
    """Sentences/s (one thread) of the validation's best system of each detector at batch 1 and 32 (the
    headline's as ``sighan15_sentences_per_s_b*``) and of the baseline at batch 1."""
    figures = {}
    with single_thread():
        for detector in DETECTORS:
            best = best_row([{**thresholds[n]["best"], "system": n} for n in SYSTEMS if n.startswith(detector)],
                            args.max_fpr)["system"]
            for batch in (1, 32):
                speed = sentences_per_s(systems[f"sighan15_{best}"], timed, batch, args.repeats)
                figures[f"sighan15_{detector}_sentences_per_s_b{batch}"] = speed
                if best == headline:
                    figures[f"sighan15_sentences_per_s_b{batch}"] = speed
        figures["baseline_sentences_per_s_b1"] = sentences_per_s(systems[f"baseline_{baseline_fill}"], timed, 1,
                                                                 args.repeats)
    return figures


def progress(message: str) -> None:
    print(f"[bench merge {time.strftime('%H:%M:%S')}] {message}", flush=True)


class single_thread:
    """Time on one thread (the machine's other core stays free for the OS), restoring the count after."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def ablation_figures(tokenizer, args: MergeBenchConfig, system: str, rule: dict) -> dict:
    """SIGHAN-15 correction F1 and clean FPR of each trained ablation at its validation-chosen threshold, with
    the headline's detector and fill rule (``rule``: its ``generate`` keywords)."""
    detector = system.split("_")[0]
    pairs = sighan15()[: args.sighan_sentences or None]
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    drafts, sentences = validation_pairs(tokenizer, args.validation_sentences // 2)
    figures = {}
    for name in ABLATIONS:
        model = MergeForMaskedRefinement.from_pretrained(args.run_dir(f"ablation-{name}")).eval()
        edit = dict(mode="edit", max_rounds=args.edit_rounds,  # the fill detector feeds the threshold rule
                    detector=detector if model.config.picker == "threshold" else "picker", **rule)
        if model.config.picker == "threshold":
            edit["max_rounds"] = choose_edit_setting(model, tokenizer, drafts, sentences, args, **edit)["rounds"]
        scores = csc_scores(sources, targets, merge_correct(model, tokenizer, sources, **edit))
        figures.update({f"ablation/{name}/{k}": scores[k] for k in ("correction_f1", "detection_f1", "clean_fpr")})
    return figures


def run(args: MergeBenchConfig) -> dict:
    """Measure the trained runs under ``args.runs`` (complete: see ``genlab.prepare``)."""
    start = time.monotonic()
    manifests = {name: read_manifest(args.run_dir(name)) for name in ("merge", "baseline", "ar")}
    tokenizer = load_tokenizer(args.run_dir("merge"))
    merge = MergeForMaskedRefinement.from_pretrained(args.run_dir("merge")).eval()
    baseline = MergeForMaskedRefinement.from_pretrained(args.run_dir("baseline")).eval()
    ar = AutoModelForCausalLM.from_pretrained(args.run_dir("ar")).eval()
    judge, judge_tokenizer = load_cloud(args.judge)

    figures, choice = sighan_figures(merge, baseline, tokenizer, args)
    figures["correction_f1_over_baseline"] = figures["sighan15_correction_f1"] - figures["baseline_correction_f1"]
    test = [s for s in load_corpus("all")["test"]["text"] if 8 <= len(s) <= 64][: args.samples]
    progress("timing and judging generation")
    with single_thread():
        figures.update(generation_figures(merge, ar, tokenizer, judge, judge_tokenizer, test, args.gen_rounds,
                                          args.repeats))
    figures.update({"train_steps": manifests["merge"]["steps"], "delete_threshold": choice["threshold"],
                    "edit_rounds_chosen": choice["rounds"],
                    "baseline_train_steps": manifests["baseline"]["steps"], "ar_train_steps": manifests["ar"]["steps"],
                    "ar_val_ppl": manifests["ar"]["val_ppl"],
                    "merge_parameters": manifests["merge"]["parameters"],
                    "ar_parameters": manifests["ar"]["parameters"]})
    if not args.skip_ablations:
        figures.update(ablation_figures(tokenizer, args, choice["system"], choice["rule"]))

    result = write_result(
        args.json, "merge",
        config={"preset": args.preset, "runs": args.runs,
                "sighan15": f"pycorrector data/sighan2015_test.tsv, {args.sighan_sentences or 707} sentences",
                "validation": f"{args.validation_sentences} corpus validation sentences, typo noise, half clean",
                "threshold_rule": f"best validation correction F1 whose clean FPR's one-sided {args.fpr_confidence:g} "
                                  f"Wilson upper bound is <= {args.max_fpr}, per "
                                  f"detector_fill system; the headline system the best of them on validation",
                "max_fpr": args.max_fpr, "fpr_confidence": args.fpr_confidence,
                "system": choice["system"], "detector": choice["system"].split("_")[0],
                "fill": choice["system"].split("_")[1], "baseline_fill": choice["baseline_fill"],
                "lexicon_weight": choice["lexicon_weight"],
                "baseline_lexicon_weight": choice["baseline_lexicon_weight"],
                "lexicon_weights_validation": choice["lexicon_weights_validation"],
                "threshold_curves": choice["curves"], "baseline_validation": choice["baseline_validation"],
                "edit_rounds": args.edit_rounds, "rounds": choice["rounds"], "gen_rounds": args.gen_rounds,
                "new_tokens": NEW_TOKENS, "samples": len(test), "repeats": args.repeats, "threads_timed": 1,
                "sampling": "greedy (both models); prompts = first 2 characters of test sentences",
                "merge_variants": manifests["merge"]["variants"], "ablations": ABLATIONS,
                "judge": args.judge, "runs_used": {name: str(args.run_dir(name)) for name in manifests}},
        budget={"train_steps_each": args.train_steps, "ar_steps": args.ar_steps,
                "ablation_steps_each": args.ablation_steps, "bench_wall_seconds": round(time.monotonic() - start)},
        figures=figures,
        targets={"sighan15_correction_f1": target(figures["sighan15_correction_f1"], "≥", 0.31),
                 "sighan15_clean_fpr": target(figures["sighan15_clean_fpr"], "≤", 0.10),
                 "correction_f1_over_baseline": target(figures["correction_f1_over_baseline"], ">", 0.0),
                 "speedup_b1": target(figures["speedup_b1"], "≥", 3.0),
                 "speedup_b32": target(figures["speedup_b32"], "≥", 1.5),
                 "gen_ppl_ratio": target(figures["gen_ppl_ratio"], "≤", 1.3),
                 "distinct2_ratio": target(figures["distinct2_ratio"], "≥", 0.9)},
    )
    print("\n".join(f"{k}: {v:.4g}" for k, v in result["figures"].items()))
    return result
