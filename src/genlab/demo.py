"""`genlab demo` (= `make demo`): every system trained small and shown working on the embedded corpus (SPEC H8).

One function per stage. Each stage trains (or reuses) its model(s) under the stated ``--budget`` seconds per
model, measures them, and returns a JSON-able dict that ``genlab.report`` renders into ``RUN_DIR/report.md``,
``report.html`` and PNG plots:

- ``ar``          the Qwen2 baseline (also the cloud of speculative decoding and the judge/base elsewhere);
- ``merge``       MERGE repairing corrupted sentences and generating, round by round (M8), against the AR;
- ``concept``     concept compression on the AR base: achieved ratio, step time and decode speed vs the base;
- ``planner``     the planner's concepts next to the executor's text, and the text from shuffled concepts;
- ``speculative`` an edge distilled from the AR (cloud): speed-up, acceptance and cloud-call rates with and
                  without the CJK processors, side by side with cloud-only output.

Reuse: a stage whose run directory is complete (``genlab.runs.is_complete``) is loaded instead of retrained;
when its model files fail to load, the run is reported as corrupted, deleted and retrained. Measurements are
cached next to the run (``RUN_DIR/<stage>/demo.json``) under a key made of the manifests they were taken on,
so a rerun recomputes nothing unless a model changed. Every figure comes from the colleagues' benchmark code
(``genlab.bench.*``) and is written as SPEC-B JSON into the run directory, where the model card reads it.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from .runs import MANIFEST, is_complete, last_checkpoint, prepare_run_dir, read_manifest
from .trainers.common import positive_float

DEFAULT_BUDGET_S = 90.0  # per model; 6 models (AR, MERGE, concept, planner + its AR baseline, edge) ≈ 9 min
STAGES = ("ar", "merge", "concept", "planner", "speculative")


@dataclass(frozen=True)
class Scale:
    """Model sizes and evaluation sizes of one demo preset (``tiny``: the demo; ``nano``: smoke tests)."""

    ar_preset: str
    edge_preset: str
    concept_layers: str  # shallow,middle,deep of the AR base
    concept_steps: int  # the Gumbel/LoRA schedule length; the budget usually stops earlier
    planner_hidden: int
    planner_steps: int
    planner_warmup: int
    logging_steps: int
    eval_blocks: int
    eval_pairs: int
    edit_sentences: int
    samples: int  # MERGE/AR samples for generative perplexity
    bench_prompts: int  # speculative bench prompts
    shown: int  # examples printed per stage
    repeats: int
    contexts: str  # concept decode contexts
    new_tokens: int


SCALES = {
    "tiny": Scale(ar_preset="tiny", edge_preset="nano", concept_layers="2,3,1", concept_steps=300, planner_hidden=128,
                  planner_steps=400, planner_warmup=100, logging_steps=5, eval_blocks=32, eval_pairs=128,
                  edit_sentences=64, samples=16, bench_prompts=16, shown=4, repeats=3, contexts="512,2048",
                  new_tokens=32),
    "nano": Scale(ar_preset="nano", edge_preset="nano", concept_layers="1,0,1", concept_steps=20, planner_hidden=32,
                  planner_steps=20, planner_warmup=5, logging_steps=1, eval_blocks=4, eval_pairs=8,
                  edit_sentences=4, samples=2, bench_prompts=2, shown=2, repeats=1, contexts="2048",
                  new_tokens=4),
}
PROMPTS = ["新华社北京", "这本书", "中国经济", "今天"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", default="runs/demo", help="where every model, the report and the plots go")
    parser.add_argument("--budget", type=positive_float, default=DEFAULT_BUDGET_S,
                        help=f"training seconds per model (default {DEFAULT_BUDGET_S:g}; 6 models are trained)")
    parser.add_argument("--preset", default="tiny", choices=sorted(SCALES),
                        help="model/evaluation sizes: 'tiny' (the demo) or 'nano' (seconds, for smoke tests)")
    parser.add_argument("--push", metavar="REPO_PREFIX", default=None,
                        help="push each model to REPO_PREFIX-<stage> on the Hub at --endpoint / $HF_ENDPOINT")
    parser.add_argument("--endpoint", default=None, help="Hub URL for --push (default: $HF_ENDPOINT)")


@dataclass
class Demo:
    root: Path
    budget: float
    scale: Scale
    preset: str

    def dir(self, name: str) -> Path:
        return self.root / name


# -- reuse, detect corruption, retrain ------------------------------------------------------------------------------
def load_error(run_dir: Path, load: Callable[[Path], object]) -> str | None:
    """Why the model files of a complete run do not load (``None`` when they do)."""
    try:
        load(run_dir)
    except Exception as error:  # any failure to load means the checkpoint cannot be reused
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


def ensure_run(name: str, run_dir: Path, load: Callable[[Path], object], train: Callable[[], dict],
               budget: float) -> dict:
    """Reuse a complete run that loads; a corrupted one is reported, deleted and retrained; else train."""
    if is_complete(run_dir):
        error = load_error(run_dir, load)
        if error is None:
            print(f"[genlab demo] {name}: reusing the complete run in {run_dir}")
            return read_manifest(run_dir)
        print(f"[genlab demo] {name}: CORRUPTED checkpoint in {run_dir} ({error}) — deleting it and retraining")
        shutil.rmtree(run_dir)
    print(f"[genlab demo] {name}: training for at most {budget:.0f} s → {run_dir}")
    try:
        manifest = train()
    except Exception as error:
        if last_checkpoint(run_dir) is None:
            raise
        print(f"[genlab demo] {name}: resuming from {last_checkpoint(run_dir)} failed ({type(error).__name__}: "
              f"{error}) — starting this model over")
        shutil.rmtree(run_dir)
        manifest = train()
    error = load_error(run_dir, load)
    if error is not None:
        raise RuntimeError(f"{name}: the freshly trained run in {run_dir} does not load: {error}")
    return manifest


def cached(path: Path, run_dirs: list[Path], preset: str, compute: Callable[[], dict]) -> dict:
    """``compute()`` unless ``path`` holds a result taken on the same manifests (same trained models)."""
    digest = hashlib.sha256(preset.encode())
    for run_dir in run_dirs:
        digest.update((run_dir / MANIFEST).read_bytes())
    key = digest.hexdigest()
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("key") == key:
            print(f"[genlab demo] reusing the measurements in {path}")
            return stored["result"]
    started = time.monotonic()
    result = compute()
    result["measure_s"] = round(time.monotonic() - started, 1)
    path.write_text(json.dumps({"key": key, "result": result}, ensure_ascii=False, indent=1), encoding="utf-8")
    return result


def cli(*argv) -> argparse.Namespace:
    """Arguments exactly as the ``genlab`` command line would parse them."""
    from .cli import build_parser

    return build_parser().parse_args([str(a) for a in argv])


def training_log(run_dir: Path) -> list[dict]:
    """The Trainer's ``log_history`` of a run (its last checkpoint's ``trainer_state.json``)."""
    checkpoint = last_checkpoint(run_dir)
    if checkpoint is None:
        return []
    state = Path(checkpoint) / "trainer_state.json"
    return json.loads(state.read_text(encoding="utf-8"))["log_history"] if state.is_file() else []


def _common(demo: Demo, run_dir: Path) -> list:
    return ["--run-dir", run_dir, "--budget", demo.budget, "--report-to", "none",
            "--logging-steps", demo.scale.logging_steps]


def _load_causal_lm(run_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(run_dir).eval()


def _decode(tokenizer, ids: torch.Tensor) -> list[str]:
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


# -- stage 1: the AR baseline ------------------------------------------------------------------------------------
def stage_ar(demo: Demo) -> dict:
    """Train the Qwen2 baseline; ``genlab bench ar`` on it; greedy continuations of the demo prompts."""
    from .bench import ar as ar_bench
    from .tokenization import load_tokenizer
    from .trainers import ar
    from .trainers.ar import sample

    run_dir = demo.dir("ar")
    manifest = ensure_run("AR baseline", run_dir, _load_causal_lm, lambda: ar.run(cli(
        "train", "ar", "--preset", demo.scale.ar_preset,
        *ar_bench.budget_training_flags(demo.budget, demo.scale.ar_preset), *_common(demo, run_dir))), demo.budget)

    def measure() -> dict:
        bench = ar_bench.run(cli("bench", "ar", "--run-dir", run_dir, "--preset", demo.scale.ar_preset,
                                 "--repeats", demo.scale.repeats, "--json", run_dir / "bench.json"))
        model, tokenizer = _load_causal_lm(run_dir), load_tokenizer(run_dir)
        texts = sample(model, tokenizer, PROMPTS[: demo.scale.shown], max_new_tokens=32, do_sample=False)
        return {"figures": bench["figures"], "samples": [[p, t] for p, t in zip(PROMPTS, texts)]}

    return {"manifest": manifest, **cached(run_dir / "demo.json", [run_dir], demo.preset, measure)}


# -- stage 2: MERGE --------------------------------------------------------------------------------------------------
def stage_merge(demo: Demo) -> dict:
    """Train MERGE (steps fitted to the budget); repair corrupted held-out sentences and generate, with traces."""
    from .bench import merge as merge_bench
    from .modeling_merge import MergeForMaskedRefinement
    from .trainers import merge

    run_dir = demo.dir("merge")

    def train() -> dict:
        steps = merge_bench.merge_steps_for(demo.budget, demo.scale.ar_preset, [])
        return merge.run(cli("train", "merge", "--preset", demo.scale.ar_preset, "--max-steps", steps,
                             *_common(demo, run_dir)))

    manifest = ensure_run("MERGE", run_dir, MergeForMaskedRefinement.from_pretrained, train, demo.budget)
    measure = lambda: measure_merge(demo, run_dir)  # noqa: E731
    return {"manifest": manifest, **cached(run_dir / "demo.json", [run_dir, demo.dir("ar")], demo.preset, measure)}


def merge_trace(model, tokenizer, batch: dict, **kwargs) -> list[dict]:
    """Per row: the text after each round (greedy rounds are deterministic, so L_max = r shows round r) and the
    round's gate, inserted count and mean confidence (M8 trace)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    out = model.generate(ids, attention_mask=mask, return_dict_in_generate=True, **kwargs)
    rows = [{"rounds": int(r), "steps": []} for r in out.rounds]
    for r in range(1, int(out.rounds.max()) + 1):
        texts = _decode(tokenizer, model.generate(ids, attention_mask=mask, **{**kwargs, "max_rounds": r}))
        for i, row in enumerate(rows):
            if r <= row["rounds"]:
                row["steps"].append({"round": r, "text": texts[i], "gate": float(out.gate[i, r - 1]),
                                     "inserted": float(out.inserted[i, r - 1]),
                                     "confidence": float(out.confidence[i, r - 1])})
    return rows


@torch.no_grad()
def measure_merge(demo: Demo, run_dir: Path) -> dict:
    """The SPEC-B ``merge`` figures against the demo's AR baseline (same process), plus the shown examples."""
    from .bench import merge as mb
    from .bench import write_result
    from .bench.ar import generate_tok_s
    from .data import load_corpus
    from .modeling_merge import MergeForMaskedRefinement
    from .tokenization import load_tokenizer

    s = demo.scale
    model = MergeForMaskedRefinement.from_pretrained(run_dir).eval()
    ar = _load_causal_lm(demo.dir("ar"))
    tokenizer = load_tokenizer(run_dir)
    test = [t for t in load_corpus("all")["test"]["text"] if 8 <= len(t) <= 64]
    drafts, targets = mb.edit_task(test[: s.edit_sentences], tokenizer, rate=0.1)
    bos = mb.bos_batch(1, tokenizer.bos_token_id)
    ar_b1, ar_b32 = generate_tok_s(ar, bos, s.repeats), generate_tok_s(ar, bos.repeat(32, 1), s.repeats)
    merge_b1, _ = mb.merge_tok_s(model, 1, s.repeats)
    merge_b32, gen_rounds = mb.merge_tok_s(model, 32, s.repeats)
    edit = mb.edit_metrics(model, drafts, targets)
    sentences = test[: s.samples]
    merge_ppl = mb.judge_perplexity(ar, tokenizer, mb.merge_samples(model, tokenizer, sentences))
    ar_ppl = mb.judge_perplexity(ar, tokenizer, mb.ar_samples(ar, tokenizer, sentences))
    figures = {"speedup_b1": merge_b1 / ar_b1, "speedup_b32": merge_b32 / ar_b32,
               "mean_rounds": float(gen_rounds.float().mean()), "gen_ppl_ratio": merge_ppl / ar_ppl,
               "edit_exact_repair": edit["exact_repair"], "edit_cer_before": edit["cer_before"],
               "edit_cer_after": edit["cer_after"], "edit_mean_rounds": float(edit["rounds"].mean()),
               "merge_tok_s_b1": merge_b1, "ar_tok_s_b1": ar_b1, "merge_tok_s_b32": merge_b32, "ar_tok_s_b32": ar_b32}
    write_result(run_dir / "bench.json", "merge", figures=figures,
                 config={"source": "genlab demo", "preset": s.ar_preset, "edit_sentences": len(drafts),
                         "edit_rate": 0.1, "samples": len(sentences), "repeats": s.repeats,
                         "judge": "the demo's AR baseline (the AR side's own model: not an independent judge)"},
                 budget={"train_seconds": demo.budget, "merge_steps": read_manifest(run_dir)["steps"]},
                 targets={})
    shown = s.shown
    draft_ids, _ = mb.pad_rows(drafts[:shown])
    edits = {"input_ids": draft_ids, "attention_mask": (draft_ids != tokenizer.pad_token_id).long()}
    tokenizer.padding_side = "right"
    prompts = tokenizer(PROMPTS[:shown], return_tensors="pt", padding=True)
    return {"figures": figures, "gen_rounds": gen_rounds.tolist(), "edit_rounds": edit["rounds"].long().tolist(),
            "repairs": [{"target": t, "draft": d, **row} for t, d, row in zip(
                _decode(tokenizer, mb.pad_rows(targets[:shown])[0]), _decode(tokenizer, draft_ids),
                merge_trace(model, tokenizer, edits, mode="edit", max_rounds=3))],
            "generations": [{"prompt": p, **row} for p, row in zip(
                PROMPTS[:shown], merge_trace(model, tokenizer, prompts, mode="gen", max_new_tokens=24))]}


# -- stage 3: concept compression on the AR base ----------------------------------------------------------------
def stage_concept(demo: Demo) -> dict:
    """LoRA + ConceptHead on the AR baseline; achieved compression ratio, step time and decode speed vs the base."""
    from .trainers import concept

    run_dir, base = demo.dir("concept"), demo.dir("ar")
    manifest = ensure_run("concept compression", run_dir, concept.load_concept_run, lambda: concept.run(cli(
        "train", "concept", "--base", base, "--max-steps", demo.scale.concept_steps, "--layers",
        demo.scale.concept_layers, "--concept-vocab", 512, "--ratio-weight", 5.0, "--batch-size", 8,
        "--eval-blocks", demo.scale.eval_blocks, *_common(demo, run_dir))), demo.budget)
    measure = lambda: measure_concept(demo, run_dir)  # noqa: E731
    return {"manifest": manifest, **cached(run_dir / "demo.json", [run_dir, base], demo.preset, measure)}


def concept_boundaries(model, tokenizer, texts: list[str]) -> list[str]:
    """Each text with ``|`` after every token where the ConceptHead fired (noise-free decisions)."""
    shown = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            fired = model(input_ids=ids).is_concept[0].tolist()
        tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]
        shown.append("".join(t + ("|" if f else "") for t, f in zip(tokens[1:], fired[1:])))  # after <s>
    return shown


def measure_concept(demo: Demo, run_dir: Path) -> dict:
    """The SPEC-B ``concept`` figures with the colleagues' timing code: both sides get the same LoRA for the
    step time; decode speed at each context through each model's own cache; perplexity per normal token."""
    from peft import get_peft_model

    from .bench import concept as cb
    from .bench import paired_seconds, train_step_fn, write_result
    from .data import load_corpus
    from .tokenization import load_tokenizer
    from .trainers.ar import pack_sentences, sample
    from .trainers.concept import add_concept_lora, evaluate_concepts, load_concept_run

    s = demo.scale
    base, model = _load_causal_lm(demo.dir("ar")), load_concept_run(run_dir).eval()
    tokenizer = load_tokenizer(run_dir)
    validation = load_corpus("all")["validation"]
    blocks = pack_sentences(validation, tokenizer, 128).select(range(s.eval_blocks))
    evaluation = evaluate_concepts(model, blocks, 8)
    base_ppl = cb.validation_ppl(base, blocks, 8)
    ids = torch.tensor(blocks[:8]["input_ids"])
    base_s, concept_s, step_ratio = paired_seconds(
        train_step_fn(get_peft_model(copy.deepcopy(base), cb.base_lora_config()), ids),
        train_step_fn(add_concept_lora(copy.deepcopy(model)), ids), repeats=s.repeats)
    sentences = [t for t in validation["text"] if 8 <= len(t) <= 64][: s.shown]
    shown = {"boundaries": concept_boundaries(model, tokenizer, sentences),
             "continuations": [[p, b, c] for p, b, c in zip(
                 PROMPTS[: s.shown], sample(base, tokenizer, PROMPTS[: s.shown], 32, do_sample=False),
                 sample(model, tokenizer, PROMPTS[: s.shown], 32, do_sample=False))]}
    contexts = [int(c) for c in s.contexts.split(",")]
    decode = cb.decode_figures(model, base, blocks, contexts,
                               argparse.Namespace(new_tokens=s.new_tokens, repeats=s.repeats))
    layers = tuple(int(n) for n in s.concept_layers.split(","))
    figures = {"compression_ratio": evaluation["val_compression_ratio"], "step_time_ratio": step_ratio,
               "decode_speedup_2048": decode["decode_speedup_2048_b1"],
               "ppl_ratio": evaluation["val_ppl"] / base_ppl, "val_ppl": evaluation["val_ppl"],
               "base_val_ppl": base_ppl, "concept_step_s": concept_s, "base_step_s": base_s,
               "flops_fraction_pred": cb.flops_fraction(layers, model.config.target_compression_ratio), **decode}
    write_result(run_dir / "bench.json", "concept", figures=figures,
                 config={"source": "genlab demo", "base": str(demo.dir("ar")), "layers": list(layers),
                         "contexts": contexts, "new_tokens": s.new_tokens, "repeats": s.repeats,
                         "eval_blocks": s.eval_blocks, "train_batch": [8, 128],
                         "note": "the base is the AR baseline as trained (no LoRA fine-tuning of its own)"},
                 budget={"train_seconds": demo.budget, "concept_steps": read_manifest(run_dir)["steps"]}, targets={})
    return {"figures": figures, **shown}


# -- stage 4: planner–executor ----------------------------------------------------------------------------------
def stage_planner(demo: Demo) -> dict:
    """Hard-EM planner–executor and its same-size AR p(y|u) baseline; ``genlab bench planner`` on both."""
    from transformers import Qwen2ForCausalLM

    from .bench import planner as pb
    from .modeling_planner import PlannerExecutorModel
    from .trainers import planner

    s = demo.scale
    run_dir, ar_dir = demo.dir("planner"), demo.dir("planner-ar")
    manifest = ensure_run("planner–executor", run_dir, PlannerExecutorModel.from_pretrained, lambda: planner.run(cli(
        "train", "planner", "--max-steps", s.planner_steps, "--hidden-size", s.planner_hidden,
        "--warmup-estep", s.planner_warmup, "--estep-top-k", 2, "--refresh-steps", 100,
        "--monitor-steps", max(1, s.planner_steps // 16), "--max-text-length", 48, *_common(demo, run_dir))),
        demo.budget)
    (demo.root / "benchmarks").mkdir(exist_ok=True)
    bench_args = cli("bench", "planner", "--run-dir", run_dir, "--ar-run-dir", ar_dir, "--steps", s.planner_steps,
                     "--budget", demo.budget, "--ar-budget", demo.budget, "--warmup-estep", s.planner_warmup,
                     "--max-text-length", 48,
                     "--eval-pairs", s.eval_pairs, "--repeats", s.repeats,
                     "--json", demo.root / "benchmarks" / "planner.json")
    ensure_run("planner's AR baseline p(y|u)", ar_dir, Qwen2ForCausalLM.from_pretrained, lambda: pb.ensure_ar(
        bench_args, PlannerExecutorModel.from_pretrained(run_dir), manifest["parameters"], manifest["steps"]),
        demo.budget)  # as many optimiser steps as the planner got, within the same budget

    def measure() -> dict:
        return {"figures": pb.run(bench_args)["figures"], "examples": planner_examples(run_dir, s.shown)}

    return {"manifest": manifest, **cached(run_dir / "demo.json", [run_dir, ar_dir], demo.preset, measure)}


def render_plan(plan: torch.Tensor, types: list[str], vocab_sizes: list[int], text_ids: list[int], tokenizer) -> str:
    """One plan (types, L) as text: a keyword concept shows the character of the text it hashes from (else
    ``#id``: the executor did not write it); a shape concept shows its clause length bucket."""
    from .configuration_planner import NUM_CONCEPT_SPECIALS
    from .modeling_planner import concept_slot_mask

    keep = concept_slot_mask(plan[None])[0]
    parts = []
    for name, vocab, row, valid in zip(types, vocab_sizes, plan.tolist(), keep.tolist()):
        ids = [c - NUM_CONCEPT_SPECIALS for c, v in zip(row, valid) if v]
        if name == "keywords":
            chars = {i % vocab: tokenizer.convert_ids_to_tokens(i) for i in text_ids if i >= NUM_CONCEPT_SPECIALS}
            parts.append(f"{name}: " + " ".join(chars.get(i, f"#{i}") for i in ids))
        else:
            parts.append(f"{name}: " + " ".join(f"{4 * i}-{4 * i + 3}" for i in ids))
    return "; ".join(parts)


@torch.no_grad()
def planner_examples(run_dir: Path, shown: int) -> list[dict]:
    """Held-out u → the planner's concepts → the executor's text, and the text written from the next row's plan."""
    from .data import load_corpus
    from .modeling_planner import PlannerExecutorModel
    from .tokenization import load_tokenizer
    from .trainers.planner import build_pairs, collate
    from .trainers.planner_monitors import corrupt_concepts

    model = PlannerExecutorModel.from_pretrained(run_dir).eval()
    tokenizer, config = load_tokenizer(run_dir), model.config
    pairs = build_pairs(load_corpus("all")["validation"], tokenizer, config.max_input_length, config.max_text_length)
    pairs = pairs.shuffle(seed=0).select(range(max(2, shown)))
    batch = collate([pairs[i] for i in range(len(pairs))])
    plans = model.plan(batch["input_ids"], batch["attention_mask"])
    texts = model.execute(plans, max_new_tokens=48)
    shuffled = corrupt_concepts(plans, "shuffle", config.concept_vocab_sizes)
    return [{"u": u, "y": y, "concepts": render_plan(p, config.concept_types, config.concept_vocab_sizes, t, tokenizer),
             "text": text, "shuffled_text": bad}
            for u, y, p, t, text, bad in zip(_decode(tokenizer, batch["input_ids"]), _decode(tokenizer, batch["text_ids"]),
                                             plans, texts.tolist(), _decode(tokenizer, texts),
                                             _decode(tokenizer, model.execute(shuffled, max_new_tokens=48)))]


# -- stage 5: edge/cloud speculative decoding ---------------------------------------------------------------------
def stage_speculative(demo: Demo) -> dict:
    """An edge distilled from the AR baseline (the cloud); ``genlab bench speculative``; a side-by-side table."""
    from .bench import speculative as sb

    s = demo.scale
    edge_dir = demo.dir("edge")
    args = cli("bench", "speculative", "--cloud-dir", demo.dir("ar"), "--edge-dir", edge_dir, "--edge-preset",
               s.edge_preset, "--edge-budget", demo.budget, "--prompts", s.bench_prompts, "--max-new-tokens", 32,
               "--sweep-k", "",
               "--threads", torch.get_num_threads(), "--json", edge_dir / "bench.json")
    manifest = ensure_run("edge model (distilled from the AR cloud)", edge_dir, _load_causal_lm,
                          lambda: sb.ensure_edge(args), demo.budget)

    def measure() -> dict:
        figures = sb.run(args)["figures"]
        prompts = sb.held_out_prompts(s.bench_prompts + s.shown, 6)[-s.shown:]  # not the bench's own prompts
        return {"figures": figures, **side_by_side(_load_causal_lm(demo.dir("ar")), _load_causal_lm(edge_dir),
                                                   demo.dir("ar"), prompts)}

    return {"manifest": manifest, **cached(edge_dir / "demo.json", [edge_dir, demo.dir("ar")], demo.preset, measure)}


@torch.no_grad()
def side_by_side(cloud, edge, cloud_dir: Path, prompts: list[str]) -> dict:
    """Cloud-only, lossless and gated (fluency) decoding of the same prompts, with and without the CJK processors:
    speed-up over cloud-only (pooled seconds, interleaved per prompt, after one warm-up), acceptance, cloud calls."""
    from transformers import LogitsProcessorList

    from .generation_speculative import edge_cloud_generate
    from .logits_process import TokenClasses, build_cjk_processors, build_sentence_stopping
    from .tokenization import load_tokenizer

    tokenizer = load_tokenizer(cloud_dir)
    classes = TokenClasses.from_tokenizer(tokenizer)
    arms = {"with CJK processors": build_cjk_processors(classes), "without processors": LogitsProcessorList()}

    def decode(prompt: str, method: str, processors):
        inputs = tokenizer(prompt, return_tensors="pt")
        common = dict(max_new_tokens=32, do_sample=False, logits_processor=processors,
                      stopping_criteria=build_sentence_stopping(classes, inputs["input_ids"].shape[1]))
        if method == "cloud-only":
            return cloud.generate(**inputs, **common), inputs["input_ids"].shape[1]
        return cloud.generate(**inputs, **common, custom_generate=edge_cloud_generate, edge_model=edge,
                              preset=method, token_classes=classes, return_stats=True), inputs["input_ids"].shape[1]

    rows, texts = [], []
    for arm, processors in arms.items():
        methods = ("cloud-only", "lossless", "fluency")
        for method in methods:
            decode(prompts[0], method, processors)  # warm-up
        seconds, counts, outputs = dict.fromkeys(methods, 0.0), {m: [0, 0, 0, 0] for m in methods[1:]}, []
        for prompt in prompts:
            row = {"arm": arm, "prompt": prompt}
            for method in methods:
                started = time.perf_counter()
                out, prompt_len = decode(prompt, method, processors)
                seconds[method] += time.perf_counter() - started
                sequences = out if method == "cloud-only" else out.sequences
                row[method] = tokenizer.decode(sequences[0, prompt_len:], skip_special_tokens=True)
                if method != "cloud-only":
                    for i, name in enumerate(("accepted", "verified", "cloud_calls", "blocks")):
                        counts[method][i] += getattr(out, name)
            outputs.append(row)
        texts += outputs
        for method in methods[1:]:
            accepted, verified, calls, blocks = counts[method]
            rows.append({"arm": arm, "method": method, "speedup_vs_cloud": seconds["cloud-only"] / seconds[method],
                         "acceptance_rate": accepted / max(verified, 1), "cloud_call_rate": calls / max(blocks, 1),
                         "same_text_as_cloud": sum(o[method] == o["cloud-only"] for o in outputs) / len(outputs)})
    return {"rates": rows, "texts": texts}


# -- cards, push, the whole demo ---------------------------------------------------------------------------------
# stage → (run directory name, Auto class, needs remote code); every one gets a card and a load command
MODELS = {"ar": ("ar", "AutoModelForCausalLM", False), "merge": ("merge", "AutoModel", True),
          "concept": ("concept", "AutoModelForCausalLM", True), "planner": ("planner", "AutoModel", True),
          "edge": ("edge", "AutoModelForCausalLM", False)}


def load_command(run_dir: Path, auto_class: str, remote: bool) -> str:
    trust = ", trust_remote_code=True" if remote else ""
    return f"{auto_class}.from_pretrained({str(run_dir)!r}{trust})"


def write_cards(demo: Demo, push: str | None) -> dict[str, str]:
    """A model card per trained model, its results read from the ``bench.json`` the demo measured (SPEC H5)."""
    from .hub import write_card

    return {name: str(write_card(demo.dir(folder), repo_id=f"{push}-{name}" if push else None))
            for name, (folder, _, _) in MODELS.items()}


def push_all(demo: Demo, prefix: str, endpoint: str | None) -> dict[str, str]:
    from .hub import push_run_dir

    endpoint = endpoint or os.environ.get("HF_ENDPOINT")
    return {name: f"{prefix}-{name} ({push_run_dir(demo.dir(folder), f'{prefix}-{name}', endpoint=endpoint)})"
            for name, (folder, _, _) in MODELS.items()}


def run(args: argparse.Namespace) -> dict:
    """Train/reuse, measure and show every stage; write cards, the report and the plots; optionally push."""
    from .report import write_report

    root = prepare_run_dir(args.run_dir)
    demo = Demo(root=root, budget=args.budget, scale=SCALES[args.preset], preset=args.preset)
    print(f"[genlab demo] preset {args.preset}: {args.budget:g} s of training per model (AR baseline, MERGE, concept "
          f"compression, planner–executor + its AR baseline, edge) → at most {6 * args.budget / 60:.1f} min of "
          f"training, plus measuring; everything goes to {root}")
    started = time.monotonic()
    results = {}
    for name in STAGES:
        stage_started = time.monotonic()
        results[name] = globals()[f"stage_{name}"](demo)
        results[name]["stage_s"] = round(time.monotonic() - stage_started, 1)
    cards = write_cards(demo, args.push)
    pushed = push_all(demo, args.push, args.endpoint) if args.push else {}
    models = {name: {"run_dir": str(demo.dir(folder)), "card": cards[name], "pushed": pushed.get(name),
                     "load": load_command(demo.dir(folder), auto, remote)}
              for name, (folder, auto, remote) in MODELS.items()}
    logs = {name: training_log(demo.dir(name)) for name in ("ar", "merge", "concept", "planner", "planner-ar", "edge")}
    summary = {"preset": args.preset, "budget_s": args.budget, "scale": asdict(demo.scale),
               "total_s": round(time.monotonic() - started, 1)}
    report = write_report(root, results, logs, models, summary)
    print("\n" + report["terminal"])
    print(f"\n[genlab demo] report: {report['markdown']} and {report['html']}; plots in {root / 'plots'}")
    for name, model in models.items():
        print(f"[genlab demo] {name}: {model['run_dir']} (card {model['card']}"
              + (f", pushed: {model['pushed']}" if model["pushed"] else "") + f")\n    from transformers import {MODELS[name][1]}; model = {model['load']}")
    return {"results": results, "models": models, "report": report}
