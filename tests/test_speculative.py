"""Edge/cloud speculative decoding (SPEC S1, S2, S4, S5) with tiny random Qwen2 models on the corpus tokenizer."""

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from genlab.generation_speculative import (PRESETS, _IncrementalModel, edge_cloud_generate, rejection_sample,
                                           resolve_preset)
from genlab.logits_process import TokenClasses, build_cjk_processors, build_sentence_stopping
from genlab.presets import qwen2_config
from genlab.tokenization import default_tokenizer
from genlab.trainers.ar import build_model

PROMPTS = ["今天天气", "我爱北京天安门", "经济", "他说：我们要继续努力工作", "好", "新华社北京一月一日电"]


@pytest.fixture(scope="module")
def tok():
    tokenizer = default_tokenizer()
    tokenizer.padding_side = "left"
    return tokenizer


@pytest.fixture(scope="module")
def pair(tok):
    cloud = build_model("nano", tok, seed=0).eval()
    edge = build_model("nano", tok, seed=1).eval()
    return cloud, edge


@pytest.fixture(scope="module")
def processors(tok):
    return build_cjk_processors(tok)


def batch(tok, prompts):
    return tok(prompts, return_tensors="pt", padding=True)


def test_presets_state_their_settings():
    """Thresholds are nats per drafted token (seed 004's 5.75 / 3.25 were sums over a block); quality is stricter."""
    assert PRESETS["fluency"].num_draft_tokens == 4 and PRESETS["quality"].num_draft_tokens == 6
    assert 0 < PRESETS["quality"].entropy_threshold < PRESETS["fluency"].entropy_threshold < 3
    assert PRESETS["lossless"].cloud == "always" and PRESETS["edge"].cloud == "never"
    assert resolve_preset("lossless", entropy_threshold=2.0).entropy_threshold is None


@pytest.mark.parametrize("k, edge_is_cloud", [(1, False), (3, False), (6, False), (4, True)])
def test_lossless_greedy_equals_cloud_only_greedy(tok, pair, processors, k, edge_is_cloud):
    cloud, edge = pair
    edge = cloud if edge_is_cloud else edge
    generator = torch.Generator().manual_seed(k)
    for trial in range(3):
        size = 1 + trial * 2  # batch 1, 3, 5 with left padding
        prompts = [PROMPTS[i] for i in torch.randint(len(PROMPTS), (size,), generator=generator).tolist()]
        inputs = batch(tok, prompts)
        reference = cloud.generate(**inputs, max_new_tokens=17, do_sample=False, logits_processor=processors)
        out = cloud.generate(**inputs, max_new_tokens=17, do_sample=False, logits_processor=processors,
                             custom_generate=edge_cloud_generate, edge_model=edge, preset="lossless",
                             num_draft_tokens=k, return_stats=True)
        assert torch.equal(out.sequences, reference), (prompts, k)
        assert out.cloud_calls == out.blocks
        if edge_is_cloud:
            assert out.acceptance_rate == 1.0


def test_lossless_greedy_equals_cloud_only_with_eos_padding_and_sentence_stop(tok, pair, processors):
    cloud, edge = pair
    inputs = batch(tok, PROMPTS)
    eos_like = tok.convert_tokens_to_ids("的")  # a frequent id as EOS so rows finish at different steps
    kwargs = dict(max_new_tokens=24, do_sample=False, logits_processor=processors, eos_token_id=eos_like,
                  stopping_criteria=build_sentence_stopping(tok, inputs["input_ids"].shape[1], min_new_tokens=4))
    reference = cloud.generate(**inputs, **kwargs)
    out = cloud.generate(**inputs, **kwargs, custom_generate=edge_cloud_generate, edge_model=edge, preset="lossless")
    assert torch.equal(out, reference)


def test_incremental_cached_logits_equal_full_forward(tok, pair):
    cloud, _ = pair
    inputs = batch(tok, ["我爱北京天安门广场", "好"])
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    full = cloud(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    stream, split = _IncrementalModel(cloud, cloud.config.vocab_size), 4
    pieces = [stream.extend(ids[:, :split], mask[:, :split], positions[:, :split], logits_to_keep=split)]
    for end in range(split + 1, ids.shape[1] + 1):  # one token at a time, explicit positions, full mask
        pieces.append(stream.extend(ids[:, :end], mask[:, :end], positions[:, :end], logits_to_keep=1))
    real = mask.bool()
    assert torch.allclose(torch.cat(pieces, 1)[real], full[real], atol=1e-5)
    stream.crop(split)  # rollback then re-feed gives the same logits again
    again = stream.extend(ids, mask, positions, logits_to_keep=ids.shape[1] - split)
    assert torch.allclose(again[real[:, split:]], full[:, split:][real[:, split:]], atol=1e-5)


def test_a_trimmed_head_scores_exactly_the_draft_rows(tok, pair):
    """FR-Spec: the cached trimmed-head logits are the full head's at the draft ids and −inf elsewhere."""
    cloud, _ = pair
    inputs = batch(tok, ["我爱北京天安门广场", "好"])
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    full = cloud(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
    draft_ids = list(range(3, len(tok), 5))
    cloud.config.draft_vocab_ids = draft_ids
    try:
        trimmed = _IncrementalModel(cloud, cloud.config.vocab_size).extend(ids, mask, positions, 1)[:, -1]
    finally:
        del cloud.config.draft_vocab_ids
    assert torch.allclose(trimmed[:, draft_ids], full[:, draft_ids], atol=1e-5)
    rest = torch.ones(full.shape[1], dtype=torch.bool)
    rest[draft_ids] = False
    assert torch.isneginf(trimmed[:, rest]).all()


def test_rejection_sampling_reproduces_the_cloud_distribution():
    # p and q over 5 tokens, k = 1: the committed first token must follow p whatever q is
    torch.manual_seed(0)
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    q = torch.tensor([0.05, 0.1, 0.15, 0.2, 0.5])
    n = 200_000
    drafts = torch.multinomial(q, n, replacement=True)[:, None]  # (n, 1)
    p_b = p.expand(n, 2, 5).contiguous()
    accepted, token = rejection_sample(p_b, q.expand(n, 1, 5).contiguous(), drafts)
    first = torch.where(accepted == 1, drafts[:, 0], token)
    freq = torch.bincount(first, minlength=5).float() / n
    assert torch.allclose(freq, p, atol=0.005)
    expected_accept = torch.minimum(p, q).sum()  # P(accept) = Σ min(p, q)
    assert abs((accepted == 1).float().mean() - expected_accept) < 0.005


def test_sampling_with_edge_equal_to_cloud_accepts_everything(tok, pair, processors):
    cloud, _ = pair
    inputs = batch(tok, PROMPTS[:3])
    torch.manual_seed(0)
    out = cloud.generate(**inputs, max_new_tokens=12, do_sample=True, top_k=0, logits_processor=processors,
                         custom_generate=edge_cloud_generate, edge_model=cloud, preset="lossless", return_stats=True)
    assert out.acceptance_rate == 1.0 and out.sequences.shape[1] == inputs["input_ids"].shape[1] + 12


def test_temperature_from_generation_config_is_not_applied_twice(tok, pair, processors, monkeypatch):
    import genlab.generation_speculative as spec

    cloud, edge = pair
    seen = []
    original = spec.draft_block
    monkeypatch.setattr(spec, "draft_block", lambda e, s, procs, *a: seen.append(procs) or original(e, s, procs, *a))
    inputs = batch(tok, PROMPTS[:1])
    cloud.generate(**inputs, max_new_tokens=4, do_sample=True, temperature=0.7, top_k=0, logits_processor=processors,
                   custom_generate=edge_cloud_generate, edge_model=edge, preset="lossless")
    ids, scores = inputs["input_ids"], torch.randn(1, len(tok))
    # the stack's rules, then generate's temperature once (top_k=0 adds nothing)
    assert torch.allclose(seen[0](ids, scores.clone()), processors(ids, scores.clone()) / 0.7)


def test_gated_fluency_calls_the_cloud_less_and_reports_stats(tok, pair, processors):
    cloud, edge = pair
    inputs = batch(tok, PROMPTS[:2])
    kwargs = dict(max_new_tokens=16, do_sample=False, logits_processor=processors, custom_generate=edge_cloud_generate,
                  edge_model=edge, return_stats=True)
    never = cloud.generate(**inputs, **kwargs, preset="fluency", entropy_threshold=1e9)
    assert never.cloud_calls == 0 and never.blocks == 4 and never.block_entropies.shape == (4, 2)
    edge_only = edge.generate(**inputs, max_new_tokens=16, do_sample=False, logits_processor=processors)
    if not bool((TokenClasses.from_tokenizer(tok).punctuation_density(edge_only[:, -16:]) > 0.4).any()):
        assert torch.equal(never.sequences, edge_only)  # no cloud at all: the edge's own greedy text
    always = cloud.generate(**inputs, **kwargs, preset="quality", entropy_threshold=-1.0)
    assert always.cloud_calls == always.blocks and always.verified == always.drafted


def test_verified_sources_on_a_hand_made_block():
    from genlab.generation_speculative import ACCEPTED, CLOUD, verified_sources

    tokens = torch.tensor([[5, 6, 7], [5, 6, 7]])
    sources, rejected = verified_sources(tokens, accepted=torch.tensor([1, 3]))
    # row 0: draft 5 kept, the cloud's token replaces draft 6; row 1: all kept, the cloud adds the bonus token
    assert sources[0, :2].tolist() == [ACCEPTED, CLOUD] and rejected[0, :2].tolist() == [-1, 6]
    assert sources[1].tolist() == [ACCEPTED] * 3 + [CLOUD] and rejected[1].tolist() == [-1] * 4


def test_token_sources_say_who_wrote_each_token(tok, pair, processors):
    from genlab.generation_speculative import ACCEPTED, CLOUD, UNVERIFIED

    cloud, edge = pair
    inputs = batch(tok, PROMPTS[:1])
    kwargs = dict(max_new_tokens=16, do_sample=False, logits_processor=processors, custom_generate=edge_cloud_generate,
                  return_stats=True)
    same = cloud.generate(**inputs, **kwargs, edge_model=cloud, preset="lossless", num_draft_tokens=3)
    # an edge equal to its cloud: 3 accepted drafts then the cloud's bonus token, block after block
    assert same.token_sources[0].tolist() == ([ACCEPTED] * 3 + [CLOUD]) * 4
    assert (same.rejected_drafts == -1).all()
    other = cloud.generate(**inputs, **kwargs, edge_model=edge, preset="lossless", num_draft_tokens=3)
    new = other.sequences[0, inputs["input_ids"].shape[1]:]
    assert other.token_sources.shape == (1, 16) and int((other.token_sources == ACCEPTED).sum()) == other.accepted
    replaced = other.rejected_drafts[0] >= 0
    assert bool(replaced.any()) and bool((other.token_sources[0][replaced] == CLOUD).all())
    assert bool((other.rejected_drafts[0][replaced] != new[replaced]).all())  # greedy: the cloud disagreed
    gated = cloud.generate(**inputs, **kwargs, edge_model=edge, preset="fluency", entropy_threshold=1e9)
    # only punctuation-dense blocks reach the cloud; every other drafted token is committed unverified
    assert int((gated.token_sources == UNVERIFIED).sum()) == gated.drafted - gated.verified > 0


def test_punctuation_density_forces_the_cloud():
    from genlab.generation_speculative import _Draft, needs_cloud

    classes = TokenClasses.from_texts(["a", "中", "，", "。"])
    dense = torch.tensor([[1, 2, 1, 2], [1, 1, 1, 2], [1, 2, 2, 2]])  # 中，中，(0.5)  中中中，(0.25)  中，，，(0.75)
    assert classes.punctuation_density(dense).tolist() == [0.5, 0.25, 0.75]
    calm = _Draft(tokens=dense, probs=None, entropy=torch.zeros(3), sequence=None)  # entropy far below threshold
    running = torch.tensor([True, True, False])  # a finished row never calls the cloud
    assert needs_cloud(calm, PRESETS["fluency"], classes, running).tolist() == [True, False, False]
    assert needs_cloud(calm, PRESETS["lossless"], classes, running).tolist() == [True, True, False]


def test_stopping_truncates_inside_an_accepted_block(tok, pair):
    cloud, _ = pair
    inputs = batch(tok, ["今天"])
    period = tok.convert_tokens_to_ids("。")
    # an edge that is the cloud (every block accepted) and processors that force "。" at the 3rd new token
    def force_period_at_3(ids, scores):
        at_three = ids.shape[1] == inputs["input_ids"].shape[1] + 2
        return scores.index_fill(1, torch.tensor([period]), 1e4) if at_three else scores

    stopping = build_sentence_stopping(tok, inputs["input_ids"].shape[1], min_new_tokens=2)
    out = cloud.generate(**inputs, max_new_tokens=20, do_sample=False, logits_processor=LogitsProcessorList([force_period_at_3]),
                         stopping_criteria=stopping, custom_generate=edge_cloud_generate, edge_model=cloud,
                         preset="lossless", num_draft_tokens=6, return_stats=True)
    assert out.sequences.shape[1] == inputs["input_ids"].shape[1] + 3 and out.sequences[0, -1] == period
    assert out.blocks == 1 and out.accepted == 6  # the stop fell inside one fully accepted block


def test_bad_inputs_raise_clear_errors(tok, pair, processors):
    cloud, edge = pair
    inputs = batch(tok, ["今天"])
    other_vocab = build_model("nano", tok, seed=2)
    other_vocab.resize_token_embeddings(len(tok) - 8)
    common = dict(max_new_tokens=4, custom_generate=edge_cloud_generate, logits_processor=processors)
    with pytest.raises(ValueError, match="share one tokenizer"):
        cloud.generate(**inputs, **common, edge_model=other_vocab)
    with pytest.raises(ValueError, match="num_draft_tokens"):
        cloud.generate(**inputs, **common, edge_model=edge, num_draft_tokens=0)
    with pytest.raises(ValueError, match="preset must be one of"):
        cloud.generate(**inputs, **common, edge_model=edge, preset="fast")
    with pytest.raises(ValueError, match="edge_model"):
        cloud.generate(**inputs, **common)
    with pytest.raises(ValueError, match="non-empty"):
        edge_cloud_generate(cloud, torch.zeros(1, 0, dtype=torch.long), processors, StoppingCriteriaList(),
                            GenerationConfig(max_length=8), edge_model=edge)
    with pytest.raises(ValueError, match="token_classes"):
        cloud.generate(**inputs, max_new_tokens=4, custom_generate=edge_cloud_generate, edge_model=edge,
                       preset="fluency")
    with pytest.raises(ValueError, match="num_draft_tokens"):
        resolve_preset("quality", num_draft_tokens=-3)


def test_works_for_two_differently_sized_models(tok):
    cloud = build_model("nano", tok, seed=0).eval()
    config = qwen2_config("nano", len(tok), num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                          num_attention_heads=2, num_key_value_heads=1)
    from transformers import Qwen2ForCausalLM

    edge = Qwen2ForCausalLM(config).eval()
    inputs = batch(tok, PROMPTS[:2])
    reference = cloud.generate(**inputs, max_new_tokens=9, do_sample=False)
    out = cloud.generate(**inputs, max_new_tokens=9, do_sample=False, custom_generate=edge_cloud_generate,
                         edge_model=edge, preset="lossless")
    assert torch.equal(out, reference)


def test_lossless_and_gated_run_on_the_qwen2_tokenizer():
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    from genlab.qwen2_tokenizer import qwen2_tokenizer_dir

    qwen = AutoTokenizer.from_pretrained(qwen2_tokenizer_dir(), padding_side="left")
    classes = TokenClasses.from_tokenizer(qwen)
    processors = build_cjk_processors(classes)
    config = qwen2_config("nano", 151_936, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                          num_key_value_heads=1)  # Qwen2 pads its vocabulary beyond len(tokenizer)
    torch.manual_seed(0)
    cloud, edge = Qwen2ForCausalLM(config).eval(), Qwen2ForCausalLM(config).eval()
    inputs = qwen(["今天天气很好，", "我们"], return_tensors="pt", padding=True)
    kwargs = dict(max_new_tokens=10, do_sample=False, logits_processor=processors, pad_token_id=qwen.pad_token_id)
    reference = cloud.generate(**inputs, **kwargs)
    out = cloud.generate(**inputs, **kwargs, custom_generate=edge_cloud_generate, edge_model=edge, preset="lossless")
    assert torch.equal(out, reference)
    gated = cloud.generate(**inputs, **kwargs, custom_generate=edge_cloud_generate, edge_model=edge, preset="fluency",
                           return_stats=True)
    assert gated.sequences.shape == reference.shape and gated.blocks >= 3
