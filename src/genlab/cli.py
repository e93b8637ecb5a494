"""The ``genlab`` command line (SPEC H8): train, generate, edit, bench, probe, card, push, demo, app.

The one argparse user of the package. Each subcommand's flags come from a dataclass parsed by transformers'
``HfArgumentParser`` — ``genlab train SYSTEM`` from ``<System>TrainConfig`` next to `TrainingArguments`, as
transformers' example scripts do, so every Trainer option (``--gradient-accumulation-steps``, ``--bf16``,
``--report-to``, …) is a flag; ``genlab bench SYSTEM`` from ``<System>BenchConfig``. The short spellings of
earlier releases stay: ``--lr``, ``--batch-size``, ``--lr-scheduler``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments

from . import demo, prepare, report
from .app.settings import AppConfig
from .bench import ar as bench_ar
from .bench import concept as bench_concept
from .bench import merge as bench_merge
from .bench import planner as bench_planner
from .bench import speculative as bench_speculative
from .bench import render_comparison, update_readme, write_block
from .bench.probe import ConceptProbeConfig, PlannerProbeConfig, run_concept, run_planner
from .hub_cards import push_with_card, write_card
from .runs import TRAINER_LOG, sound_manifest
from .spelling import FILL_RULES
from .trainers import ar, concept, edge, merge, planner
from .trainers.common import COMMON_TRAINING_DEFAULTS, LR_SCHEDULERS, TrainingInterrupted, default_warmup_steps

# system → (config dataclass, the recipe's TrainingArguments defaults, recipe)
TRAIN = {
    "ar": (ar.ARTrainConfig, ar.TRAINING_DEFAULTS, ar.train_ar),
    "planner": (planner.PlannerTrainConfig, planner.TRAINING_DEFAULTS, planner.train_planner),
    "concept": (concept.ConceptTrainConfig, concept.TRAINING_DEFAULTS, concept.train_concept),
    "merge": (merge.MergeTrainConfig, merge.TRAINING_DEFAULTS, merge.train_merge),
    "edge": (edge.EdgeTrainConfig, edge.TRAINING_DEFAULTS, edge.train_edge),
}
# system → (config dataclass, prepare the runs it measures, measure)
BENCH = {
    "ar": (bench_ar.ARBenchConfig, prepare.ar_bench, bench_ar.run),
    "speculative": (bench_speculative.SpeculativeBenchConfig, prepare.speculative_bench, bench_speculative.run),
    "planner": (bench_planner.PlannerBenchConfig, prepare.planner_bench, bench_planner.run),
    "planner-keywords": (bench_planner.KeywordsBenchConfig, prepare.planner_bench, bench_planner.run),
    "merge": (bench_merge.MergeBenchConfig, prepare.merge_bench, bench_merge.run),
    "concept": (bench_concept.ConceptBenchConfig, prepare.concept_bench, bench_concept.run),
}
# system → the function behind `genlab generate --model RUN_DIR` for that system's runs
GENERATE = {"ar": ar.generate_texts, "merge": merge.generate_texts, "concept": concept.generate_texts,
            "planner": planner.generate_texts}
PROBES = [("planner", PlannerProbeConfig, run_planner, "concept-drop experiment on a planner run (P7)"),
          ("concept", ConceptProbeConfig, run_concept, "where concepts fire and what each frequent id stands for")]
SHORT_FLAGS = {  # earlier releases' spellings of TrainingArguments fields
    "--lr": dict(dest="learning_rate", type=float, help="alias of --learning-rate"),
    "--batch-size": dict(dest="per_device_train_batch_size", type=int, help="alias of --per-device-train-batch-size"),
    "--lr-scheduler": dict(dest="lr_scheduler_type", choices=LR_SCHEDULERS, help="alias of --lr-scheduler-type"),
}


def _dataclass_parser(subparsers, name: str, types: tuple, help_text: str, description: str | None):
    """A subcommand whose flags are the fields of ``types`` (``subparsers`` made with ``HfArgumentParser``)."""
    parser = subparsers.add_parser(name, dataclass_types=types, help=help_text, description=description)
    parser.set_defaults(dataclass_types=types)
    return parser


def _add_train_parsers(subparsers) -> None:
    for system, (config_type, defaults, recipe) in TRAIN.items():
        parser = _dataclass_parser(subparsers, system, (config_type, TrainingArguments), f"train {system}",
                                   sys.modules[recipe.__module__].__doc__.splitlines()[0])
        for flag, kwargs in SHORT_FLAGS.items():
            parser.add_argument(flag, default=argparse.SUPPRESS, **kwargs)
        parser.set_defaults(**defaults_for(defaults), handler=_train, train_fn=recipe)


def defaults_for(recipe_defaults: dict) -> dict:
    """genlab's `TrainingArguments` defaults, then the recipe's (the warm-up follows the step count later)."""
    return {**COMMON_TRAINING_DEFAULTS, **recipe_defaults, "warmup_steps": None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genlab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=HfArgumentParser)

    train = commands.add_parser("train", help="train a system with its Trainer")
    _add_train_parsers(train.add_subparsers(dest="system", required=True, parser_class=HfArgumentParser))

    bench = commands.add_parser("bench", help="measure a system; writes the benchmark JSON (SPEC B)")
    bench_systems = bench.add_subparsers(dest="system", required=True, parser_class=HfArgumentParser)
    for system, (config_type, _, measure) in BENCH.items():
        _dataclass_parser(bench_systems, system, (config_type,), f"benchmark {system}",
                          sys.modules[measure.__module__].__doc__.splitlines()[0]).set_defaults(handler=_bench)
    bench_all = bench_systems.add_parser("all", help="run every benchmark and refresh the README tables")
    bench_all.add_argument("--results-dir", default="benchmarks/results")
    bench_all.add_argument("--update-readme", default="README.md")
    bench_all.set_defaults(handler=_bench_all)
    compare = bench_systems.add_parser("compare", help="a README table of bench JSONs side by side (ablations)")
    compare.add_argument("results", nargs="+", help="bench JSONs, a column each, named by file stem")
    compare.add_argument("--figures", required=True, help="comma-separated figure names, one row each")
    compare.add_argument("--block", required=True, help="the README's <!-- bench:BLOCK --> block to fill")
    compare.add_argument("--update-readme", default="README.md")
    compare.set_defaults(handler=_bench_compare)

    generate = commands.add_parser("generate", help="generate text with a trained run directory")
    generate.add_argument("--model", required=True, help="run directory written by `genlab train`")
    generate.add_argument("prompts", nargs="*", default=[""], help="prompts (empty: unconditional)")
    generate.add_argument("--max-new-tokens", type=int, default=48)
    generate.add_argument("--greedy", action="store_true")
    generate.set_defaults(handler=_generate)

    edit = commands.add_parser("edit", help="repair texts with a trained MERGE run directory (edit mode)")
    edit.add_argument("texts", nargs="+", help="texts to edit")
    edit.add_argument("--model", default="runs/merge-tiny", help="MERGE run directory written by `genlab train merge`")
    edit.add_argument("--rounds", type=int, default=None, help="at most this many rounds (default: the model's)")
    edit.add_argument("--detector", choices=("picker", "fill"), default="picker",
                      help="what finds the wrong characters: the Picker, or the filler with each token masked")
    edit.add_argument("--fill", choices=FILL_RULES, default="free",
                      help="a wrong character becomes any character, or one of its confusion set (lexicon: rescored "
                           "by a word-list prior; fuzzy: the same over a wider set, fuzzy pinyin)")
    edit.add_argument("--lexicon-weight", type=float, default=None,
                      help="weight of the word-list prior with --fill lexicon/fuzzy (default 0.5; `genlab bench merge` "
                           "chooses one on validation)")
    edit.add_argument("--threshold", type=float, default=None,
                      help="deletion threshold on P(wrong) (default: the model's delete_threshold)")
    edit.set_defaults(handler=_edit)

    card = commands.add_parser("card", help="write README.md (model card) into a run directory")
    card.add_argument("run_dir")
    card.set_defaults(handler=lambda args: print(write_card(args.run_dir)))

    push = commands.add_parser("push", help="push a run directory to a Hub (any HF_ENDPOINT)")
    push.add_argument("run_dir")
    push.add_argument("repo_id")
    push.add_argument("--endpoint", default=None, help="Hub URL (default: $HF_ENDPOINT)")
    push.add_argument("--private", action="store_true")
    push.set_defaults(handler=lambda args: print(push_with_card(args.run_dir, args.repo_id, endpoint=args.endpoint,
                                                              private=args.private)))

    probe = commands.add_parser("probe", help="diagnostic experiments on a trained run (planner, concept)")
    probe_systems = probe.add_subparsers(dest="system", required=True, parser_class=HfArgumentParser)
    for system, config_type, run, help_text in PROBES:
        probe_parser = _dataclass_parser(probe_systems, system, (config_type,), help_text,
                                         sys.modules[run.__module__].__doc__.splitlines()[0])
        probe_parser.add_argument("run_dir_positional", nargs="?", metavar="RUN_DIR", help=f"the {system} run")
        probe_parser.set_defaults(handler=lambda args, run=run: run(_config(args)))

    demo_parser = _dataclass_parser(commands, "demo", (demo.DemoConfig,), "the main job on the embedded corpus (see README)",
                                    demo.__doc__.splitlines()[0])
    demo_parser.set_defaults(handler=lambda args: demo.run(_config(args)))
    app_parser = _dataclass_parser(commands, "app", (AppConfig,), "a Gradio app over the demo's models (or Hub repos)",
                                   "A Space-style Gradio app over the demo's run directory or Hub repos.")
    app_parser.set_defaults(handler=lambda args: _app(_config(args)))
    return parser


def _app(config: AppConfig):
    from . import app  # Gradio loads only for this command: every other command starts without it

    return app.run(config)


def _configs(args: argparse.Namespace) -> tuple:
    """The dataclasses of the parsed subcommand (a bad value is a ``ValueError`` naming the flag)."""
    if getattr(args, "run_dir_positional", None):
        args.run_dir = args.run_dir_positional
    if "warmup_steps" in vars(args) and args.warmup_steps is None:
        args.warmup_steps = default_warmup_steps(args.max_steps)
    return tuple(dtype(**{f.name: getattr(args, f.name) for f in dataclasses.fields(dtype)
                          if f.init and hasattr(args, f.name)}) for dtype in args.dataclass_types)


def _config(args: argparse.Namespace):
    return _configs(args)[0]


def _train(args: argparse.Namespace) -> None:
    config, training = _configs(args)
    args.train_fn(config, training)


def _bench(args: argparse.Namespace) -> dict:
    config = _config(args)
    _, prepare_runs, measure = BENCH[args.system]
    prepare_runs(config)
    result = measure(config)
    _after_bench(args.system, config)
    return result


def _after_bench(system: str, config) -> None:
    """What the apps add to a bench JSON: the planner's monitor plot beside it; the measured run's model card (the
    planner, MERGE, and the headline-ratio concept run)."""
    if config.json is None:
        return
    if system.startswith("planner"):
        json_path = Path(config.json)
        history = json.loads((Path(config.run_dir) / TRAINER_LOG).read_text(encoding="utf-8"))
        report.plot_planner_monitors(history, json_path.with_name(f"{json_path.stem}_monitors.png"))
        shutil.copyfile(config.json, Path(config.run_dir) / "bench.json")  # the card reads RUN_DIR/bench.json (H5)
        write_card(config.run_dir)
    if system in ("merge", "concept"):
        run_dir = config.run_dir("merge") if system == "merge" else config.concept_dir(bench_concept.HEADLINE_RATIO)
        shutil.copyfile(config.json, run_dir / "bench.json")
        print(f"[genlab] model card: {write_card(run_dir)}")


def _bench_all(args: argparse.Namespace) -> dict[str, dict]:
    """Every benchmark with its defaults; the JSONs into ``--results-dir``; the README tables refreshed."""
    results = {}
    for system, (config_type, prepare_runs, measure) in BENCH.items():
        config = config_type(json=str(Path(args.results_dir) / f"{system}.json"))
        prepare_runs(config)
        results[system] = measure(config)
        _after_bench(system, config)
    if args.update_readme:
        update_readme(args.update_readme, results)
    return results


def _bench_compare(args: argparse.Namespace) -> None:
    results = {Path(path).stem: json.loads(Path(path).read_text(encoding="utf-8")) for path in args.results}
    write_block(args.update_readme, args.block, render_comparison(results, args.figures.split(",")))


def _generate(args: argparse.Namespace) -> None:
    system = sound_manifest(args.model)["system"]
    for text in GENERATE[system](args.model, args.prompts, args.max_new_tokens, args.greedy):
        print(text)


def _edit(args: argparse.Namespace) -> None:
    sound_manifest(args.model)
    for text in merge.edit_texts(args.model, args.texts, args.rounds, args.detector, args.fill, args.threshold,
                                 args.lexicon_weight):
        print(text)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _configs(args) if hasattr(args, "dataclass_types") else None  # flag values checked before any work
    except ValueError as err:
        parser.error(str(err))
    try:
        args.handler(args)
    except (ValueError, FileNotFoundError, PermissionError, ConnectionError) as err:
        print(f"genlab: error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        print(f"genlab: {stop}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
