"""Round-trip test kit every architecture's tests use (SPEC H2, H3, H4).

Three checks, each returning what it produced so a test can reuse it:

- ``assert_save_load_roundtrip``: ``save_pretrained`` (safetensors) -> ``type(model).from_pretrained`` in this
  process -> identical outputs.
- ``assert_remote_code_roundtrip`` (H2): the checkpoint loads with ``getattr(transformers, auto_class)
  .from_pretrained(dir, trust_remote_code=True)`` in a FRESH interpreter (``python -I``, a temporary ``HF_HOME``,
  ``HF_HUB_OFFLINE=1``) where ``import genlab`` raises ``ModuleNotFoundError`` (genlab is installed editable, so
  ``-I`` alone would still find it: a ``sys.meta_path`` blocker refuses it). The child checks that genlab was never
  imported and that the model class came from the checkpoint's own code (``transformers_modules.*``), runs the same
  call on the same inputs and sends the outputs back; they must be EQUAL (``torch.equal``), not close.
- ``assert_hub_roundtrip`` (H4): ``model.push_to_hub`` through the real ``huggingface_hub`` client to a
  Hub-compatible server (``genlab.hub_server.LocalHubServer``), then the same clean-process load from the repo id
  with ``HF_ENDPOINT`` pointing at it.

Outputs compared: ``output[output_key]`` (default ``"logits"`` for ``forward``, ``"sequences"`` for ``generate``);
a tensor output (plain ``generate``) is compared whole; a list of keys compares each. Inputs and ``call_kwargs``
travel to the child with ``torch.save``, so keep them to tensors and plain Python values. What could make two runs
differ is pinned: ``model.eval()``, ``torch.no_grad()``, and the child uses this process's ``torch.get_num_threads()``.

Gotchas this kit handles: ``huggingface_hub`` reads ``HF_ENDPOINT`` once, at import (``huggingface_hub.constants``)
and ``import genlab`` imports transformers, hence huggingface_hub; so in-process pushes go through
``genlab.hub.use_hub_endpoint`` (re-exported here), which patches the constants, the module-level ``HfApi`` and
transformers' shared one, and turns telemetry off: otherwise the first request of a process fetches
``{ENDPOINT}/api/agent-harnesses``, from huggingface.co whatever ``endpoint=`` the call was given. Children get
a proxy that points at a closed port for everything except 127.0.0.1, so a stray request to huggingface.co fails at
once instead of leaving the machine.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .hub import use_hub_endpoint

__all__ = [
    "assert_hub_roundtrip",
    "assert_outputs_equal",
    "assert_remote_code_roundtrip",
    "assert_save_load_roundtrip",
    "run_code_in_clean_process",
    "run_in_clean_process",
    "select_outputs",
    "use_hub_endpoint",
]

OutputKey = str | Sequence[str] | None
_CLOSED_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens there
_CHILD_TIMEOUT_S = 300


def select_outputs(output, output_key):
    """The part of a model call a round trip compares, detached on CPU.

    A tensor output is returned whole; otherwise ``output[output_key]`` (``ModelOutput`` / dict) or
    ``getattr(output, output_key)``; a list of keys gives ``{key: value}``. This function's source also runs in the
    clean child process, so it uses nothing but ``torch``.
    """

    def detach(value):
        if isinstance(value, torch.Tensor):
            return value.detach().cpu()
        if isinstance(value, (list, tuple)):
            return [detach(v) for v in value]
        if isinstance(value, dict):
            return {k: detach(v) for k, v in value.items()}
        return value

    if isinstance(output_key, (list, tuple)):
        return {key: select_outputs(output, key) for key in output_key}
    if isinstance(output, torch.Tensor):
        return detach(output)
    if hasattr(output, "keys") and output_key in output.keys():
        return detach(output[output_key])
    if hasattr(output, output_key) and getattr(output, output_key) is not None:
        return detach(getattr(output, output_key))
    found = list(output.keys()) if hasattr(output, "keys") else type(output).__name__
    raise KeyError(f"output has no {output_key!r}; it has {found}")


def assert_outputs_equal(expected, actual, where: str = "outputs") -> None:
    """Exact equality of nested tensors / lists / dicts / scalars, with the first mismatch named."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            raise AssertionError(f"{where}: expected a tensor, got {type(actual).__name__}")
        if expected.shape != actual.shape or expected.dtype != actual.dtype:
            raise AssertionError(f"{where}: expected {tuple(expected.shape)} {expected.dtype}, "
                                 f"got {tuple(actual.shape)} {actual.dtype}")
        if not torch.equal(expected, actual):
            diff = (expected.double() - actual.double()).abs()
            raise AssertionError(f"{where}: tensors differ at {int((diff > 0).sum())} of {diff.numel()} positions "
                                 f"(max abs difference {diff.max().item():.3e})")
    elif isinstance(expected, dict):
        if not isinstance(actual, dict) or set(expected) != set(actual):
            raise AssertionError(f"{where}: expected keys {sorted(expected)}, got {actual!r:.200}")
        for key in expected:
            assert_outputs_equal(expected[key], actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)) or len(expected) != len(actual):
            raise AssertionError(f"{where}: expected a sequence of {len(expected)}, got {actual!r:.200}")
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_outputs_equal(e, a, f"{where}[{i}]")
    elif expected != actual:
        raise AssertionError(f"{where}: expected {expected!r}, got {actual!r}")


def _default_key(call: str, output_key: OutputKey) -> OutputKey:
    if output_key is not None:
        return output_key
    return "sequences" if call == "generate" else "logits"


def _run_call(model, inputs: Mapping, call: str, call_kwargs: Mapping | None, output_key: OutputKey):
    """Run ``model.<call>(**inputs, **call_kwargs)`` in eval mode without grad; restore the training flag."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = getattr(model, call)(**inputs, **(call_kwargs or {}))
    finally:
        model.train(was_training)
    return select_outputs(output, _default_key(call, output_key))


def assert_save_load_roundtrip(model, inputs: Mapping, *, tmp_path, call: str = "forward",
                               call_kwargs: Mapping | None = None, output_key: OutputKey = None) -> Path:
    """Save (safetensors) and reload with the model's own class in this process; outputs must be identical.

    Returns the checkpoint directory (pass it as ``checkpoint_dir`` to ``assert_remote_code_roundtrip``).
    """
    checkpoint = Path(tempfile.mkdtemp(prefix="ckpt_", dir=tmp_path))
    model.save_pretrained(checkpoint)  # transformers 5 writes safetensors only
    if not list(checkpoint.glob("model*.safetensors")):
        raise AssertionError(f"no safetensors weights were saved (SPEC H3): {sorted(os.listdir(checkpoint))}")
    reloaded = type(model).from_pretrained(checkpoint)
    expected = _run_call(model, inputs, call, call_kwargs, output_key)
    assert_outputs_equal(expected, _run_call(reloaded, inputs, call, call_kwargs, output_key),
                         f"{type(model).__name__}.{call} after save/load")
    return checkpoint


def assert_remote_code_roundtrip(model, inputs: Mapping, *, tmp_path, call: str = "forward",
                                 call_kwargs: Mapping | None = None, output_key: OutputKey = None,
                                 auto_class: str = "AutoModel", checkpoint_dir: str | os.PathLike | None = None
                                 ) -> Path:
    """SPEC H2: the checkpoint loads and gives identical outputs in a clean process where genlab is not importable.

    ``checkpoint_dir``: an existing checkpoint of this very model (e.g. from ``assert_save_load_roundtrip``) to
    skip saving again. Returns the checkpoint directory.
    """
    if checkpoint_dir is None:
        checkpoint_dir = Path(tempfile.mkdtemp(prefix="ckpt_", dir=tmp_path))
        model.save_pretrained(checkpoint_dir)
    expected = _run_call(model, inputs, call, call_kwargs, output_key)
    actual = run_in_clean_process(
        str(checkpoint_dir), inputs, tmp_path=tmp_path, call=call, call_kwargs=call_kwargs,
        output_key=_default_key(call, output_key), auto_class=auto_class,
        expect_remote_code=getattr(type(model), "_auto_class", None) is not None,
    )
    assert_outputs_equal(expected, actual, f"{auto_class}.from_pretrained(<checkpoint>).{call} in a clean process")
    return Path(checkpoint_dir)


def assert_hub_roundtrip(model, inputs: Mapping, *, endpoint: str, repo_id: str, tmp_path, call: str = "forward",
                         call_kwargs: Mapping | None = None, output_key: OutputKey = None,
                         auto_class: str = "AutoModel", push_kwargs: Mapping | None = None) -> str:
    """SPEC H4: ``model.push_to_hub(repo_id)`` to ``endpoint``, then a clean-process ``from_pretrained(repo_id,
    trust_remote_code=True)`` with ``HF_ENDPOINT=endpoint`` gives identical outputs. Returns the commit url.

    The push runs in this process through ``use_hub_endpoint`` with ``token=False`` (a local server needs none).
    """
    with use_hub_endpoint(endpoint, cache_dir=Path(tempfile.mkdtemp(prefix="hub_cache_", dir=tmp_path))):
        commit_url = model.push_to_hub(repo_id, **{"token": False, **(push_kwargs or {})})
    expected = _run_call(model, inputs, call, call_kwargs, output_key)
    actual = run_in_clean_process(
        repo_id, inputs, tmp_path=tmp_path, call=call, call_kwargs=call_kwargs,
        output_key=_default_key(call, output_key), auto_class=auto_class, endpoint=endpoint,
        expect_remote_code=getattr(type(model), "_auto_class", None) is not None,
    )
    assert_outputs_equal(expected, actual, f"{auto_class}.from_pretrained({repo_id!r}).{call} from {endpoint}")
    return str(commit_url)


_CHILD_PRELUDE = '''\
import importlib.abc
import json
import sys


class _BlockGenlab(importlib.abc.MetaPathFinder):
    """genlab is installed editable in this interpreter: refuse it, the checkpoint must bring its own code (H2)."""

    def find_spec(self, name, path=None, target=None):
        if name == "genlab" or name.startswith("genlab."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked in the clean round-trip process)", name=name)
        return None


sys.meta_path.insert(0, _BlockGenlab())

import torch
import transformers
'''

_CHILD_MAIN = '''
def main(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(spec["threads"])
    payload = torch.load(spec["payload"], weights_only=False)
    model = getattr(transformers, spec["auto_class"]).from_pretrained(spec["source"], trust_remote_code=True)
    model.eval()
    cls = type(model)
    where = f"{cls.__module__}.{cls.__qualname__}"
    if spec["expect_remote_code"]:
        module_file = getattr(sys.modules[cls.__module__], "__file__", "") or ""
        if not cls.__module__.startswith("transformers_modules.") or not module_file.startswith(spec["hf_home"]):
            raise AssertionError(f"{where} ({module_file}) was not loaded from the checkpoint's own code")
    with torch.no_grad():
        output = getattr(model, spec["call"])(**payload["inputs"], **payload["call_kwargs"])
    leaked = sorted(m for m in sys.modules if m == "genlab" or m.startswith("genlab."))
    if leaked:
        raise AssertionError(f"genlab was imported in the clean process: {leaked}")
    torch.save({"outputs": select_outputs(output, spec["output_key"]), "model_class": where}, spec["result"])


main(sys.argv[1])
'''


def _child_env(hf_home: Path, endpoint: str | None) -> dict[str, str]:
    drop = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "PYTHON")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and "proxy" not in k.lower()}
    env.update(
        HF_HOME=str(hf_home), HF_HUB_OFFLINE="0" if endpoint else "1", HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1", HTTP_PROXY=_CLOSED_PROXY, HTTPS_PROXY=_CLOSED_PROXY,
        ALL_PROXY=_CLOSED_PROXY, NO_PROXY="127.0.0.1,localhost",
    )
    if endpoint:
        env["HF_ENDPOINT"] = endpoint.rstrip("/")
    return env


def run_code_in_clean_process(code: str, *, tmp_path, args: Sequence[str] = (), endpoint: str | None = None,
                              work_dir: str | os.PathLike | None = None) -> str:
    """Run Python ``code`` in a fresh ``python -I`` where ``import genlab`` raises ``ModuleNotFoundError``; return
    its stdout. Temporary ``HF_HOME``; ``HF_HUB_OFFLINE=1`` unless ``endpoint`` is given (then ``HF_ENDPOINT``).
    Non-zero exit -> ``AssertionError`` carrying the child's stderr.
    """
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="clean_process_", dir=tmp_path))
    hf_home = work / "hf_home"
    hf_home.mkdir(exist_ok=True)
    script = work / "child.py"
    script.write_text(_CHILD_PRELUDE + "\n\n" + code)
    setting = f"HF_ENDPOINT={endpoint}" if endpoint else "HF_HUB_OFFLINE=1"
    try:
        proc = subprocess.run([sys.executable, "-I", str(script), *args], cwd=work, capture_output=True, text=True,
                              env=_child_env(hf_home, endpoint), timeout=_CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"clean process ({setting}) timed out after {_CHILD_TIMEOUT_S}s:\n"
                             f"{(error.stderr or '')[-4000:]}") from None
    if proc.returncode != 0:
        raise AssertionError(
            f"clean process (genlab blocked, {setting}) failed with exit {proc.returncode}\n"
            f"--- child stderr (tail) ---\n{proc.stderr[-6000:]}\n--- child stdout (tail) ---\n{proc.stdout[-2000:]}"
        )
    return proc.stdout


def run_in_clean_process(source: str, inputs: Mapping, *, tmp_path, call: str = "forward",
                         call_kwargs: Mapping | None = None, output_key: OutputKey = None,
                         auto_class: str = "AutoModel", endpoint: str | None = None,
                         expect_remote_code: bool = True):
    """Load ``source`` (a checkpoint dir, or a repo id on ``endpoint``) with ``getattr(transformers, auto_class)
    .from_pretrained(source, trust_remote_code=True)`` in a clean process (see ``run_code_in_clean_process``), run
    ``model.<call>(**inputs, **call_kwargs)`` there and return ``select_outputs`` of it.

    With ``expect_remote_code`` the child also checks the class came from the checkpoint's own code.
    """
    work = Path(tempfile.mkdtemp(prefix="clean_process_", dir=tmp_path))
    torch.save({"inputs": dict(inputs), "call_kwargs": dict(call_kwargs or {})}, work / "payload.pt")
    spec = {
        "source": source, "auto_class": auto_class, "call": call, "output_key": _default_key(call, output_key),
        "threads": torch.get_num_threads(), "expect_remote_code": expect_remote_code,
        "hf_home": str(work / "hf_home"), "payload": str(work / "payload.pt"), "result": str(work / "result.pt"),
    }
    (work / "spec.json").write_text(json.dumps(spec))
    code = textwrap.dedent(inspect.getsource(select_outputs)) + _CHILD_MAIN
    try:
        run_code_in_clean_process(code, tmp_path=tmp_path, args=[str(work / "spec.json")], endpoint=endpoint,
                                  work_dir=work)
    except AssertionError as error:
        raise AssertionError(f"loading {source} with {auto_class} in a clean process failed: {error}") from None
    return torch.load(work / "result.pt", weights_only=False)["outputs"]
