"""The demo's five stages: each trains its model(s) with the recipes of ``genlab.trainers`` (or reuses them),
measures them with the benchmarks of ``genlab.bench`` (the same code and figure names as `genlab bench`), and
adds the examples of ``showcase``. Each returns a JSON-able dict that ``genlab.report`` renders."""

from __future__ import annotations

import shutil

import torch
from transformers import Qwen2ForCausalLM

from ..bench import ar as bench_ar
from ..bench import concept as bench_concept
from ..bench import merge as bench_merge
from ..bench import planner as bench_planner
from ..bench import speculative as bench_speculative
from ..bench.csc import padded
from ..data import load_corpus
from ..modeling_merge import MergeForMaskedRefinement
from ..modeling_planner import PlannerExecutorModel
from ..runs import is_complete, read_manifest
from ..spelling import fill_rule, sighan15
from ..tokenization import load_tokenizer
from ..trainers import ar, concept, edge, merge, planner, planner_baseline
from ..trainers.common import default_training_arguments
from .reuse import ensure_run, load_causal_lm, measured
from .settings import PROMPTS, Demo
from .showcase import concept_boundaries, merge_trace, planner_examples, side_by_side


# -- stage 1: the AR baseline ------------------------------------------------------------------------------------
def stage_ar(demo: Demo) -> dict:
    """Train the Qwen2 baseline; ``genlab bench ar`` on it; greedy continuations of the demo prompts."""
    run_dir, preset, steps = demo.dir("ar"), demo.scale.ar_preset, demo.scale.ar_steps
    # A few hundred steps is far from convergence, where a decaying LR only slows learning: at 228 tiny-preset
    # steps, validation perplexity came out 216 with a constant LR, 232 warmup-stable-decay, 283 cosine.
    short_run = dict(lr_scheduler_type="constant_with_warmup", warmup_steps=min(100, steps // 4))
    manifest = ensure_run("AR baseline", run_dir, load_causal_lm, lambda callbacks: ar.train_ar(
        ar.ARTrainConfig(run_dir=str(run_dir), preset=preset, budget=demo.budget),
        default_training_arguments(ar.TRAINING_DEFAULTS, **demo.quiet_training(steps), **short_run), callbacks),
        demo, steps)

    def measure() -> dict:
        bench = bench_ar.run(bench_ar.ARBenchConfig(run_dir=str(run_dir), preset=preset, repeats=demo.scale.repeats,
                                                    json=str(run_dir / "bench.json")))
        model, tokenizer = load_causal_lm(run_dir), load_tokenizer(run_dir)
        texts = ar.sample(model, tokenizer, PROMPTS[: demo.scale.shown], max_new_tokens=32, do_sample=False)
        return {"figures": bench["figures"], "targets": bench["targets"], "samples": [[p, t] for p, t in zip(PROMPTS, texts)]}

    return {"manifest": manifest, **measured(demo, run_dir / "demo.json", [run_dir], measure)}


# -- stage 2: MERGE --------------------------------------------------------------------------------------------------
def stage_merge(demo: Demo) -> dict:
    """Train MERGE and the per-character baseline for the same fixed steps, their fillers starting from the demo's
    AR (``filler_init``);
    ``genlab bench merge`` on SIGHAN-15 and against the demo's AR (which is also the judge: stated in the
    JSON); SIGHAN repairs and generations with their round traces."""
    run_dir, baseline_dir, s = demo.dir("merge"), demo.dir("merge-baseline"), demo.scale

    def train(directory, callbacks, **fields):
        config = merge.MergeTrainConfig(run_dir=str(directory), preset=s.ar_preset, budget=demo.budget,
                                        filler_init=str(demo.dir("ar")), **fields)
        return merge.train_merge(config, default_training_arguments(
            merge.TRAINING_DEFAULTS, **demo.quiet_training(s.merge_steps)), callbacks)

    manifest = ensure_run("MERGE", run_dir, MergeForMaskedRefinement.from_pretrained,
                          lambda callbacks: train(run_dir, callbacks), demo, s.merge_steps)
    if is_complete(baseline_dir) and read_manifest(baseline_dir)["steps"] != manifest["steps"]:
        shutil.rmtree(baseline_dir)  # trained beside another MERGE run: the comparison needs the same steps
    ensure_run("MERGE's per-character baseline", baseline_dir, MergeForMaskedRefinement.from_pretrained,
               lambda callbacks: train(baseline_dir, callbacks, objective="per_character"), demo, s.merge_steps)

    def measure() -> dict:
        config = bench_merge.MergeBenchConfig(
            json=str(run_dir / "bench.json"), preset=s.ar_preset, ar_run=str(demo.dir("ar")), merge_run=str(run_dir),
            baseline_run=str(baseline_dir), judge=str(demo.dir("ar")), skip_ablations=True,
            validation_sentences=s.edit_sentences, sighan_sentences=s.sighan_sentences, samples=s.samples,
            repeats=s.repeats)
        bench = bench_merge.run(config)
        chosen = dict(threshold=bench["figures"]["delete_threshold"], fill=bench["config"]["fill"],
                      lexicon_weight=bench["config"]["lexicon_weight"],
                      detector=bench["config"]["detector"], rounds=bench["config"]["rounds"])
        return {"figures": bench["figures"], "targets": bench["targets"], "config": bench["config"],
                **merge_examples(run_dir, s.shown, **chosen)}

    return {"manifest": manifest, **measured(demo, run_dir / "demo.json", [run_dir, baseline_dir, demo.dir("ar")],
                                                  measure)}


@torch.no_grad()
def merge_examples(run_dir, shown: int, threshold: float, fill: str, lexicon_weight: float | None,
                   detector: str, rounds: int) -> dict:
    """SIGHAN-15 sentences with errors, repaired with the bench's validation-chosen detector, deletion threshold,
    round cap and fill rule, and generations from the demo prompts, each with its round-by-round trace."""
    model = MergeForMaskedRefinement.from_pretrained(run_dir).eval()
    model.config.delete_threshold = threshold
    model.generation_config.detector = detector
    tokenizer = load_tokenizer(run_dir)
    pairs = [(source, target) for source, target in sighan15() if source != target][:shown]
    drafts = padded(tokenizer, [source for source, _ in pairs])
    prompts = padded(tokenizer, PROMPTS[:shown])
    rule = fill_rule(tokenizer, fill, lexicon_weight)
    return {"repairs": [{"target": target, "draft": source, **row} for (source, target), row in zip(
                pairs, merge_trace(model, tokenizer, drafts, mode="edit", max_rounds=rounds, **rule))],
            "generations": [{"prompt": p, **row} for p, row in zip(
                PROMPTS[:shown], merge_trace(model, tokenizer, prompts, mode="gen", max_new_tokens=24))]}


# -- stage 3: concept compression on the AR base ----------------------------------------------------------------
def stage_concept(demo: Demo) -> dict:
    """LoRA + ConceptHead on the AR baseline; ``genlab bench concept`` at r = ¼ against the base as trained."""
    run_dir, base, s = demo.dir("concept"), demo.dir("ar"), demo.scale
    manifest = ensure_run("concept compression", run_dir, concept.load_concept_run, lambda callbacks: concept.train_concept(
        concept.ConceptTrainConfig(run_dir=str(run_dir), base=str(base), layers=s.concept_layers, concept_vocab=512,
                                   eval_blocks=s.eval_blocks, budget=demo.budget),
        default_training_arguments(concept.TRAINING_DEFAULTS, per_device_train_batch_size=8,
                                   **demo.quiet_training(s.concept_steps)), callbacks), demo, s.concept_steps)

    def measure() -> dict:
        bench = bench_concept.run(bench_concept.ConceptBenchConfig(
            json=str(run_dir / "bench.json"), base=str(base), base_lora_run=str(base), concept_run=str(run_dir),
            ratios=str(bench_concept.HEADLINE_RATIO), layers=s.concept_layers, concept_vocab=512,
            contexts=s.contexts, new_tokens=s.new_tokens, repeats=s.repeats, eval_blocks=s.eval_blocks,
            threads=torch.get_num_threads()))
        model, tokenizer = concept.load_concept_run(run_dir).eval(), load_tokenizer(run_dir)
        sentences = [t for t in load_corpus("all")["validation"]["text"] if 8 <= len(t) <= 64][: s.shown]
        return {"figures": bench["figures"], "targets": bench["targets"], "boundaries": concept_boundaries(model, tokenizer, sentences),
                "continuations": [[p, b, c] for p, b, c in zip(
                    PROMPTS[: s.shown], ar.sample(load_causal_lm(base), tokenizer, PROMPTS[: s.shown], 32, do_sample=False),
                    ar.sample(model, tokenizer, PROMPTS[: s.shown], 32, do_sample=False))]}

    return {"manifest": manifest, **measured(demo, run_dir / "demo.json", [run_dir, base], measure)}


# -- stage 4: planner–executor ----------------------------------------------------------------------------------
# `make bench-planner`'s keywords recipe (KEYWORDS_RECIPE in the Makefile; a test parses those flags and checks
# they agree): its training settings, shared by the planner's training and its bench, and the <eos> biases its
# plans are tuned over
KEYWORDS_RECIPE = dict(executor_copy=True, planner_copy=True, keywords=24, unlikelihood=1.0, checklist=True,
                       plan_words=True)
PLAN_EOS_BIASES = [0.0, -1.0, -2.0, -4.0, -8.0, -16.0, -32.0]


def stage_planner(demo: Demo) -> dict:
    """Hard-EM planner–executor on the keywords task (u = a sentence's content words + distractors), with
    ``make bench-planner``'s recipe (``KEYWORDS_RECIPE`` there: copy heads, word plans, unlikelihood, checklist;
    plans of u's words with an ``<eos>`` bias chosen on tuning pairs), and its same-size AR p(y|u) baseline;
    ``genlab bench planner`` on both."""
    s = demo.scale
    run_dir, ar_dir = demo.dir("planner"), demo.dir("planner-ar")
    manifest = ensure_run("planner–executor", run_dir, PlannerExecutorModel.from_pretrained, lambda callbacks: planner.train_planner(
        planner.PlannerTrainConfig(run_dir=str(run_dir), task="keywords", proposer="keywords",
                                   estep_selection="likelihood", hidden_size=s.planner_hidden,
                                   warmup_estep=s.planner_warmup,
                                   estep_top_k=2, refresh_steps=100, monitor_steps=max(1, s.planner_steps // 16),
                                   max_text_length=48, budget=demo.budget, **KEYWORDS_RECIPE),
        default_training_arguments(planner.TRAINING_DEFAULTS, **demo.quiet_training(s.planner_steps)), callbacks),
        demo, s.planner_steps)
    ensure_run("planner's AR baseline p(y|u)", ar_dir, Qwen2ForCausalLM.from_pretrained,
               lambda callbacks: planner_baseline.train_planner_baseline(  # the planner's steps, batch and LR
                   planner_baseline.PlannerBaselineTrainConfig(run_dir=str(ar_dir), planner_run=str(run_dir),
                                                               budget=demo.budget),
                   default_training_arguments(planner_baseline.TRAINING_DEFAULTS,
                                              **demo.quiet_training(s.planner_steps)), callbacks),
               demo, s.planner_steps)

    def measure() -> dict:
        bench = bench_planner.run(bench_planner.PlannerBenchConfig(
            json=str(run_dir / "bench.json"), run_dir=str(run_dir), ar_run_dir=str(ar_dir),
            steps=s.planner_steps, budget=demo.budget, warmup_estep=s.planner_warmup,
            max_text_length=48, eval_pairs=s.eval_pairs, repeats=s.repeats, **KEYWORDS_RECIPE,
            plan_input_words=True, plan_eos_biases=PLAN_EOS_BIASES))
        return {"figures": bench["figures"], "targets": bench["targets"],
                "examples": planner_examples(run_dir, s.shown, bench_planner.measured_plan_options(bench))}

    return {"manifest": manifest, **measured(demo, run_dir / "demo.json", [run_dir, ar_dir], measure)}


# -- stage 5: edge/cloud speculative decoding ---------------------------------------------------------------------
def stage_speculative(demo: Demo) -> dict:
    """An edge distilled from the AR baseline (the cloud); ``genlab bench speculative``; a side-by-side table."""
    s = demo.scale
    edge_dir, cloud_dir = demo.dir("edge"), demo.dir("ar")
    manifest = ensure_run("edge model (distilled from the AR cloud)", edge_dir, load_causal_lm, lambda callbacks: edge.train_edge(
        edge.EdgeTrainConfig(run_dir=str(edge_dir), cloud=str(cloud_dir), num_layers=s.edge_layers,
                             cloud_continuations=16 * s.bench_prompts, budget=demo.budget, resume=False),
        default_training_arguments(edge.TRAINING_DEFAULTS, **demo.quiet_training(s.edge_steps)), callbacks),
        demo, s.edge_steps)

    def measure() -> dict:
        bench = bench_speculative.run(bench_speculative.SpeculativeBenchConfig(
            json=str(edge_dir / "bench.json"), cloud="tiny", cloud_dir=str(cloud_dir), edge_dir=str(edge_dir),
            prompts=s.bench_prompts, gate_prompts=max(2, s.bench_prompts // 4), gate_thresholds="0.5,1,2",
            batch_size=2, max_new_tokens=32, threads=torch.get_num_threads()))
        prompts = bench_speculative.held_out_prompts(s.bench_prompts + s.shown)[-s.shown:]  # not the bench's own
        return {"figures": bench["figures"], "targets": bench["targets"], **side_by_side(load_causal_lm(cloud_dir), load_causal_lm(edge_dir), cloud_dir,
                                                   prompts)}

    return {"manifest": manifest, **measured(demo, edge_dir / "demo.json", [edge_dir, cloud_dir], measure)}


STAGES = {"ar": stage_ar, "merge": stage_merge, "concept": stage_concept, "planner": stage_planner,
          "speculative": stage_speculative}


def planned_steps(scale) -> dict[str, int]:
    """The training steps of each stage's models (its progress bar's length)."""
    return {"ar": scale.ar_steps, "merge": 2 * scale.merge_steps, "concept": scale.concept_steps,
            "planner": 2 * scale.planner_steps, "speculative": scale.edge_steps}
