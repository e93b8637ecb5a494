"""The standalone edge (issue 15): trimmed draft vocabulary, distillation recipe, sliding-window clouds, dynamic
draft length, streaming, the tokenizer check and lockstep acceptance counts."""

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen2ForCausalLM
from transformers.generation.streamers import BaseStreamer

import genlab.generation_speculative as spec
from genlab.generation_speculative import edge_cloud_generate
from genlab.presets import qwen2_config
from genlab.tokenization import default_tokenizer
from genlab.trainers.ar import build_model
from genlab.trainers.edge import edge_from_cloud, frequent_token_ids

PROMPTS = ["今天天气", "我爱北京天安门", "经济"]


@pytest.fixture(scope="module")
def tok():
    tokenizer = default_tokenizer()
    tokenizer.padding_side = "left"
    return tokenizer


@pytest.fixture(scope="module")
def cloud(tok):
    return build_model("nano", tok, seed=0).eval()


def lossless(cloud, edge, inputs, **kwargs):
    return cloud.generate(**inputs, max_new_tokens=14, do_sample=False, custom_generate=edge_cloud_generate,
                          edge_model=edge, preset="lossless", return_stats=True, **kwargs)


def test_frequent_token_ids_on_a_hand_made_count(tok):
    blocks = {"input_ids": [[5, 5, 7, 9], [7, 5, 11, 9], [5, 12, 13, 14]]}  # 5 ×4, 7 ×2, 9 ×2, the rest once
    ids = frequent_token_ids(blocks, tok, 3)
    assert {5, 7, 9} <= set(ids) and not {11, 12, 13, 14} & set(ids)
    assert set(tok.all_special_ids) <= set(ids) and ids == sorted(ids)


def test_an_edge_cut_from_all_of_its_cloud_is_accepted_every_time(tok, cloud):
    """The recipe's starting point with every layer kept is the cloud itself: acceptance 1, same output."""
    edge = edge_from_cloud(cloud, cloud.config.num_hidden_layers, None).eval()
    inputs = tok(PROMPTS, return_tensors="pt", padding=True)
    out = lossless(cloud, edge, inputs)
    assert out.acceptance_rate == 1.0
    assert torch.equal(out.sequences, cloud.generate(**inputs, max_new_tokens=14, do_sample=False))


def test_a_trimmed_edge_only_drafts_its_vocabulary_and_stays_lossless(tok, cloud, monkeypatch):
    keep = sorted(set(range(0, len(tok), 2)) | set(tok.all_special_ids))
    edge = edge_from_cloud(cloud, 1, keep).eval()
    drafted = []
    original = spec.draft_block
    monkeypatch.setattr(spec, "draft_block", lambda *a, **k: drafted.append(original(*a, **k)) or drafted[-1])
    inputs = tok(PROMPTS, return_tensors="pt", padding=True)
    out = lossless(cloud, edge, inputs)
    assert torch.equal(out.sequences, cloud.generate(**inputs, max_new_tokens=14, do_sample=False))
    tokens = torch.cat([d.tokens.flatten() for d in drafted])
    assert torch.isin(tokens, torch.tensor(keep)).all()
    assert out.acceptance_rate > 0  # the first layer of the cloud still agrees with it now and then


def test_edge_recipe_learns_its_cloud(tok, tmp_path):
    """A 2-layer cloud trained 150 steps on 600 sentences; its 1-layer cut, distilled 60 steps, agrees with it
    on the held-out prompts clearly more often than the cut it started from."""
    from transformers import AutoModelForCausalLM

    from genlab.data import load_corpus
    from genlab.trainers.ar import ARTrainConfig, train_ar
    from genlab.trainers.common import default_training_arguments
    from genlab.trainers.edge import EdgeTrainConfig, TRAINING_DEFAULTS, train_edge

    news = load_corpus("news")
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(news["train"]["text"][:600] + news["validation"]["text"][:40]), encoding="utf-8")
    quick = dict(logging_steps=50, report_to="none", save_strategy="no")
    train_ar(ARTrainConfig(run_dir=str(tmp_path / "cloud"), preset="nano", data=str(data), block_size=32,
                           eval_blocks=4, resume=False),
             default_training_arguments({}, max_steps=150, learning_rate=3e-3, **quick))
    cloud = AutoModelForCausalLM.from_pretrained(tmp_path / "cloud").eval()
    prompts = tok([t[:4] for t in news["test"]["text"][:6]], return_tensors="pt", padding=True)
    before = lossless(cloud, edge_from_cloud(cloud, 1, None).eval(), prompts)
    run = train_edge(EdgeTrainConfig(run_dir=str(tmp_path / "edge"), cloud=str(tmp_path / "cloud"), num_layers=1,
                                     data=str(data), draft_vocab_size=0, block_size=32, resume=False),
                     default_training_arguments(TRAINING_DEFAULTS, max_steps=60, learning_rate=3e-3, **quick))
    edge = AutoModelForCausalLM.from_pretrained(run.path).eval()
    assert type(edge) is Qwen2ForCausalLM and edge.config.draft_vocab_ids is None  # a plain HF checkpoint
    after = lossless(cloud, edge, prompts)
    print("acceptance", before.acceptance_rate, after.acceptance_rate)
    assert after.acceptance_rate > before.acceptance_rate + 0.15, (before.acceptance_rate, after.acceptance_rate)


def _sliding_qwen2(tok, seed):
    config = qwen2_config("nano", len(tok), use_sliding_window=True, sliding_window=6, max_window_layers=0)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval()


def _gemma3(vocab, seed):
    config = Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=5,
                              layer_types=["sliding_attention", "full_attention"], final_logit_softcapping=30.0)
    torch.manual_seed(seed)
    return Gemma3ForCausalLM(config).eval()


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_sliding_window_models_roll_back_past_the_window(tok, family):
    """Prompt + output run past the window and blocks are rejected: the caches record their past, so the
    rollback works and the output is still the cloud's own (it crashed at the first rollback before)."""
    if family == "qwen2":
        cloud, edge = _sliding_qwen2(tok, 0), _sliding_qwen2(tok, 1)
    else:  # Gemma 3: sliding + full layers, soft-capped logits; the edge is the recipe's trimmed 1-layer cut
        cloud = _gemma3(len(tok), 0)
        edge = edge_from_cloud(cloud, 1, list(range(0, len(tok), 2))).eval()
    inputs = tok(["新华社北京一月一日电记者"], return_tensors="pt")
    out = lossless(cloud, edge, inputs)
    assert out.accepted < out.verified  # there were rollbacks
    assert torch.equal(out.sequences, cloud.generate(**inputs, max_new_tokens=14, do_sample=False))


def test_dynamic_draft_length_stops_at_low_confidence(tok, cloud):
    edge = build_model("nano", tok, seed=1).eval()
    inputs = tok(PROMPTS, return_tensors="pt", padding=True)
    fixed = lossless(cloud, edge, inputs, num_draft_tokens=6)
    dynamic = lossless(cloud, edge, inputs, num_draft_tokens=6, draft_confidence=0.9)
    assert dynamic.drafted / dynamic.blocks < fixed.drafted / fixed.blocks  # a random edge is rarely confident
    assert torch.equal(dynamic.sequences, fixed.sequences)
    with pytest.raises(ValueError, match="draft_confidence"):
        lossless(cloud, edge, inputs, draft_confidence=1.5)


class Collect(BaseStreamer):
    def __init__(self):
        self.parts, self.ended = [], False

    def put(self, value):
        self.parts.append(value.flatten().tolist())

    def end(self):
        self.ended = True


def test_a_streamer_receives_the_prompt_then_every_committed_block(tok, cloud):
    edge = build_model("nano", tok, seed=1).eval()
    inputs = tok(PROMPTS[:1], return_tensors="pt")
    streamer = Collect()
    out = lossless(cloud, edge, inputs, edge_cloud_streamer=streamer)
    assert streamer.ended and sum(streamer.parts, []) == out.sequences[0].tolist()
    assert streamer.parts[0] == inputs["input_ids"][0].tolist() and len(streamer.parts) == out.blocks + 1


def test_the_tokenizer_check_accepts_a_padded_edge_and_refuses_another_tokenizer(tok, cloud):
    padded = build_model("nano", tok, seed=1)
    padded.resize_token_embeddings(len(tok) + 64)  # padded rows the tokenizer never produces
    inputs = tok(PROMPTS, return_tensors="pt", padding=True)
    out = lossless(cloud, padded.eval(), inputs)
    assert torch.equal(out.sequences, cloud.generate(**inputs, max_new_tokens=14, do_sample=False))
    other = default_tokenizer(vocab_size=3000)
    with pytest.raises(ValueError, match="share one tokenizer"):
        lossless(cloud, padded, inputs, cloud_tokenizer=tok, edge_tokenizer=other)
    lossless(cloud, padded, inputs, cloud_tokenizer=tok, edge_tokenizer=tok)  # the same tokenizer passes


def test_batch_acceptance_counts_only_committed_tokens(tok, cloud, monkeypatch):
    """Row 0 accepts the whole block, row 1 nothing: lockstep commits one token per row per block, so the
    accepted count grows by 1 per block (row 0's first draft), not by k."""
    edge = build_model("nano", tok, seed=1).eval()

    def verify(cloud_model, draft, processors, do_sample):
        k = draft.tokens.shape[1]
        return torch.tensor([k, 0]), draft.tokens[:, 0]

    monkeypatch.setattr(spec, "verify_block", verify)
    inputs = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    out = cloud.generate(**inputs, max_new_tokens=8, do_sample=False, custom_generate=edge_cloud_generate,
                         edge_model=edge, preset="lossless", num_draft_tokens=4, return_stats=True)
    assert out.blocks == 8 and out.accepted == out.blocks and out.verified > 4 * out.blocks
