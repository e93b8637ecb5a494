"""Run directories: what `genlab train` writes, written so that an interruption never leaves half of it.

A run directory is a loadable HF checkpoint (``config.json``, ``model.safetensors``, tokenizer files,
``generation_config.json``) plus ``genlab_run.json``, a small manifest (system, preset, measured numbers).
Trainer checkpoints for resuming live in ``RUN_DIR/checkpoints/``. The final export is written into a
temporary sibling directory and moved in entry by entry, the manifest last: a run directory without a
manifest is incomplete and is never reused (SPEC H6, issue: foundation "bad input").
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from transformers.trainer_utils import get_last_checkpoint

from .distributed import is_main_process, wait_for_everyone

MANIFEST = "genlab_run.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "runs"  # where the Trainer's TensorBoard callback writes, under the checkpoints (the Hub reads it here)
TRAINER_LOG = "trainer_log.json"  # the Trainer's log_history, written by recipes whose logs are plotted or read


@dataclass(frozen=True)
class RunDir:
    """What a recipe returns: the complete run directory and its manifest."""

    path: Path
    manifest: dict

    @classmethod
    def read(cls, path: str | os.PathLike) -> "RunDir":
        """A complete run (``FileNotFoundError`` naming the directory otherwise)."""
        return cls(Path(path), read_manifest(path))


def prepare_run_dir(run_dir: str | os.PathLike) -> Path:
    """Create ``run_dir`` (and parents) and check it is writable, with a clear error when it is not."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise PermissionError(f"run directory {run_dir} is not writable: {err.strerror or err}") from None
    for leftover in run_dir.glob(".export-*"):  # an export interrupted by a crash
        shutil.rmtree(leftover, ignore_errors=True)
    return run_dir


def export_run(run_dir: str | os.PathLike, save: Callable[[Path], None], manifest: dict) -> Path:
    """Write the final artefacts: ``save(tmp_dir)`` then move every entry into ``run_dir``, manifest last.

    Under ``accelerate launch`` / ``torchrun`` only the main process writes; every process returns once the
    run directory is complete (SPEC H6).
    """
    try:
        if is_main_process():
            _export(Path(run_dir), save, manifest)
    finally:
        wait_for_everyone()
    return Path(run_dir)


def _export(run_dir: Path, save: Callable[[Path], None], manifest: dict) -> None:
    run_dir = prepare_run_dir(run_dir)
    (run_dir / MANIFEST).unlink(missing_ok=True)  # the run is incomplete until the new manifest lands
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=run_dir))
    try:
        save(tmp)
        if (run_dir / CHECKPOINTS / TENSORBOARD).is_dir():  # the Trainer's event files, beside the model for the Hub
            shutil.copytree(run_dir / CHECKPOINTS / TENSORBOARD, tmp / TENSORBOARD)
        manifest["checksums"] = {f.name: sha256(f) for f in sorted(tmp.glob("*.safetensors"))}
        for entry in sorted(tmp.iterdir()):
            target = run_dir / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
        write_manifest(run_dir, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_model_run(run_dir: str | os.PathLike, model, tokenizer, manifest: dict,
                     extra_files: dict[str, str] | None = None) -> Path:
    """The usual export: ``model`` and ``tokenizer`` (plus small text files) into ``run_dir``, manifest last."""

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")

    return export_run(run_dir, save, manifest)


def write_manifest(run_dir: str | os.PathLike, manifest: dict) -> Path:
    """Atomically (re)write ``genlab_run.json``."""
    path = Path(run_dir) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_manifest(run_dir: str | os.PathLike) -> dict:
    """The manifest of a complete run; ``FileNotFoundError`` naming the directory otherwise."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a complete genlab run (no {MANIFEST}); train it first")
    return json.loads(path.read_text(encoding="utf-8"))


def is_complete(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / MANIFEST).is_file()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_errors(run_dir: str | os.PathLike) -> list[str]:
    """The weight files of a complete run that are missing or differ from the checksums its manifest recorded
    at export (a flipped byte loads fine, so loading alone cannot tell); empty for a sound run."""
    recorded = read_manifest(run_dir).get("checksums", {})
    return [name for name, digest in recorded.items()
            if not (Path(run_dir) / name).is_file() or sha256(Path(run_dir) / name) != digest]


def sound_manifest(run_dir: str | os.PathLike) -> dict:
    """The manifest of a complete run whose weights still match their export checksums; ``ValueError`` naming
    the changed files otherwise (a truncated or corrupted run is never used or measured again)."""
    manifest = read_manifest(run_dir)
    changed = checksum_errors(run_dir)
    if changed:
        raise ValueError(f"{run_dir}: {', '.join(changed)} changed since export (truncated or corrupted); delete "
                         "the run directory to retrain it, or re-download it")
    return manifest


def last_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """The newest Trainer checkpoint under ``RUN_DIR/checkpoints`` (for ``resume_from_checkpoint``)."""
    ckpt_dir = Path(run_dir) / CHECKPOINTS
    return get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
