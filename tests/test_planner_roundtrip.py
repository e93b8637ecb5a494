"""PlannerExecutorModel round trips (SPEC H2–H4): save/load, clean-process remote code, Hub push/pull."""

import torch

from genlab.testing import assert_hub_roundtrip, assert_remote_code_roundtrip, assert_save_load_roundtrip

from test_planner_model import CONCEPTS, make_model, text_batch

U = torch.randint(6, 60, (3, 8), generator=torch.Generator().manual_seed(11))
FORWARD_INPUTS = {"input_ids": U, "concept_ids": CONCEPTS, "text_ids": text_batch()}
GENERATE = dict(call="generate", call_kwargs={"max_new_tokens": 6, "return_concepts": True},
                output_key=["sequences", "concept_ids"])


def test_save_load_and_clean_process_remote_code(tmp_path):
    model = make_model(planner_mtp_heads=1)
    checkpoint = assert_save_load_roundtrip(model, FORWARD_INPUTS, tmp_path=tmp_path,
                                            output_key=["logits", "planner_logits"])
    assert (checkpoint / "generation_config.json").is_file()
    assert {"configuration_planner.py", "modeling_planner.py", "generation_planner.py", "straight_through.py",
            "pointer_generator.py", "unlikelihood.py"} <= {p.name for p in checkpoint.iterdir()}
    assert_save_load_roundtrip(model, {"input_ids": U}, tmp_path=tmp_path, **GENERATE)
    assert_remote_code_roundtrip(model, FORWARD_INPUTS, tmp_path=tmp_path, checkpoint_dir=checkpoint,
                                 output_key=["logits", "planner_logits"])
    assert_remote_code_roundtrip(model, {"input_ids": U}, tmp_path=tmp_path, checkpoint_dir=checkpoint, **GENERATE)


def test_hub_push_pull(hub_server, tmp_path):
    model = make_model()
    assert_hub_roundtrip(model, {"input_ids": U}, endpoint=hub_server.endpoint, repo_id="genlab-tests/planner",
                         tmp_path=tmp_path, **GENERATE)
