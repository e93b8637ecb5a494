"""Run directory -> Hub repo (SPEC H4); what ``genlab push`` calls (the card comes from ``genlab.hub_cards``).

A run directory (what ``genlab train`` writes) holds an HF checkpoint (``config.json``, ``model.safetensors``,
tokenizer files, ``generation_config.json``), ``genlab_run.json`` (the manifest) and optionally benchmark results
and a model card. ``push_run_dir`` uploads the directory (without the Trainer's resume checkpoints) with
``HfApi.upload_folder``.

Endpoint gotcha: huggingface_hub reads ``HF_ENDPOINT`` once, at import, and ``import genlab`` imports it; an
``HfApi(endpoint=...)`` then uses that endpoint for its own calls only (the agent-harness registry fetched with the
first request still goes to the import-time endpoint unless telemetry is off). ``use_hub_endpoint`` redirects the
whole process for a block; ``push_run_dir(endpoint=...)`` runs inside it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


__all__ = ["push_run_dir", "use_hub_endpoint"]

# Never uploaded: Trainer resume checkpoints (optimizer states), interrupted exports, temporary files.
PUSH_IGNORE = ["checkpoints/**", "checkpoint-*/**", ".export-*/**", "*.tmp"]


@contextlib.contextmanager
def use_hub_endpoint(endpoint: str, *, cache_dir: str | os.PathLike | None = None) -> Iterator[None]:
    """Point this process's ``huggingface_hub`` and transformers at ``endpoint`` for the block, then restore.

    ``HF_ENDPOINT`` is read once when huggingface_hub is imported, so changing the variable later does nothing; this
    patches ``huggingface_hub.constants`` (endpoint, url template, offline flag, telemetry off, optionally the cache
    dir), the module-level ``HfApi`` behind ``huggingface_hub.create_repo`` & co, and resets transformers' shared
    ``HfApi``. Not thread-safe: meant for tests, scripts and the CLI.
    """
    from huggingface_hub import constants, hf_api

    import transformers.utils.hub as transformers_hub

    endpoint = endpoint.rstrip("/")
    patched = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,  # telemetry on = fetch {ENDPOINT}/api/agent-harnesses on the first request
    }
    if cache_dir is not None:
        patched["HF_HUB_CACHE"] = str(cache_dir)
    saved = {name: getattr(constants, name) for name in patched}
    saved_api_endpoint = hf_api.api.endpoint
    saved_transformers_api = getattr(transformers_hub, "_hf_api", None)
    try:
        for name, value in patched.items():
            setattr(constants, name, value)
        hf_api.api.endpoint = endpoint
        transformers_hub._hf_api = None  # rebuilt lazily with the patched endpoint
        yield
    finally:
        for name, value in saved.items():
            setattr(constants, name, value)
        hf_api.api.endpoint = saved_api_endpoint
        transformers_hub._hf_api = saved_transformers_api


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

    ``endpoint`` defaults to
    ``HF_ENDPOINT`` (huggingface.co); an explicit one is used for every request of the push (``use_hub_endpoint``,
    which also lifts ``HF_HUB_OFFLINE`` for the block). An unreachable endpoint raises ``ConnectionError`` naming it.
    """
    from huggingface_hub import HfApi

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} holds no checkpoint (no config.json): nothing to push")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        with use_hub_endpoint(endpoint) if endpoint else contextlib.nullcontext():
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(folder_path=run_dir, repo_id=repo_id, ignore_patterns=list(PUSH_IGNORE),
                                     commit_message=commit_message or f"Upload {run_dir.name} with genlab push")
    except _transport_errors() as error:
        raise ConnectionError(f"could not reach the Hub at {api.endpoint} to push {run_dir} to {repo_id}: "
                              f"{type(error).__name__}: {error}. Check the endpoint (HF_ENDPOINT or --endpoint) "
                              "and that the server is running.") from error
    return str(info.commit_url if hasattr(info, "commit_url") else info)
