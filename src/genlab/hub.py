"""Run directory -> model card -> Hub repo (SPEC H4, H5); what ``genlab card`` and ``genlab push`` call.

A run directory (what ``genlab train`` writes) holds an HF checkpoint (``config.json``, ``model.safetensors``,
tokenizer files, ``generation_config.json``), ``genlab_run.json`` (the manifest) and optionally benchmark results
(``bench.json``, ``benchmarks/**/*.json``). ``write_card`` turns those into ``README.md``; ``push_run_dir`` uploads
the directory (without the Trainer's resume checkpoints) with ``HfApi.upload_folder``.

Endpoint: ``push_run_dir(endpoint=...)`` talks to that Hub for its own calls, but huggingface_hub reads
``HF_ENDPOINT`` once, at import, for everything else (e.g. the agent-harness registry it fetches with its first
request unless ``HF_HUB_DISABLE_TELEMETRY=1``). To work against a mirror or ``genlab.hub_server``, prefer
``HF_ENDPOINT=...`` in the environment of the whole process.
"""

from __future__ import annotations

import os
from pathlib import Path

from .hub_cards import build_model_card, default_usage_snippet, read_run_info
from .runs import MANIFEST

__all__ = ["find_bench_jsons", "push_run_dir", "write_card"]

# Never uploaded: Trainer resume checkpoints (optimizer states), interrupted exports, temporary files.
PUSH_IGNORE = ["checkpoints/**", "checkpoint-*/**", ".export-*/**", "*.tmp"]
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


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level exception classes of whichever HTTP client this huggingface_hub uses."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name in ("httpx2", "httpx", "requests"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        for attribute in ("TransportError", "ConnectionError", "Timeout"):
            cls = getattr(module, attribute, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                errors.append(cls)
    return tuple(errors)


def push_run_dir(run_dir: str | os.PathLike, repo_id: str, *, endpoint: str | None = None,
                 token: str | bool | None = None, private: bool = False, commit_message: str | None = None) -> str:
    """Create ``repo_id`` (if needed) and upload the run directory to it; returns the commit url (SPEC H4).

    Writes the model card first when the directory has no ``README.md``. ``endpoint`` defaults to
    ``HF_ENDPOINT`` (huggingface.co). An unreachable endpoint raises ``ConnectionError`` naming it.
    """
    from huggingface_hub import HfApi

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} holds no checkpoint (no config.json): nothing to push")
    if not (run_dir / "README.md").is_file() and (run_dir / MANIFEST).is_file():
        write_card(run_dir, repo_id=repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=run_dir, repo_id=repo_id, ignore_patterns=list(PUSH_IGNORE),
                                 commit_message=commit_message or f"Upload {run_dir.name} with genlab push")
    except _transport_errors() as error:
        raise ConnectionError(f"could not reach the Hub at {api.endpoint} to push {run_dir} to {repo_id}: "
                              f"{type(error).__name__}: {error}. Check the endpoint (HF_ENDPOINT or --endpoint) "
                              "and that the server is running.") from error
    return str(info.commit_url if hasattr(info, "commit_url") else info)
