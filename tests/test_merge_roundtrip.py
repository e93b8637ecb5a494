"""MERGE round trips with the kit (SPEC H2–H4): save/load, clean-process remote code, Hub push/pull."""

import json

import torch

from genlab.testing import assert_hub_roundtrip, assert_remote_code_roundtrip, assert_save_load_roundtrip
from test_merge_generate import ROWS, right_padded
from test_merge_model import tiny_model

INPUTS = {"input_ids": right_padded(ROWS)}
GENERATE = dict(call="generate", call_kwargs={"mode": "edit", "max_new_tokens": 4, "return_dict_in_generate": True},
                output_key=["sequences", "rounds"])  # the trace holds NaN after a row stops


def test_save_load_forward_and_generate_identical(tmp_path):
    model = tiny_model(seed=2)
    forward = dict(call="forward", call_kwargs={"num_insertions": torch.tensor([2, 3, 1])},
                   output_key=["logits", "fused_ids"])
    checkpoint = assert_save_load_roundtrip(model, INPUTS, tmp_path=tmp_path, **forward)
    assert_save_load_roundtrip(model, INPUTS, tmp_path=tmp_path, **GENERATE)
    generation = json.loads((checkpoint / "generation_config.json").read_text())
    assert (generation["mode"], generation["max_rounds"], generation["confidence_stop"]) == ("auto", 6, 0.9)
    assert json.loads((checkpoint / "config.json").read_text())["auto_map"]["AutoModel"].endswith(
        "modeling_merge.MergeForMaskedRefinement")


def test_remote_code_generate_in_clean_process(tmp_path):
    assert_remote_code_roundtrip(tiny_model(seed=3), INPUTS, tmp_path=tmp_path, **GENERATE)


def test_hub_push_pull_generate(hub_server, tmp_path):
    assert_hub_roundtrip(tiny_model(seed=4), INPUTS, endpoint=hub_server.endpoint, repo_id="genlab-tests/merge",
                         tmp_path=tmp_path, **GENERATE)
    files = set(hub_server.list_files("genlab-tests/merge"))
    assert {"configuration_merge.py", "modeling_merge.py", "generation_refinement.py", "straight_through.py",
            "model.safetensors", "generation_config.json"} <= files
