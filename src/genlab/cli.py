"""The ``genlab`` command line (SPEC H8): train, generate, bench, card, push, demo.

Each system plugs in through two modules, found by name so this file does not grow with them:
``genlab.trainers.<system>`` (``add_arguments``, ``run``; optionally ``generate_cli`` for
``genlab generate``) and ``genlab.bench.<system>`` (``add_arguments``, ``run``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

TRAIN_SYSTEMS = ("ar", "planner", "concept", "merge")
BENCH_SYSTEMS = ("ar", "speculative", "planner", "merge", "concept")


def _add_system_parsers(subparsers, package: str, systems: tuple[str, ...], help_fmt: str) -> None:
    for system in systems:
        module = importlib.import_module(f"genlab.{package}.{system}")
        parser = subparsers.add_parser(system, help=help_fmt.format(system=system),
                                       description=module.__doc__.splitlines()[0])
        module.add_arguments(parser)
        parser.set_defaults(handler=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genlab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a system with its Trainer")
    _add_system_parsers(train.add_subparsers(dest="system", required=True), "trainers", TRAIN_SYSTEMS,
                        "train {system}")

    bench = commands.add_parser("bench", help="measure a system; writes the benchmark JSON (SPEC B)")
    bench_systems = bench.add_subparsers(dest="system", required=True)
    _add_system_parsers(bench_systems, "bench", BENCH_SYSTEMS, "benchmark {system}")
    bench_all = bench_systems.add_parser("all", help="run every benchmark and refresh the README tables")
    bench_all.add_argument("--results-dir", default="benchmarks/results")
    bench_all.add_argument("--update-readme", default="README.md")
    bench_all.set_defaults(handler=_bench_all)

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
    edit.set_defaults(handler=lambda args: importlib.import_module("genlab.trainers.merge").edit_cli(args))

    card = commands.add_parser("card", help="write README.md (model card) into a run directory")
    card.add_argument("run_dir")
    card.set_defaults(handler=_card)

    push = commands.add_parser("push", help="push a run directory to a Hub (any HF_ENDPOINT)")
    push.add_argument("run_dir")
    push.add_argument("repo_id")
    push.add_argument("--endpoint", default=None, help="Hub URL (default: $HF_ENDPOINT)")
    push.add_argument("--private", action="store_true")
    push.set_defaults(handler=_push)

    probe = commands.add_parser("probe", help="diagnostic experiments on a trained run (planner: concept drop)")
    importlib.import_module("genlab.probe").add_parsers(probe.add_subparsers(dest="system", required=True))

    demo = commands.add_parser("demo", help="the main job on the embedded corpus (see README)")
    importlib.import_module("genlab.demo").add_arguments(demo)
    demo.set_defaults(handler=lambda args: importlib.import_module("genlab.demo").run(args))
    return parser


def _generate(args):
    from .runs import read_manifest

    system = read_manifest(args.model)["system"]
    module = importlib.import_module(f"genlab.trainers.{system}")
    for text in module.generate_cli(args):
        print(text)


def _bench_all(args):
    from .bench import run_all

    return run_all(args.results_dir, args.update_readme)


def _card(args):
    from .hub import write_card

    print(write_card(args.run_dir))


def _push(args):
    from .hub import push_run_dir

    print(push_run_dir(args.run_dir, args.repo_id, endpoint=args.endpoint, private=args.private))


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, FileNotFoundError, PermissionError, ConnectionError) as err:
        print(f"genlab: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
