"""Online concept compression (SPEC C1–C9): masks, O(T) training pass, leaks, gradients, cached decoding."""

import pytest
import torch
import torch.nn.functional as F

from genlab.configuration_concept import Qwen2ConceptCompressionConfig, gumbel_temperature
from genlab.masking import causal_padding_rule, concept_deep_rule, dense_mask
from genlab.modeling_concept import Qwen2ConceptCompressionForCausalLM, forced_boundaries

VOCAB = 100


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These small models run faster on one thread than on two on a shared, oversubscribed CPU; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides):
    fields = dict(num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, concept_vocab_size=32,
                  target_compression_ratio=0.25)
    return Qwen2ConceptCompressionConfig(**{**fields, **overrides})


def make_model(seed=0, eval_rate=0.3, **overrides):
    """A tiny model whose noise-free (eval) decisions fire at about ``eval_rate`` of the tokens.

    At init the calibrated <NULL> bias gives P(concept) = r < 1/2 everywhere, so the noise-free choice
    fires only at forced boundaries; tests of decoding need natural concepts at irregular times, so the
    bias is moved to the ``1 - eval_rate`` quantile of logsumexp(concept logits) on random text.
    """
    torch.manual_seed(seed)
    model = Qwen2ConceptCompressionForCausalLM(tiny_config(**overrides)).eval()
    with torch.no_grad():
        ids = torch.randint(4, VOCAB, (8, 48), generator=torch.Generator().manual_seed(seed + 1))
        hidden = model.run_stage("shallow", model.model.embed_tokens(ids), torch.arange(48).expand(8, 48),
                                 causal_padding_rule(torch.ones_like(ids, dtype=torch.bool)))
        best = model.concept_head.proj(model.concept_head.norm(hidden))[..., :-1].logsumexp(-1)
        model.concept_head.null_bias.fill_(torch.quantile(best.flatten(), 1 - eval_rate).item())
    return model


def random_ids(batch, length, seed=0):
    return torch.randint(4, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# -- config and bad input -------------------------------------------------------------------------------------------
def test_layer_counts_must_sum_to_base_depth():
    with pytest.raises(ValueError, match="sum to num_hidden_layers=4"):
        tiny_config(num_shallow_layers=1, num_middle_layers=1, num_deep_layers=1)
    config = tiny_config()
    assert (config.num_shallow_layers, config.num_middle_layers, config.num_deep_layers) == (1, 2, 1)


def test_bad_rate_fields_are_rejected():
    with pytest.raises(ValueError, match="target_compression_ratio"):
        tiny_config(target_compression_ratio=0.0)
    with pytest.raises(ValueError, match="max_null_run"):
        tiny_config(max_null_run=-1)


def test_sequence_longer_than_max_positions_raises():
    model = make_model()
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        model(random_ids(1, 65))


def test_from_base_pretrained_rejects_other_architectures(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, vocab_size=50).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'qwen2'.*'llama'"):
        Qwen2ConceptCompressionForCausalLM.from_base_pretrained(tmp_path)
    with pytest.raises(ValueError, match="Qwen2ForCausalLM"):
        Qwen2ConceptCompressionForCausalLM.from_base_pretrained(torch.nn.Linear(2, 2))


def test_from_base_pretrained_keeps_every_base_weight(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    base = Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=4, hidden_size=64, intermediate_size=128,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                        tie_word_embeddings=True))
    base.save_pretrained(tmp_path)
    model = Qwen2ConceptCompressionForCausalLM.from_base_pretrained(tmp_path, concept_vocab_size=8)
    for key, value in base.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.config.concept_vocab_size == 8 and model.config.num_middle_layers == 2


def test_gumbel_temperature_is_a_function_of_the_step():
    config = tiny_config(gumbel_tau_start=2.0, gumbel_tau_end=0.5, gumbel_anneal_steps=100)
    assert gumbel_temperature(config, 0) == 2.0
    assert gumbel_temperature(config, 100) == pytest.approx(0.5)
    assert gumbel_temperature(config, 50) == pytest.approx(1.0)


# -- C7 rate controls -------------------------------------------------------------------------------------------------
def test_null_decision_is_calibrated_to_the_target_rate():
    """``sampled`` firing (the ablation): at init P(<NULL>) = 1 - r (SPEC Pitfalls: not 1/4097) and the sampled
    training decisions follow it."""
    torch.manual_seed(0)
    model = Qwen2ConceptCompressionForCausalLM(tiny_config(concept_vocab_size=4096, max_null_run=1000,
                                                           firing="sampled")).train()
    ids = random_ids(8, 64)
    out = model(ids)
    assert out.soft_concept_rate.item() == pytest.approx(0.25, abs=0.03)
    assert out.is_concept.float().mean().item() == pytest.approx(0.25, abs=0.05)


def test_threshold_firing_starts_on_the_decision_boundary():
    """``threshold`` firing starts at P(concept) = ½, so about half the tokens fire and the rate loss has hard
    decisions on both sides to move (started at P = r < ½ nothing would fire)."""
    torch.manual_seed(0)
    model = Qwen2ConceptCompressionForCausalLM(tiny_config(concept_vocab_size=4096, max_null_run=1000)).eval()
    out = model(random_ids(8, 64))
    assert out.soft_concept_rate.item() == pytest.approx(0.5, abs=0.03)
    assert 0.2 < out.is_concept.float().mean().item() < 0.8


def test_threshold_firing_makes_the_same_decisions_in_train_and_eval_mode():
    """One rule (issue 13): the noise of training only picks WHICH concept fires, never whether a token fires."""
    torch.manual_seed(0)
    model = Qwen2ConceptCompressionForCausalLM(tiny_config(concept_vocab_size=64, max_null_run=1000))
    ids = random_ids(4, 48)
    trained_mode, eval_mode = model.train()(ids), model.eval()(ids)
    assert torch.equal(trained_mode.is_concept, eval_mode.is_concept) and trained_mode.is_concept.any()
    model.config.firing = "sampled"  # the ablation: training samples the decision itself
    assert not torch.equal(model.train()(ids).is_concept, eval_mode.is_concept)


def test_rate_loss_is_smallest_where_the_hard_and_soft_rates_meet_the_target():
    model = make_model()  # r = 1/4
    loss = lambda f, g: float(model.rate_loss(torch.tensor(g), torch.tensor(f)))  # noqa: E731
    assert loss(0.25, 0.25) == pytest.approx(1.0)
    assert loss(0.5, 0.5) > 1.0 and loss(0.1, 0.1) > 1.0  # both rates too high, both too low
    soft = torch.tensor(0.25, requires_grad=True)
    model.rate_loss(soft, torch.tensor(0.25)).backward()
    assert soft.grad.abs().item() < 1e-6  # stationary at F = G = r
    soft = torch.tensor(0.25, requires_grad=True)
    model.rate_loss(soft, torch.tensor(0.5)).backward()
    assert soft.grad.item() > 0  # too many hard fires: the soft rate is pushed down


def test_noise_free_choice_fires_when_p_concept_exceeds_half():
    model = make_model()
    logits = torch.full((3, 33), -5.0)
    logits[0, 32] = 0.0  # P(<NULL>) ≈ 0.88: no fire
    logits[1, :32] = 0.0
    logits[1, 32] = 3.0  # P(<NULL>) = e³ / (e³ + 32) ≈ 0.39 < 1/2 although it is the largest single logit
    logits[2, 7], logits[2, 32] = 4.0, 3.9  # plain case: id 7
    model.concept_head.logits = lambda hidden: logits
    choice, _ = model.concept_head(torch.zeros(3, 64), tau=1.0, noise=False)
    assert choice.argmax(-1).tolist() == [32, 0, 7]


def test_forced_boundary_caps_the_null_run():
    natural = torch.zeros(2, 12, dtype=torch.bool)
    natural[0, 4] = True
    valid = torch.ones_like(natural)
    valid[1, :3] = False  # left padding does not count
    forced = forced_boundaries(natural, valid, max_null_run=2)
    assert forced[0].nonzero().flatten().tolist() == [2, 7, 10]
    assert forced[1].nonzero().flatten().tolist() == [5, 8, 11]


@pytest.mark.parametrize("training", [True, False])
def test_no_run_of_null_is_longer_than_allowed(training):
    model = make_model(eval_rate=0.05, max_null_run=3).train(training)
    is_concept = model(random_ids(4, 40)).is_concept
    runs = torch.zeros(4, dtype=torch.long)
    for t in range(40):
        runs = torch.where(is_concept[:, t], 0, runs + 1)
        assert int(runs.max()) <= 3


# -- C4 the deep mask ------------------------------------------------------------------------------------------------
def deep_mask(concept_time, concept_valid, is_concept, token_valid):
    """The C4 rule as the dense (batch, 1, M + T, M + T) bool mask SDPA gets."""
    rows = concept_time.shape[1] + is_concept.shape[1]
    rule = concept_deep_rule(concept_time, concept_valid, is_concept, token_valid)
    return dense_mask(rule, is_concept.shape[0], rows, rows, is_concept.device)


def test_deep_mask_obeys_the_four_rules_on_a_hand_made_pattern():
    # tokens 0..5, concepts at 1 and 4 → rows [c1, c4, t0, t1, t2, t3, t4, t5]
    is_concept = torch.tensor([[False, True, False, False, True, False]])
    mask = deep_mask(torch.tensor([[1, 4]]), torch.tensor([[True, True]]), is_concept,
                     torch.ones_like(is_concept))[0, 0].int()
    expected = torch.tensor([
        # c1 c4 t0 t1 t2 t3 t4 t5
        [1, 0, 0, 0, 0, 0, 0, 0],  # c1: concept→concept causal, never tokens
        [1, 1, 0, 0, 0, 0, 0, 0],  # c4
        [0, 0, 1, 0, 0, 0, 0, 0],  # t0: tail {0}, no concept yet
        [1, 0, 0, 1, 0, 0, 0, 0],  # t1 compressed: concepts ≤ 1 and itself (empty tail)
        [1, 0, 0, 0, 1, 0, 0, 0],  # t2: c1 + tail {2}
        [1, 0, 0, 0, 1, 1, 0, 0],  # t3: c1 + tail {2, 3}
        [1, 1, 0, 0, 0, 0, 1, 0],  # t4 compressed: c1, c4, itself; the old tail is gone
        [1, 1, 0, 0, 0, 0, 0, 1],  # t5: c1, c4 + tail {5}
    ])
    assert torch.equal(mask, expected)


def test_deep_mask_hides_padding_keys():
    # rows [c2, padded concept slot, t0 (left padding), t1, t2 (compressed), t3]
    is_concept = torch.tensor([[False, False, True, False]])
    valid = torch.tensor([[False, True, True, True]])
    mask = deep_mask(torch.tensor([[2, 0]]), torch.tensor([[True, False]]), is_concept, valid)[0, 0]
    assert mask[:, 1].nonzero().flatten().tolist() == [1]  # the padded concept slot: seen by itself only
    assert mask[:, 2].nonzero().flatten().tolist() == [2]  # the padding token: seen by itself only
    assert mask[5].nonzero().flatten().tolist() == [0, 5]  # t3: concept c2 and itself


# -- C1/C4 the O(T) training pass -----------------------------------------------------------------------------------
def per_position_reference(model, ids):
    """The definition of C3 run literally: one deep pass over Z_t = [concepts ≤ t ; tail(t) ; x_t] for every t."""
    length = ids.shape[1]
    positions = torch.arange(length).unsqueeze(0)
    ones = torch.ones(1, length, dtype=torch.bool)
    out = model(ids)
    hidden = model.run_stage("shallow", model.model.embed_tokens(ids), positions, causal_padding_rule(ones))
    times = out.is_concept[0].nonzero().flatten()
    choice = F.one_hot(out.concept_ids[0, times], model.config.concept_vocab_size + 1).float()[None]
    concepts = model.concept_embedding(choice)
    concepts = model.run_stage("middle", concepts, times[None], causal_padding_rule(torch.ones(1, len(times), dtype=torch.bool)))
    rows = []
    for t in range(length):
        last = int(times[times <= t].max()) if (times <= t).any() else -1
        tail = [i for i in range(last + 1, t)] + [t]
        z = torch.cat([concepts[:, times <= t], hidden[:, tail]], 1)
        z_pos = torch.cat([times[times <= t], torch.tensor(tail)])[None]
        rows.append(model.run_stage("deep", z, z_pos, causal_padding_rule(torch.ones(1, z.shape[1], dtype=torch.bool)))[:, -1])
    return model.lm_head(model.model.norm(torch.stack(rows, 1))), out


@torch.no_grad()
def test_one_pass_equals_per_position_reference():
    model = make_model()
    ids = random_ids(1, 24, seed=3)
    reference, out = per_position_reference(model, ids)
    assert 3 <= int(out.is_concept.sum()) <= 20
    torch.testing.assert_close(out.logits, reference, atol=1e-5, rtol=1e-5)
    labels = ids.clone()
    loss = model(ids, labels=labels).ce_loss
    expected = F.cross_entropy(reference[0, :-1], ids[0, 1:])
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_no_causal_leak():
    """C9: changing x_{>t} changes neither the logits nor the concept decisions at ≤ t."""
    model = make_model()
    ids = random_ids(2, 32, seed=5)
    base = model(ids)
    for t in (0, 7, 20, 30):
        changed = ids.clone()
        changed[:, t + 1 :] = random_ids(2, 31 - t, seed=t + 100)
        out = model(changed)
        torch.testing.assert_close(out.logits[:, : t + 1], base.logits[:, : t + 1], atol=1e-5, rtol=1e-5)
        assert torch.equal(out.concept_ids[:, : t + 1], base.concept_ids[:, : t + 1])


def test_middle_blocks_see_only_the_concept_rows():
    model = make_model()
    ids = random_ids(3, 40, seed=7)
    seen = {}

    def recorder(name):
        def hook(module, args):
            seen[name] = args[0].shape  # returns None: the inputs are left alone
        return hook

    layers = {"middle0": model.stage_layers("middle")[0], "middle1": model.stage_layers("middle")[1],
              "deep": model.stage_layers("deep")[0]}
    hooks = [layer.register_forward_pre_hook(recorder(name)) for name, layer in layers.items()]
    with torch.no_grad():
        out = model(ids)
    for hook in hooks:
        hook.remove()
    concepts = int(out.is_concept.sum(1).max())
    assert concepts < 40 // 2
    assert seen["middle0"] == seen["middle1"] == torch.Size([3, concepts, 64])
    assert seen["deep"] == torch.Size([3, concepts + 40, 64])


def test_gradients_reach_concept_head_through_straight_through_path():
    model = make_model().train()
    ids = random_ids(2, 32, seed=9)
    out = model(ids, labels=ids, gumbel_tau=0.7)
    assert out.is_concept.any()
    out.loss.backward()
    head = model.concept_head
    assert head.proj.weight.grad is not None and head.proj.weight.grad.abs().sum() > 0
    assert head.null_bias.grad is not None and head.null_bias.grad.abs().sum() > 0
    assert model.concept_embedding.embed.weight.grad.abs().sum() > 0
    assert model.stage_layers("shallow")[0].mlp.up_proj.weight.grad.abs().sum() > 0  # through the concept rows too


def test_loss_is_cross_entropy_per_normal_token():
    model = make_model()
    ids = random_ids(2, 16, seed=11)
    labels = ids.clone()
    labels[0, 10:] = -100
    with torch.no_grad():
        out = model(ids, labels=labels)
    expected = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(out.ce_loss, expected)
    torch.testing.assert_close(out.loss, expected + model.config.ratio_loss_weight * out.rate_loss)


@torch.no_grad()
def test_left_padding_does_not_change_a_row():
    model = make_model()
    ids = random_ids(2, 20, seed=13)
    padded = ids.clone()
    padded[1, :6] = 0
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    batch = model(padded, attention_mask=mask)
    alone = model(ids[1:, 6:])
    torch.testing.assert_close(batch.logits[1, 6:], alone.logits[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(batch.concept_ids[1, 6:], alone.concept_ids[0])


# -- C8 cached decoding ----------------------------------------------------------------------------------------------
@torch.no_grad()
def test_cached_decoding_equals_full_forward_while_rows_fire_at_different_times():
    model = make_model()
    ids = random_ids(3, 40, seed=17)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    mask[2, :2] = 0
    full = model(ids, attention_mask=mask)
    prompt = 12
    step = model(ids[:, :prompt], attention_mask=mask[:, :prompt], use_cache=True)
    valid = mask.bool()
    torch.testing.assert_close(step.logits[valid[:, :prompt]], full.logits[:, :prompt][valid[:, :prompt]],
                               atol=1e-4, rtol=1e-4)
    cache, mixed_steps = step.cache, 0
    for t in range(prompt, 40):
        step = model(ids[:, t : t + 1], cache=cache)
        torch.testing.assert_close(step.logits[:, 0], full.logits[:, t], atol=1e-4, rtol=1e-4)
        fired = full.is_concept[:, t]
        assert torch.equal(step.concept_ids[:, 0], full.concept_ids[:, t])
        mixed_steps += int(fired.any() and not fired.all())
    assert mixed_steps >= 5  # concepts fired in some rows but not others, many times
    assert torch.equal(cache.concept_ids[valid], full.concept_ids[valid])
    # the deep cache holds exactly the concept prefix + the current tail of each row
    tail = torch.tensor([40 - 1 - int(row.nonzero().max()) for row in full.is_concept])
    assert torch.equal(cache.deep.lengths, full.is_concept.sum(1) + tail)
    assert torch.equal(cache.middle.lengths, full.is_concept.sum(1))


@torch.no_grad()
def test_generate_is_greedy_over_the_full_forward_and_returns_concepts():
    model = make_model()
    prompt = random_ids(2, 6, seed=19)
    mask = torch.ones_like(prompt)
    prompt[0, :2], mask[0, :2] = 0, 0
    out = model.generate(prompt, attention_mask=mask, max_new_tokens=20, min_new_tokens=20, do_sample=False,
                         return_dict_in_generate=True, pad_token_id=0)
    sequences = out.sequences
    full_mask = torch.cat([mask, torch.ones(2, 20, dtype=mask.dtype)], 1)
    full = model(sequences, attention_mask=full_mask)
    assert torch.equal(full.logits[:, 5:-1].argmax(-1), sequences[:, 6:])
    concepts = out.cache.concept_ids
    assert concepts.shape == (2, 25)  # every token the cache saw: prompt + 19 fed back
    assert torch.equal(concepts[full_mask[:, :25].bool()], full.concept_ids[:, :25][full_mask[:, :25].bool()])


@torch.no_grad()
def test_eager_attention_gives_the_sdpa_logits():
    """The boolean C4 mask becomes an additive bias for eager attention; plain causal stages get an explicit mask."""
    model = make_model()
    ids = random_ids(2, 24, seed=29)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    sdpa = model(ids, attention_mask=mask).logits
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    eager = model(ids, attention_mask=mask).logits
    valid = mask.bool()
    torch.testing.assert_close(eager[valid], sdpa[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(ids[1:]).logits, sdpa[1:], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_beam_search_reorders_the_three_caches():
    """generate(num_beams=…) with the ConceptCache gives the beams of the uncached full forward (rows fire at
    different times, one row left-padded)."""
    model = make_model(eos_token_id=2)
    ids = random_ids(2, 10, seed=3)
    mask = torch.ones_like(ids)
    mask[1, :3], ids[1, :3] = 0, 0
    cached = model.generate(ids, attention_mask=mask, num_beams=3, max_new_tokens=8, do_sample=False)
    uncached = model.generate(ids, attention_mask=mask, num_beams=3, max_new_tokens=8, do_sample=False,
                              use_cache=False)
    assert torch.equal(cached, uncached) and cached.shape[1] == 18


@pytest.mark.parametrize("argument", [{"position_ids": torch.arange(6)[None]}, {"output_hidden_states": True},
                                      {"output_attentions": True}, {"inputs_embeds": torch.zeros(1, 6, 64)}])
def test_forward_refuses_what_it_cannot_honour(argument):
    with pytest.raises(ValueError, match=next(iter(argument))):
        make_model()(random_ids(1, 6), **argument)


@torch.no_grad()
def test_logits_to_keep_gives_the_last_positions_logits():
    model = make_model()
    ids = random_ids(2, 12, seed=5)
    full, last = model(ids).logits, model(ids, logits_to_keep=1).logits
    assert last.shape == (2, 1, VOCAB)
    torch.testing.assert_close(last, full[:, -1:])  # float32 rounding: one row through the head vs twelve
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids, labels=ids, logits_to_keep=1)


def test_generic_tooling_can_call_the_model_on_its_dummy_inputs():
    model = make_model()
    out = model(**model.dummy_inputs)
    assert out.logits.shape[:2] == model.dummy_inputs["input_ids"].shape


def test_a_streamer_gets_the_prompt_then_every_generated_token():
    class Collect:  # the BaseStreamer protocol
        def __init__(self):
            self.ids, self.ended = [], False

        def put(self, value):
            self.ids += value.flatten().tolist()

        def end(self):
            self.ended = True

    model, streamer = make_model(), Collect()
    prompt = torch.randint(4, VOCAB, (1, 6), generator=torch.Generator().manual_seed(3))
    out = model.generate(prompt, max_new_tokens=8, do_sample=False, streamer=streamer)
    assert streamer.ended and streamer.ids == out[0].tolist()
