"""Model cards for genlab checkpoints (SPEC H5).

``build_model_card`` returns a ``huggingface_hub.ModelCard``: YAML metadata from ``ModelCardData``
(``library_name: transformers``, tags including ``genlab``, ``pipeline_tag``, ``license``, ``datasets``,
``base_model`` when there is one) and a ``model-index`` whose results are READ from benchmark JSON files
(SPEC section B), never typed in. The body shows those figures with their goals, the machine they were measured on,
a usage snippet and the training configuration. ``genlab.hub.write_card`` builds one from a run directory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from ..hub import push_run_dir
from ..runs import MANIFEST
from .bench import BenchReport, eval_results, load_bench, results_markdown

__all__ = ["BenchReport", "build_model_card", "default_usage_snippet", "load_bench", "read_run_info"]

# Manifest keys that become card metadata; every other manifest key is shown as training configuration.
NO_PIPELINE = ("merge", "planner")  # their generate() is not GenerationMixin's: no transformers pipeline runs them
CARD_KEYS = ("system", "model_name", "base_model", "datasets", "tags", "pipeline_tag", "license", "repo_id",
             "usage_snippet")
UNVERIFIED_LICENSE = (
    "The genlab code that defines and trains this model is Apache-2.0. No licence is asserted for the weights: "
    "they were trained on the data listed above, whose terms genlab has not verified (see the genlab README). "
    "Check those terms before you redistribute or build on the weights.")
_AUTO_CLASS_PREFERENCE = ("AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModelForSeq2SeqLM", "AutoModel")


def is_hub_id(name: str) -> bool:
    """``owner/name`` as the Hub spells repo ids, and not a path on this machine."""
    return re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not Path(name).exists()


def read_run_info(run_dir: str | os.PathLike) -> dict:
    """A run directory's manifest (``genlab_run.json``) plus ``config.json`` under ``"model_config"``."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {MANIFEST}: not a complete genlab run directory")
    info = json.loads(manifest_path.read_text(encoding="utf-8"))
    config_path = run_dir / "config.json"
    if config_path.is_file():
        info["model_config"] = json.loads(config_path.read_text(encoding="utf-8"))
    info.setdefault("model_name", run_dir.resolve().name)
    return info


def default_usage_snippet(model_id: str, model_config: Mapping | None = None, *, has_tokenizer: bool = True) -> str:
    """A snippet that loads ``model_id`` with the fitting ``Auto*`` class and generates a few tokens.

    The class comes from ``auto_map`` (remote code, hence ``trust_remote_code=True``) or from the architecture name.
    Architectures whose ``generate`` differs should put their own ``usage_snippet`` in the run manifest.
    """
    model_config = model_config or {}
    auto_map = model_config.get("auto_map") or {}
    architectures = model_config.get("architectures") or []
    if auto_map:
        auto_class = next((name for name in _AUTO_CLASS_PREFERENCE if name in auto_map), "AutoModel")
    else:
        is_causal = any(arch.endswith("ForCausalLM") for arch in architectures)
        auto_class = "AutoModelForCausalLM" if is_causal else "AutoModel"
    trust = ", trust_remote_code=True" if auto_map else ""
    if has_tokenizer:
        return (f"from transformers import {auto_class}, AutoTokenizer\n\n"
                f"tokenizer = AutoTokenizer.from_pretrained({model_id!r}{trust})\n"
                f"model = {auto_class}.from_pretrained({model_id!r}{trust})\n"
                f"inputs = tokenizer(\"今天天气很好\", return_tensors=\"pt\")\n"
                f"output = model.generate(**inputs, max_new_tokens=20, do_sample=False)\n"
                f"print(tokenizer.decode(output[0], skip_special_tokens=True))\n")
    return (f"import torch\nfrom transformers import {auto_class}\n\n"
            f"model = {auto_class}.from_pretrained({model_id!r}{trust})\n"
            f"input_ids = torch.tensor([[1, 2, 3]])\n"
            f"print(model.generate(input_ids, max_new_tokens=8, do_sample=False))\n")


def build_model_card(
    run_dir_or_info: str | os.PathLike | Mapping,
    bench_json_paths: Iterable[str | os.PathLike] = (),
    *,
    usage_snippet: str,
    model_name: str | None = None,
    base_model: str | None = None,
    datasets: Iterable[str] = (),
    tags: Iterable[str] = (),
    pipeline_tag: str | None = None,
    license: str | None = None,
) -> ModelCard:
    """Build the card of one model (SPEC H5).

    ``run_dir_or_info`` is a run directory (its ``genlab_run.json`` and ``config.json`` are read) or an info
    mapping with the same keys (``system``, ``model_name``, ``base_model``, ``datasets``, ...; see ``CARD_KEYS``).
    Explicit arguments win over the manifest. Metadata stays honest: ``datasets`` holds only the Hub ids passed
    here (the manifest's ``datasets`` describe registry corpora and go to a "Training data" section); ``base_model``
    only a Hub id (a local base is named in the text, not linked); ``license`` is the one passed or recorded, else
    ``other`` with a section saying why none is asserted for the weights. Every other manifest key is listed as
    training configuration. ``bench_json_paths`` are SPEC-B benchmark files: each figure becomes a model-index
    result and a table row.
    """
    if isinstance(run_dir_or_info, (str, os.PathLike)):
        info = read_run_info(run_dir_or_info)
    else:
        info = dict(run_dir_or_info)
    reports = [load_bench(path) for path in bench_json_paths]
    system = info.get("system") or (reports[0].system if reports else None)
    name = model_name or info.get("model_name") or f"genlab-{system or 'model'}"
    # a pipeline tag only where `pipeline("text-generation")` works: causal LMs, not MERGE nor the planner
    pipeline_tag = pipeline_tag or info.get("pipeline_tag") or (None if system in NO_PIPELINE else "text-generation")
    base_model = base_model or info.get("base_model") or None
    hub_base = base_model if base_model and is_hub_id(base_model) else None
    training_data = list(info.get("datasets") or [])
    license = license or info.get("license")
    all_tags = ["genlab", *([f"genlab-{system}"] if system else []), *info.get("tags", []), *tags]
    results = [result for report in reports
               for result in eval_results(report, task_type=pipeline_tag or "text2text-generation")]

    data = ModelCardData(
        model_name=name if results else None,  # the model-index's name; no results, no model-index
        library_name="transformers", license=license or "other",
        license_name=None if license else "unverified-training-data",
        pipeline_tag=pipeline_tag, tags=list(dict.fromkeys(all_tags)), datasets=list(datasets) or None,
        base_model=hub_base, eval_results=results or None,
    )
    model_config = info.get("model_config") or {}
    architecture = ", ".join(model_config.get("architectures") or []) or model_config.get("model_type", "")
    intro = f"A genlab `{system}` model" if system else "A genlab model"
    intro += f" (`{architecture}`)" if architecture else ""
    if base_model:
        intro += (f", fine-tuned from [`{base_model}`](https://huggingface.co/{base_model})." if hub_base
                  else f", fine-tuned from the local run `{base_model}`.")
    else:
        intro += "."
    body = [f"# {name}", "", intro, "", "## Usage", "", "```python", usage_snippet.rstrip("\n"), "```", "",
            "## Results", ""]
    if reports:
        body += ["Measured by `genlab bench` (timings are medians after warm-up) on the machine named with each "
                 "table; the model-index above is read from the same files.", ""]
        body += [results_markdown(report) + "\n" for report in reports]
    else:
        body += ["No benchmark results yet: run `genlab bench` and rebuild this card.", ""]
    if training_data:
        body += ["## Training data", "", *[f"- {source}" for source in training_data], ""]
    if not license:
        body += ["## License", "", UNVERIFIED_LICENSE, ""]
    training = {key: value for key, value in info.items() if key not in (*CARD_KEYS, "model_config")}
    if training:
        body += ["## Training configuration", "", "```json",
                 json.dumps(training, indent=2, ensure_ascii=False, sort_keys=True), "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def find_bench_jsons(run_dir: str | os.PathLike) -> list[Path]:
    """``bench.json`` and every ``benchmarks/**/*.json`` of a run directory, sorted."""
    run_dir = Path(run_dir)
    found = [run_dir / "bench.json"] if (run_dir / "bench.json").is_file() else []
    if (run_dir / "benchmarks").is_dir():
        found += sorted((run_dir / "benchmarks").rglob("*.json"))
    return found


def write_card(run_dir: str | os.PathLike, *, repo_id: str | None = None) -> Path:
    """Write ``RUN_DIR/README.md`` from the manifest and any benchmark JSON found (SPEC H5); returns its path.

    The usage snippet is the manifest's ``usage_snippet`` when it has one, else a generic load-and-generate snippet
    for ``repo_id`` (default: the manifest's ``repo_id``, else the run directory path).
    """
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    model_id = repo_id or info.get("repo_id") or str(run_dir)
    snippet = info.get("usage_snippet") or default_usage_snippet(
        model_id, info.get("model_config"), has_tokenizer=any((run_dir / f).is_file() for f in _TOKENIZER_FILES))
    card = build_model_card(info, find_bench_jsons(run_dir), usage_snippet=snippet,
                            model_name=repo_id.split("/")[-1] if repo_id else None)
    path = run_dir / "README.md"
    card.save(path)
    return path


def push_with_card(run_dir: str | os.PathLike, repo_id: str, **push_options) -> str:
    """``push_run_dir`` after writing the model card when the run directory has none (SPEC H4, H5)."""
    run_dir = Path(run_dir)
    if not (run_dir / "README.md").is_file() and (run_dir / MANIFEST).is_file():
        write_card(run_dir, repo_id=repo_id)
    return push_run_dir(run_dir, repo_id, **push_options)
