"""`genlab train concept --base RUN_DIR` (SPEC C5–C7, H6): LoRA on a frozen base, monitors logged, both save modes reload."""

import json

import pytest
import torch
from transformers import Qwen2ForCausalLM

from genlab.cli import _configs, build_parser
from genlab.data import load_corpus
from genlab.modeling_concept import Qwen2ConceptCompressionForCausalLM
from genlab.trainers import concept

from test_concept import one_torch_thread  # noqa: F401,E402 (autouse fixture)

MONITORS = {"ce_per_token", "compression_ratio", "null_rate", "soft_concept_rate", "tail_mean", "tail_max",
            "concept_usage_entropy"}


@pytest.fixture(scope="module")
def base_and_data(tmp_path_factory, tiny_qwen2_base):
    """A tiny Qwen2 'AR run' (char tokenizer) and a few hundred corpus sentences as a text file."""
    root = tmp_path_factory.mktemp("concept_trainer")
    (root / "base").symlink_to(tiny_qwen2_base, target_is_directory=True)
    base = Qwen2ForCausalLM.from_pretrained(tiny_qwen2_base)
    sentences = load_corpus("news", max_sentences=400)
    text = root / "corpus.txt"
    text.write_text("\n".join(list(sentences["train"]["text"]) + list(sentences["validation"]["text"])), encoding="utf-8")
    return root, base


@pytest.fixture(scope="module")
def merged_run(base_and_data):
    root, _ = base_and_data
    return root / "merged", train(root, "merged")


def train(root, run_name, *extra):
    config, training = _configs(build_parser().parse_args(
        ["train", "concept", "--base", str(root / "base"), "--run-dir", str(root / run_name), "--data",
         str(root / "corpus.txt"), "--max-steps", "6", "--batch-size", "4", "--block-size", "32",
         "--logging-steps", "3", "--concept-vocab", "64", "--eval-blocks", "8", "--report-to", "none", *extra]))
    return concept.train_concept(config, training).manifest


def logged(run_dir):
    states = sorted((run_dir / "checkpoints").glob("checkpoint-*/trainer_state.json"))
    return json.loads(states[-1].read_text())["log_history"]


def test_train_concept_logs_monitors_and_saves_merged(base_and_data, merged_run):
    root, base = base_and_data
    _, manifest = merged_run
    assert manifest["system"] == "concept" and manifest["steps"] == 6
    assert 0 < manifest["val_compression_ratio"] < 1 and manifest["val_ppl"] > 1
    history = [entry for entry in logged(root / "merged") if "loss" in entry]
    assert history and MONITORS <= set(history[-1])
    assert 0 < history[-1]["compression_ratio"] < 1 and history[-1]["tail_max"] >= 1
    model = Qwen2ConceptCompressionForCausalLM.from_pretrained(root / "merged").eval()
    # LoRA trained and merged: the backbone changed; the shallow embedding table (not a LoRA target) did not
    assert not torch.equal(model.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight)
    assert torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert torch.equal(concept.load_concept_run(root / "merged").lm_head.weight, model.lm_head.weight)


def test_adapter_save_reloads_to_the_same_model_as_merged(base_and_data, merged_run):
    root, _ = base_and_data
    train(root, "adapter", "--save", "adapter")
    assert (root / "adapter" / "adapter_model.safetensors").is_file()
    reloaded = concept.load_concept_run(root / "adapter").eval()
    merged = Qwen2ConceptCompressionForCausalLM.from_pretrained(root / "merged").eval()
    ids = torch.randint(4, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    # same seed, same data, same steps: the adapter run reloads to the merged run's model
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, merged(ids).logits, atol=1e-4, rtol=1e-4)
    trained_head = reloaded.concept_head.proj.weight
    fresh = Qwen2ConceptCompressionForCausalLM.from_base_pretrained(root / "base", concept_vocab_size=64)
    assert not torch.equal(trained_head, fresh.concept_head.proj.weight)  # the new modules were saved


def test_card_reads_the_measured_bench_and_its_snippet_runs(merged_run, capsys):
    from genlab.hub_cards import write_card

    run_dir, _ = merged_run
    bench = json.loads(open("benchmarks/results/concept.json", encoding="utf-8").read())
    (run_dir / "bench.json").write_text(json.dumps(bench), encoding="utf-8")
    card = write_card(run_dir).read_text(encoding="utf-8")
    assert "library_name: transformers" in card and "genlab-concept" in card
    value = bench["figures"]["step_time_ratio"]
    assert "`step_time_ratio`" in card and (repr(value) in card or f"{value:.6g}" in card)  # read, not typed
    snippet = card.split("```python\n")[1].split("```")[0]
    exec(snippet, {})
    assert "tensor(" in capsys.readouterr().out  # the concept ids were printed


def test_bad_layer_split_is_a_clear_error(base_and_data):
    root, _ = base_and_data
    with pytest.raises(ValueError, match="sum to num_hidden_layers=4"):
        train(root, "bad", "--layers", "1,1,1")


def test_statistics_of_a_hand_made_pattern():
    is_concept = torch.tensor([[False, True, False, False, True, False]])
    ids = torch.tensor([[4, 2, 4, 4, 3, 4]])
    stats = concept.concept_statistics(is_concept, ids, torch.ones_like(is_concept), 4)
    assert stats["compression_ratio"] == pytest.approx(2 / 6)
    assert stats["tail_max"] == 2  # token 3 reads tokens 2..3
    assert stats["tail_mean"] == pytest.approx((1 + 0 + 1 + 2 + 0 + 1) / 6)
    assert stats["concept_counts"].tolist() == [0, 0, 1, 1]
    assert concept.usage_entropy(stats["concept_counts"]) == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_tail_statistics_do_not_count_left_padding():
    is_concept = torch.tensor([[False, False, False, True, False]])
    valid = torch.tensor([[False, False, True, True, True]])  # two padding slots on the left
    stats = concept.concept_statistics(is_concept, torch.tensor([[4, 4, 4, 1, 4]]), valid, 4)
    assert stats["tail_max"] == 1 and stats["tail_mean"] == pytest.approx((1 + 0 + 1) / 3)


def test_trained_concepts_fire_on_their_own_at_the_target_rate_at_inference(base_and_data):
    """C7 learned, issue 13: with one firing rule and the rate loss on the hard decisions, the noise-free
    (inference) rate on held-out text lands within ±25 % of r, and most concepts are the head's own, not forced."""
    root, _ = base_and_data
    config, training = concept.ConceptTrainConfig(
        run_dir=str(root / "rate"), base=str(root / "base"), data=str(root / "corpus.txt"), concept_vocab=64,
        block_size=64, eval_blocks=16, target_ratio=0.25), concept.default_training_arguments(
        concept.TRAINING_DEFAULTS, max_steps=60, per_device_train_batch_size=8, report_to="none", save_strategy="no")
    manifest = concept.train_concept(config, training).manifest
    assert manifest["val_compression_ratio"] == pytest.approx(0.25, rel=0.25)
    assert manifest["natural_fire_fraction"] > 0.5


@torch.no_grad()
def test_concept_interventions_zero_or_permute_only_the_concept_vectors():
    from genlab.configuration_concept import Qwen2ConceptCompressionConfig

    torch.manual_seed(0)
    model = Qwen2ConceptCompressionForCausalLM(Qwen2ConceptCompressionConfig(
        num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=100, max_position_embeddings=64, concept_vocab_size=16)).eval()
    ids = torch.randint(4, 100, (2, 32), generator=torch.Generator().manual_seed(1))
    plain = model(ids).logits
    choice = torch.nn.functional.one_hot(torch.tensor([[3, 5, 16], [7, 16, 16]]), 17).float()  # 16 = <NULL>: padding
    original = model.concept_embedding(choice)
    for kind in ("zeroed", "permuted"):
        with concept.concept_intervention(model, kind, torch.Generator().manual_seed(0)):
            assert not torch.allclose(model(ids).logits, plain)  # the deep blocks read the concepts
            rows = model.concept_embedding(choice)
        real = choice[..., :16].sum(-1) > 0
        assert torch.equal(rows[~real], original[~real])  # padding slots untouched
        if kind == "zeroed":
            assert torch.equal(rows[real], torch.zeros_like(rows[real]))
        else:
            assert sorted(rows[real].sum(-1).tolist()) == sorted(original[real].sum(-1).tolist())
    assert torch.allclose(model(ids).logits, plain)  # the hooks are gone after the block


def test_probe_concept_shows_boundaries_and_what_frequent_ids_stand_for(merged_run, tmp_path, capsys):
    from genlab.cli import main

    run_dir, _ = merged_run
    out = tmp_path / "probe.json"
    assert main(["probe", "concept", str(run_dir), "--text", "新华社北京一月一日电", "今天天气很好",
                 "--top", "3", "--json", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["texts"] == 2 and 0 < result["rate"] <= 1 and len(result["shown"]) == 2
    assert result["shown"][0].replace("|", "").replace("¦", "").endswith("一月一日电")  # the text, marked
    fires = sum(entry["fires"] for entry in result["concepts"])
    assert 0 < fires <= round(result["rate"] * sum(len(t) + 1 for t in ("新华社北京一月一日电", "今天天气很好")))
    assert "concepts per token" in capsys.readouterr().out
    assert main(["probe", "concept", str(tmp_path / "missing")]) == 2
