"""Reuse in the demo: a complete run that loads is reused; a corrupted one is reported, deleted and retrained;
measurements are cached under a key made of the manifests they were taken on."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from transformers import AutoModelForCausalLM, TrainerCallback

from ..runs import MANIFEST, TRAINER_LOG, RunDir, checksum_errors, is_complete, last_checkpoint, read_manifest
from .console import Console
from .settings import Demo

SCALE_RECORD = "demo_scale.json"


def claim_root(demo: Demo) -> None:
    """Record the preset and its sizes in ``ROOT/demo_scale.json``; a root that records others is a ``ValueError``
    (its complete runs would be reused as if trained with this preset's steps). A root without the record (made
    before it existed) is taken as it is."""
    path, wanted = demo.root / SCALE_RECORD, {"preset": demo.preset, **asdict(demo.scale)}
    if path.is_file():
        found = json.loads(path.read_text(encoding="utf-8"))
        if found != wanted:
            differ = ", ".join(sorted(k for k in wanted if found.get(k) != wanted[k]))
            raise ValueError(f"--run-dir {demo.root} holds a demo made with --preset {found.get('preset')} (other "
                             f"{differ}): pass another --run-dir, or delete it to retrain")
    path.write_text(json.dumps(wanted, indent=1), encoding="utf-8")


def load_error(run_dir: Path, load: Callable[[Path], object]) -> str | None:
    """Why the model files of a complete run cannot be reused (``None`` when they load and match their checksums)."""
    changed = checksum_errors(run_dir)
    if changed:
        return f"{', '.join(changed)} no longer match the checksums recorded at export"
    try:
        load(run_dir)
    except Exception as error:  # any failure to load means the checkpoint cannot be reused
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


def ensure_run(name: str, run_dir: Path, load: Callable[[Path], object],
               train: Callable[[Sequence[TrainerCallback]], RunDir], demo: Demo, steps: int) -> dict:
    """Reuse a complete run that loads; a corrupted one is reported, deleted and retrained; else train it for its
    ``steps`` (``train(callbacks)``, the stage's progress bar among the callbacks). A run with fewer steps than
    planned (the safety cap stopped it) is announced and listed in ``demo.cut_short``."""
    console = demo.console
    manifest = reused_manifest(name, run_dir, load, console)
    if manifest is not None:
        console.skip(steps)
    else:
        console.say(f"[genlab demo] {name}: training {steps} steps → {run_dir}")
        manifest = train_or_restart(name, run_dir, lambda: train([console.progress()]), console)
        error = load_error(run_dir, load)
        if error is not None:
            raise RuntimeError(f"{name}: the freshly trained run in {run_dir} does not load: {error}")
    if manifest.get("steps", steps) < steps:
        note = (f"{name}: trained {manifest['steps']} of {steps} steps (the --budget safety cap of "
                f"{demo.budget:g} s stopped it); results not representative")
        demo.cut_short.append(note)
        console.say(f"[genlab demo] {note}")
    return manifest


def reused_manifest(name: str, run_dir: Path, load: Callable[[Path], object], console: Console) -> dict | None:
    """The manifest of a complete run that loads; a corrupted run is reported and deleted (``None``)."""
    if not is_complete(run_dir):
        return None
    error = load_error(run_dir, load)
    if error is None:
        console.say(f"[genlab demo] {name}: reusing the complete run in {run_dir}")
        return read_manifest(run_dir)
    console.say(f"[genlab demo] {name}: CORRUPTED checkpoint in {run_dir} ({error}) — deleting it and retraining")
    shutil.rmtree(run_dir)
    return None


def train_or_restart(name: str, run_dir: Path, train: Callable[[], RunDir], console: Console) -> dict:
    """Train (resuming a checkpoint left by an interrupted demo); a checkpoint that cannot resume is dropped."""
    try:
        return train().manifest
    except Exception as error:
        if last_checkpoint(run_dir) is None:
            raise
        console.say(f"[genlab demo] {name}: resuming from {last_checkpoint(run_dir)} failed ({type(error).__name__}: "
                    f"{error}) — starting this model over")
        shutil.rmtree(run_dir)
        return train().manifest


def cached(path: Path, run_dirs: list[Path], preset: str, compute: Callable[[], dict],
           say: Callable[[str], None] = print) -> dict:
    """``compute()`` unless ``path`` holds a result taken on the same manifests (same trained models)."""
    digest = hashlib.sha256(preset.encode())
    for run_dir in run_dirs:
        digest.update((run_dir / MANIFEST).read_bytes())
    key = digest.hexdigest()
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("key") == key:
            say(f"[genlab demo] reusing the measurements in {path}")
            return stored["result"]
    started = time.monotonic()
    result = compute()
    result["measure_s"] = round(time.monotonic() - started, 1)
    path.write_text(json.dumps({"key": key, "result": result}, ensure_ascii=False, indent=1), encoding="utf-8")
    return result


def measured(demo: Demo, path: Path, run_dirs: list[Path], compute: Callable[[], dict]) -> dict:
    """A stage's measurements (``cached``), its progress bar saying so."""
    demo.console.measuring()
    return cached(path, run_dirs, demo.preset, compute, say=demo.console.say)


def training_log(run_dir: Path) -> list[dict]:
    """The Trainer's ``log_history`` of a run (``RUN_DIR/trainer_log.json``, written when training ends)."""
    path = run_dir / TRAINER_LOG
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def load_causal_lm(run_dir: Path):
    return AutoModelForCausalLM.from_pretrained(run_dir).eval()
