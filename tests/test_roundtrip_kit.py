"""The round-trip kit (genlab.testing) on a toy remote-code model and on the AR baseline (SPEC H2, H3, H4)."""

import shutil
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from transformers import Qwen2Config, Qwen2ForCausalLM

from genlab.hub import push_run_dir
from genlab.testing import (
    assert_hub_roundtrip,
    assert_remote_code_roundtrip,
    assert_save_load_roundtrip,
    run_in_clean_process,
    use_hub_endpoint,
)

sys.path.insert(0, str(Path(__file__).parent))  # tests/toy_remote is a package beside this file
from toy_remote.configuration_toy import ToyConfig  # noqa: E402
from toy_remote.modeling_toy import ToyModel  # noqa: E402


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    return ToyModel(ToyConfig(vocab_size=50, hidden_size=16, num_layers=2)), {"input_ids": torch.randint(0, 50, (2, 7))}


@pytest.fixture(scope="module")
def toy_checkpoint(toy, tmp_path_factory):
    """The toy saved once and checked in-process; later tests reuse the directory."""
    model, inputs = toy
    return assert_save_load_roundtrip(model, inputs, tmp_path=tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def qwen2():
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return Qwen2ForCausalLM(config), {"input_ids": torch.randint(0, 300, (2, 9))}


GREEDY_8 = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "pad_token_id": 0}


def test_toy_save_load_writes_safetensors_and_sibling_code(toy_checkpoint):
    files = {p.name for p in toy_checkpoint.iterdir()}
    assert {"model.safetensors", "modeling_toy.py", "configuration_toy.py", "toy_layers.py"} <= files


def test_toy_loads_in_clean_process_without_genlab(toy, toy_checkpoint, tmp_path):
    model, inputs = toy
    assert_remote_code_roundtrip(model, inputs, tmp_path=tmp_path, checkpoint_dir=toy_checkpoint)


def test_clean_process_refuses_genlab(toy, toy_checkpoint, tmp_path):
    """A checkpoint whose code imports genlab must fail: proves that the child really cannot import it."""
    _, inputs = toy
    broken = tmp_path / "imports_genlab"
    shutil.copytree(toy_checkpoint, broken)
    code = broken / "toy_layers.py"
    code.write_text("import genlab\n" + code.read_text())
    with pytest.raises(AssertionError, match="No module named 'genlab'"):
        run_in_clean_process(str(broken), inputs, tmp_path=tmp_path)


def test_toy_hub_push_pull(toy, hub_server, tmp_path):
    model, inputs = toy
    commit_url = assert_hub_roundtrip(model, inputs, endpoint=hub_server.endpoint, repo_id="genlab-tests/toy",
                                      tmp_path=tmp_path)
    assert commit_url.startswith(hub_server.endpoint)
    assert {"modeling_toy.py", "toy_layers.py", "model.safetensors"} <= set(hub_server.list_files("genlab-tests/toy"))


def test_qwen2_save_load_logits_and_greedy_generate(qwen2, tmp_path):
    model, inputs = qwen2
    assert_save_load_roundtrip(model, inputs, tmp_path=tmp_path)
    assert_save_load_roundtrip(model, inputs, tmp_path=tmp_path, call="generate", call_kwargs=GREEDY_8)


def test_qwen2_hub_push_pull_logits_and_greedy_generate(qwen2, hub_server, tmp_path):
    model, inputs = qwen2
    common = dict(endpoint=hub_server.endpoint, repo_id="genlab-tests/qwen2-ar", tmp_path=tmp_path,
                  auto_class="AutoModelForCausalLM")
    assert_hub_roundtrip(model, inputs, **common)
    assert_hub_roundtrip(model, inputs, call="generate", call_kwargs=GREEDY_8, **common)


def test_hub_server_answers_missing_repo_revision_and_file_like_the_hub(hub_server, tmp_path):
    """Bad input: the client must see the Hub's error classes (X-Error-Code), not a generic HTTP error."""
    endpoint, cache = hub_server.endpoint, tmp_path / "cache"
    with use_hub_endpoint(endpoint, cache_dir=cache):
        HfApi(endpoint=endpoint, token=False).create_repo("genlab-tests/errors")
        assert hf_hub_download("genlab-tests/errors", ".gitattributes", endpoint=endpoint, cache_dir=cache)
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("genlab-tests/missing", "config.json", endpoint=endpoint, cache_dir=cache)
        with pytest.raises(RevisionNotFoundError):
            hf_hub_download("genlab-tests/errors", ".gitattributes", revision="nope", endpoint=endpoint,
                            cache_dir=cache)
        with pytest.raises(EntryNotFoundError):
            hf_hub_download("genlab-tests/errors", "config.json", endpoint=endpoint, cache_dir=cache)


def test_push_to_unreachable_endpoint_names_it(tmp_path):
    """Bad input: nothing listens on the discard port; the error says which endpoint failed."""
    closed = "http://127.0.0.1:9"
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConnectionError, match=r"http://127\.0\.0\.1:9"):
        push_run_dir(tmp_path, "genlab-tests/nowhere", endpoint=closed)
