"""Real pretrained weights (C1): SmolLM2-135M GGUF (Llama) → Qwen2 gives the same logits, then it is wrapped.

Loads and dequantises a 135M-parameter GGUF once per module (about 40 s here, under the ~2 min line for
the default run).
"""

import pytest
import torch

from genlab.convert_smollm2 import convert_llama_to_qwen2, load_smollm2_llama
from genlab.masking import causal_padding_rule
from genlab.modeling_concept import Qwen2ConceptCompressionForCausalLM

from test_concept import one_torch_thread  # noqa: F401,E402 (autouse fixture)


@pytest.fixture(scope="module")
def llama_and_qwen2():
    llama = load_smollm2_llama()
    return llama, convert_llama_to_qwen2(llama)


@torch.no_grad()
def test_converted_qwen2_gives_the_llama_logits(llama_and_qwen2):
    llama, qwen2 = llama_and_qwen2
    assert type(qwen2).__name__ == "Qwen2ForCausalLM" and qwen2.config.tie_word_embeddings
    assert qwen2.config.rope_parameters["rope_theta"] == llama.config.rope_parameters["rope_theta"]
    ids = torch.randint(0, llama.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(qwen2(ids).logits, llama(ids).logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(qwen2.model.layers[0].self_attn.q_proj.bias, torch.zeros_like(qwen2.model.layers[0].self_attn.q_proj.bias))


@torch.no_grad()
def test_wrapped_smollm2_keeps_the_base_weights_and_shallow_states(llama_and_qwen2):
    _, qwen2 = llama_and_qwen2
    model = Qwen2ConceptCompressionForCausalLM.from_base_pretrained(
        qwen2, num_shallow_layers=8, num_middle_layers=14, num_deep_layers=8).eval()
    base_state = qwen2.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith(("concept_head.", "concept_embedding.")):
            assert torch.equal(value, base_state[key]), key
    ids = torch.randint(0, qwen2.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    shallow = qwen2(ids, output_hidden_states=True).hidden_states[8]
    ones = torch.ones_like(ids, dtype=torch.bool)
    mine = model.run_stage("shallow", model.model.embed_tokens(ids), torch.arange(40)[None], causal_padding_rule(ones))
    torch.testing.assert_close(mine, shallow, atol=1e-4, rtol=1e-4)
    out = model(ids, labels=ids)
    assert torch.isfinite(out.loss) and out.is_concept.any()
