"""`genlab bench merge`: MERGE against an AR Qwen2 of the same parameter count (SPEC M10, B; issue 3 benchmark).

Both models are trained here on the same corpus for the same wall-clock budget (``--budget`` seconds each;
MERGE's step count is set from a timed pilot step so its stage schedule fits the budget), then measured in the
same process:

- tokens/s of MERGE ``generate`` (gen mode, 64 tokens) vs the AR model's KV-cached greedy ``generate`` (64 new
  tokens), at batch 1 and batch 32 — medians after warm-up, reported as ratios (``speedup_b1``, ``speedup_b32``);
- rounds used (mean and distribution) in gen mode and in edit mode;
- generative perplexity of both models' samples (greedy, 2-character prompts from held-out sentences, 64 tokens)
  under a larger AR judge (the ``base`` preset, trained here for ``--judge-budget`` seconds);
- the edit task: held-out sentences corrupted at ``--edit-rate``, repaired in edit mode within 3 rounds: exact
  repair rate and character error rate before/after;
- the M9 ablations, each variant trained for ``--ablation-budget`` seconds (a default-variant model trained for
  the same short budget is the reference), and rounds 1/2/3/6 as the inference L_max of the main model.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from ..data import load_corpus
from ..generation_refinement import levenshtein
from ..modeling_merge import MergeForMaskedRefinement
from ..runs import read_manifest
from ..timing import median_seconds
from ..tokenization import load_tokenizer
from ..trainers.merge import corrupt
from . import target, write_result
from .ar import generate_tok_s

NEW_TOKENS = 64
ABLATIONS = {  # name → the `MergeTrainConfig` variant fields it changes (M9)
    "reference": {},
    "gate_always_edit": {"gate": "always_edit"},
    "gate_always_generate": {"gate": "always_generate"},
    "insert_only": {"picker": "none"},
    "inserter_topk": {"inserter": "topk"},
    "inserter_pointer": {"inserter": "pointer"},
    "positions_absolute": {"positions": "absolute"},
}


@dataclass
class MergeBenchConfig:
    """`genlab bench merge`: what to measure; the runs under ``runs`` are trained first when incomplete."""

    json: str | None = field(default=None, metadata={"help": "where to write the benchmark JSON"})
    runs: str = field(default="runs/bench/merge", metadata={"help": "where the trained models are (reused if complete)"})
    preset: str = field(default="tiny", metadata={"help": "AR preset; MERGE's width/depth are matched to it"})
    budget: float = field(default=150.0, metadata={"help": "training seconds for MERGE and for the AR model"})
    judge_budget: float = field(default=120.0, metadata={"help": "training seconds for the base-preset judge"})
    ablation_budget: float = field(default=30.0, metadata={"help": "training seconds per ablation variant"})
    edit_sentences: int = field(default=128, metadata={"help": "held-out sentences of the edit task"})
    edit_rate: float = field(default=0.1, metadata={"help": "character corruption rate of the edit task"})
    samples: int = field(default=32, metadata={"help": "samples per model for generative perplexity"})
    repeats: int = field(default=3, metadata={"help": "timed repeats per figure (median)"})
    skip_ablations: bool = field(default=False, metadata={"help": "measure the main model only"})
    ar_run: str | None = field(default=None, metadata={"help": "the AR run to compare with (default: RUNS/ar-PRESET)"})
    merge_run: str | None = field(default=None, metadata={"help": "the MERGE run (default: RUNS/merge-PRESET)"})
    judge_run: str | None = field(default=None, metadata={"help": "the judge AR run (default: RUNS/judge-base)"})

    def run_dir(self, name: str) -> Path:
        """``ar``, ``merge``, ``judge`` or ``ablation-<name>``: where that model's run is."""
        given = {"ar": self.ar_run, "merge": self.merge_run, "judge": self.judge_run}.get(name)
        if given is not None:
            return Path(given)
        folder = {"ar": f"ar-{self.preset}", "merge": f"merge-{self.preset}", "judge": "judge-base"}.get(name, name)
        return Path(self.runs) / folder


# -- measurements ----------------------------------------------------------------------------------------------
def bos_batch(batch: int, bos: int) -> torch.Tensor:
    return torch.full((batch, 1), bos, dtype=torch.long)


def merge_tok_s(model, batch: int, repeats: int) -> tuple[float, torch.Tensor]:
    """Gen-mode tokens/s for 64-token outputs from ``<s>``, and the rounds each row used."""
    ids = bos_batch(batch, model.config.bos_token_id)
    kwargs = dict(mode="gen", max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    seconds = median_seconds(lambda: model.generate(ids, **kwargs), repeats=repeats)
    rounds = model.generate(ids, return_dict_in_generate=True, **kwargs).rounds
    return batch * NEW_TOKENS / seconds, rounds


def prompts(tokenizer, sentences: list[str]) -> dict[str, torch.Tensor]:
    tokenizer.padding_side = "left"
    return tokenizer([s[:2] for s in sentences], return_tensors="pt", padding=True)


def merge_samples(model, tokenizer, sentences) -> list[str]:
    batch = prompts(tokenizer, sentences)
    out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], mode="gen",
                         max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def ar_samples(model, tokenizer, sentences) -> list[str]:
    batch = prompts(tokenizer, sentences)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


@torch.no_grad()
def judge_perplexity(judge, tokenizer, texts: list[str]) -> float:
    """exp(mean token NLL) of ``<s> text`` under the judge, over all texts' tokens."""
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    logits = judge(**batch).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[:, 1:], reduction="sum",
                                            ignore_index=-100)
    return math.exp(float(nll) / int((labels[:, 1:] != -100).sum()))


def edit_task(sentences: list[str], tokenizer, rate: float, seed: int = 1234) -> tuple[list[list[int]], list[list[int]]]:
    rng = random.Random(seed)
    targets = tokenizer(sentences, add_special_tokens=False)["input_ids"]
    drafts = [corrupt(t, rate, rng, len(tokenizer)) for t in targets]
    bos = tokenizer.bos_token_id
    return [[bos] + d for d in drafts], [[bos] + t for t in targets]


def pad_rows(rows: list[list[int]], value: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([r + [value] * (width - len(r)) for r in rows])
    return ids, torch.tensor([len(r) for r in rows])


def edit_metrics(model, drafts, targets, *, mode: str = "edit", max_rounds: int = 3) -> dict:
    """Exact repair rate, CER before/after (Levenshtein / target length, ``<s>`` excluded), rounds used."""
    draft_ids, draft_len = pad_rows(drafts)
    target_ids, target_len = pad_rows(targets)
    out = model.generate(draft_ids, mode=mode, max_rounds=max_rounds, return_dict_in_generate=True)
    out_len = out.attention_mask.sum(-1)
    before = levenshtein(draft_ids[:, 1:], draft_len - 1, target_ids[:, 1:], target_len - 1)
    after = levenshtein(out.sequences[:, 1:], out_len - 1, target_ids[:, 1:], target_len - 1)
    chars = (target_len - 1).float()
    return {"exact_repair": float((after == 0).float().mean()), "cer_before": float((before / chars).mean()),
            "cer_after": float((after / chars).mean()), "rounds": out.rounds.float()}


def evaluate_merge(model, tokenizer, judge, ar_b32: float, sentences, drafts, targets, repeats: int) -> dict:
    """The per-model figures shared by the main model and the ablations."""
    tok_s_b32, rounds = merge_tok_s(model, 32, repeats)
    edit = edit_metrics(model, drafts, targets)
    return {"speedup_b32": tok_s_b32 / ar_b32, "mean_rounds": float(rounds.float().mean()),
            "gen_ppl": judge_perplexity(judge, tokenizer, merge_samples(model, tokenizer, sentences)),
            "edit_exact_repair": edit["exact_repair"], "cer_after": edit["cer_after"],
            "edit_mean_rounds": float(edit["rounds"].mean())}


def run(args: MergeBenchConfig) -> dict:
    """Measure the trained runs under ``args.runs`` (complete: see ``genlab.prepare``)."""
    start = time.monotonic()
    runs = Path(args.runs)
    ar_manifest, merge_manifest = read_manifest(args.run_dir("ar")), read_manifest(args.run_dir("merge"))
    judge_manifest = read_manifest(args.run_dir("judge"))

    tokenizer = load_tokenizer(args.run_dir("merge"))
    ar = AutoModelForCausalLM.from_pretrained(args.run_dir("ar")).eval()
    judge = AutoModelForCausalLM.from_pretrained(args.run_dir("judge")).eval()
    merge = MergeForMaskedRefinement.from_pretrained(args.run_dir("merge")).eval()
    test = [s for s in load_corpus("all")["test"]["text"] if 8 <= len(s) <= 64]
    sentences = test[: args.samples]
    drafts, targets = edit_task(test[: args.edit_sentences], tokenizer, args.edit_rate)

    bos = bos_batch(1, tokenizer.bos_token_id)
    ar_b1 = generate_tok_s(ar, bos, args.repeats)
    ar_b32 = generate_tok_s(ar, bos.repeat(32, 1), args.repeats)
    merge_b1, rounds_b1 = merge_tok_s(merge, 1, args.repeats)
    main = evaluate_merge(merge, tokenizer, judge, ar_b32, sentences, drafts, targets, args.repeats)
    ar_ppl = judge_perplexity(judge, tokenizer, ar_samples(ar, tokenizer, sentences))
    edit = edit_metrics(merge, drafts, targets)
    auto = edit_metrics(merge, drafts, targets, mode="auto")
    _, gen_rounds = merge_tok_s(merge, 32, 1)

    figures = {
        "speedup_b1": merge_b1 / ar_b1, "speedup_b32": main["speedup_b32"], "mean_rounds": main["mean_rounds"],
        "gen_ppl_ratio": main["gen_ppl"] / ar_ppl, "edit_exact_repair": edit["exact_repair"],
        "merge_tok_s_b1": merge_b1, "merge_tok_s_b32": main["speedup_b32"] * ar_b32,
        "ar_tok_s_b1": ar_b1, "ar_tok_s_b32": ar_b32, "merge_gen_ppl": main["gen_ppl"], "ar_gen_ppl": ar_ppl,
        "judge_val_ppl": judge_manifest["val_ppl"], "ar_val_ppl": ar_manifest["val_ppl"],
        "edit_cer_before": edit["cer_before"], "edit_cer_after": edit["cer_after"],
        "edit_mean_rounds": float(edit["rounds"].mean()), "auto_edit_exact_repair": auto["exact_repair"],
        "auto_edit_cer_after": auto["cer_after"], "auto_edit_mean_rounds": float(auto["rounds"].mean()),
        "merge_parameters": merge_manifest["parameters"], "ar_parameters": ar_manifest["parameters"],
    }
    for r in range(1, 7):
        figures[f"gen_rounds_frac_{r}"] = float((gen_rounds == r).float().mean())
        figures[f"edit_rounds_frac_{r}"] = float((edit["rounds"] == r).float().mean())
    for rounds in (1, 2, 3, 6):  # M9 rounds ablation: inference L_max of the main model
        result = edit_metrics(merge, drafts, targets, max_rounds=rounds)
        figures[f"ablation/rounds_{rounds}/edit_exact_repair"] = result["exact_repair"]
        figures[f"ablation/rounds_{rounds}/cer_after"] = result["cer_after"]
    if not args.skip_ablations:
        for name in ABLATIONS:
            variant = MergeForMaskedRefinement.from_pretrained(args.run_dir(f"ablation-{name}")).eval()
            scores = evaluate_merge(variant, tokenizer, judge, ar_b32, sentences[:16], drafts[:64], targets[:64], 1)
            scores["gen_ppl_ratio"] = scores.pop("gen_ppl") / ar_ppl
            figures.update({f"ablation/{name}/{k}": v for k, v in scores.items()})

    result = write_result(
        args.json, "merge",
        config={"preset": args.preset, "runs": str(runs), "new_tokens": NEW_TOKENS, "repeats": args.repeats,
                "edit_sentences": len(drafts), "edit_rate": args.edit_rate, "samples": len(sentences),
                "edit_max_rounds": 3, "sampling": "greedy (both models); prompts = first 2 characters",
                "ar_run": str(args.run_dir("ar")), "merge_run": str(args.run_dir("merge")),
                "judge_run": str(args.run_dir("judge")),
                "merge_variants": merge_manifest["variants"], "ablations": ABLATIONS},
        budget={"train_seconds_each": args.budget, "ar_steps": ar_manifest["steps"],
                "merge_steps": merge_manifest["steps"], "judge_seconds": args.judge_budget,
                "judge_steps": judge_manifest["steps"], "ablation_seconds_each": args.ablation_budget,
                "bench_wall_seconds": round(time.monotonic() - start)},
        figures=figures,
        targets={"speedup_b1": target(figures["speedup_b1"], "≥", 3.0),
                 "speedup_b32": target(figures["speedup_b32"], "≥", 1.5),
                 "mean_rounds": target(figures["mean_rounds"], "≤", 2.5),
                 "gen_ppl_ratio": target(figures["gen_ppl_ratio"], "≤", 1.3),
                 "edit_exact_repair": target(figures["edit_exact_repair"], "≥", 0.7)},
    )
    print("\n".join(f"{k}: {v:.4g}" for k, v in result["figures"].items()))
    return result
