"""The ``genlab`` command line (SPEC H8): every subcommand's ``--help`` renders.

argparse formats a help string with ``%``, so a field's help that says "1.3 %" instead of "1.3 %%" crashes
``--help`` of that one subcommand only; walking the whole parser tree catches it wherever it is.
"""

import argparse

from genlab.cli import build_parser


def _subparsers(parser: argparse.ArgumentParser, path: tuple = ()):
    """(path, parser) for ``parser`` and every subcommand below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, (*path, name))


def test_every_subcommand_help_renders():
    commands = list(_subparsers(build_parser()))
    assert ("bench", "merge") in [path for path, _ in commands] and len(commands) > 15
    for path, parser in commands:
        assert parser.format_help(), path
