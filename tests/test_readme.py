"""Every ```python snippet of README.md runs (issue 7: "a test executes every README snippet").

Snippets that load a trained run name it by the path the docs use (``runs/demo/merge``, ``runs/speculative-cloud``,
…); the fixture builds small run directories at those paths (nano-sized models with the corpus tokenizer, saved
with ``save_pretrained`` so remote code and ``auto_map`` are real) and each snippet runs in that directory.
A snippet naming a ``runs/...`` path that no fixture builds fails with the path in the message.
"""

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _nano_ar(run_dir: Path, tokenizer, seed: int):
    from genlab.trainers.ar import build_model

    model = build_model("nano", tokenizer, seed)
    model.save_pretrained(run_dir)
    tokenizer.save_pretrained(run_dir)
    return model


def _merge(run_dir: Path, tokenizer) -> None:
    from genlab.modeling_merge import MergeForMaskedRefinement
    from genlab.trainers.merge import merge_config

    MergeForMaskedRefinement(merge_config("nano", tokenizer)).save_pretrained(run_dir)
    tokenizer.save_pretrained(run_dir)


def _concept(run_dir: Path, base: Path, tokenizer) -> None:
    from genlab.modeling_concept import Qwen2ConceptCompressionForCausalLM

    model = Qwen2ConceptCompressionForCausalLM.from_base_pretrained(
        str(base), num_shallow_layers=1, num_middle_layers=0, num_deep_layers=1, concept_vocab_size=16)
    model.save_pretrained(run_dir)
    tokenizer.save_pretrained(run_dir)


def _planner(run_dir: Path, tokenizer) -> None:
    from genlab.modeling_planner import PlannerExecutorModel
    from genlab.trainers.planner import PlannerTrainConfig, build_config

    config = PlannerTrainConfig(hidden_size=32, planner_layers=1, executor_layers=1, keyword_vocab=64, keywords=4,
                                clauses=3, max_input_length=32, max_text_length=24, estep_top_k=2, refresh_steps=10,
                                warmup_estep=1, monitor_steps=10)
    PlannerExecutorModel(build_config(config, tokenizer)).save_pretrained(run_dir)
    tokenizer.save_pretrained(run_dir)


@pytest.fixture(scope="module")
def docs_dir(tmp_path_factory) -> Path:
    """A directory holding every run the README's snippets load, at the paths they use."""
    from genlab.tokenization import default_tokenizer

    root = tmp_path_factory.mktemp("readme")
    tokenizer = default_tokenizer()
    runs = root / "runs"
    _nano_ar(runs / "demo" / "ar", tokenizer, seed=0)
    _nano_ar(runs / "demo" / "edge", tokenizer, seed=1)
    _merge(runs / "demo" / "merge", tokenizer)
    _concept(runs / "demo" / "concept", runs / "demo" / "ar", tokenizer)
    _planner(runs / "demo" / "planner", tokenizer)
    _nano_ar(runs / "speculative-cloud", tokenizer, seed=2)
    _nano_ar(runs / "speculative-edge-kd", tokenizer, seed=3)
    return root


def _string_literals(code: str) -> list[str]:
    """The string constants of ``code`` (comments are not code: a path in a comment needs no run)."""
    tokens = tokenize.generate_tokens(io.StringIO(code).readline)
    return [ast.literal_eval(t.string) for t in tokens if t.type == tokenize.STRING]


def test_readme_has_python_snippets():
    assert len(SNIPPETS) >= 5  # the demo's, and one per system section


@pytest.mark.parametrize("index", range(len(SNIPPETS)), ids=lambda i: f"snippet{i}")
def test_readme_snippet_runs(index, docs_dir, monkeypatch):
    code = SNIPPETS[index]
    missing = [p for p in _string_literals(code) if p.startswith("runs/") and not (docs_dir / p).exists()]
    assert not missing, f"README snippet {index} loads {missing}; add them to the docs_dir fixture"
    monkeypatch.chdir(docs_dir)
    exec(compile(code, f"README.md snippet {index}", "exec"), {"__name__": "__readme__"})
