"""The package's layers (issue 11): models → io → trainers → bench → apps, each importing only those below it,
and no import cycle — measured by ``tools/import_graph.py``, the command the README names."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module
    spec.loader.exec_module(module)
    return module


def test_no_module_imports_a_layer_above_its_own():
    graph = import_graph()
    assert graph.summary(ROOT / "src" / "genlab")["layer_violations"] == []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert graph.summary(ROOT / "src" / "genlab")["cycles"] == []


def test_every_layer_is_populated_and_the_remote_code_bundle_is_models():
    layers = import_graph().summary(ROOT / "src" / "genlab")["layers"]
    assert all(layers[name] for name in ("models", "io", "trainers", "bench", "apps"))
    assert {"genlab.modeling_merge", "genlab.logits_process", "genlab.straight_through"} <= set(layers["models"])
    assert "genlab.cli" in layers["apps"] and "genlab.trainers.edge" in layers["trainers"]


def test_the_checker_sees_a_violation_and_a_cycle(tmp_path):
    """The rules can fail: a bench module importing the CLI, and the CLI importing it back."""
    package = tmp_path / "genlab"
    (package / "bench").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "bench" / "__init__.py").write_text("")
    (package / "bench" / "x.py").write_text("from ..cli import main\n")
    (package / "cli.py").write_text("def main():\n    from .bench import x\n")
    summary = import_graph().summary(package)
    assert summary["layer_violations"] == [("genlab.bench.x", "genlab.cli")]
    assert summary["cycles"] == [["genlab.bench.x", "genlab.cli"]]
    assert summary["imports_inside_functions"] == 1


def test_only_the_cli_uses_argparse():
    users = [path.relative_to(ROOT / "src").as_posix() for path in (ROOT / "src" / "genlab").rglob("*.py")
             if "import argparse" in path.read_text(encoding="utf-8")]
    assert sorted(users) == sorted(["genlab/cli.py", *OTHER_ENTRY_POINTS])


# Tools run as `python -m` beside the genlab command (each parses its own few flags).
OTHER_ENTRY_POINTS = ["genlab/convert_smollm2.py", "genlab/hub_server.py"]
