"""Concept compression checkpoints: save/load, clean-process remote code, Hub (SPEC H2–H4), forward and generate."""

import torch

from genlab.testing import assert_hub_roundtrip, assert_remote_code_roundtrip, assert_save_load_roundtrip

from test_concept import make_model, one_torch_thread, random_ids  # noqa: F401 (autouse fixture)

PROMPT = random_ids(2, 8, seed=23)
MASK = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
FORWARD_INPUTS = {"input_ids": random_ids(2, 24, seed=21)}
FORWARD = dict(output_key=["logits", "concept_ids"], auto_class="AutoModelForCausalLM")
GENERATE = dict(call="generate", call_kwargs={"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0},
                auto_class="AutoModelForCausalLM")


def test_save_load_and_remote_code_roundtrip(tmp_path):
    model = make_model()
    checkpoint = assert_save_load_roundtrip(model, FORWARD_INPUTS, tmp_path=tmp_path, output_key=FORWARD["output_key"])
    assert {"modeling_concept.py", "configuration_concept.py", "generation_concept.py",
            "straight_through.py"} <= {p.name for p in checkpoint.iterdir()}
    assert_remote_code_roundtrip(model, FORWARD_INPUTS, tmp_path=tmp_path, checkpoint_dir=checkpoint, **FORWARD)
    assert_remote_code_roundtrip(model, {"input_ids": PROMPT, "attention_mask": MASK}, tmp_path=tmp_path,
                                 checkpoint_dir=checkpoint, **GENERATE)


def test_hub_roundtrip(hub_server, tmp_path):
    model = make_model(seed=1)
    assert_hub_roundtrip(model, {"input_ids": PROMPT, "attention_mask": MASK}, endpoint=hub_server.endpoint,
                         repo_id="genlab-tests/concept", tmp_path=tmp_path, **GENERATE)
