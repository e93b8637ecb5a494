"""The `custom_generate/` folder a Hub repo carries (SPEC S1, H2): loaded by transformers without genlab."""

import json
import os
import subprocess
import sys
import textwrap

import torch

from genlab.generation_speculative import edge_cloud_generate, write_custom_generate_dir
from genlab.tokenization import default_tokenizer
from genlab.trainers.ar import build_model

PROMPTS = ["今天天气", "我爱北京天安门，", "经济"]


def test_custom_generate_folder_runs_without_genlab(tmp_path):
    tok = default_tokenizer()
    cloud, edge = build_model("nano", tok, seed=0), build_model("nano", tok, seed=1)
    cloud.save_pretrained(tmp_path / "cloud")
    tok.save_pretrained(tmp_path / "cloud")
    edge.config.draft_vocab_ids = list(range(0, len(tok), 3))  # a trimmed-vocabulary edge (FR-Spec)
    edge.save_pretrained(tmp_path / "edge")
    folder = write_custom_generate_dir(tmp_path / "cloud")
    assert sorted(p.name for p in folder.iterdir()) == ["cjk_text.py", "generate.py", "generation_speculative.py",
                                                         "logits_process.py", "requirements.txt"]
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["genlab"] = None  # genlab must not be importable: only the folder's code may run
        import torch
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
        cloud_dir, edge_dir = {str(tmp_path / "cloud")!r}, {str(tmp_path / "edge")!r}
        # AutoTokenizer would force Qwen2's byte-level BPE on a qwen2 checkpoint; load the saved tokenizer.json as is
        tok = PreTrainedTokenizerFast.from_pretrained(cloud_dir, padding_side="left")
        cloud = AutoModelForCausalLM.from_pretrained(cloud_dir).eval()
        edge = AutoModelForCausalLM.from_pretrained(edge_dir).eval()
        inputs = tok({PROMPTS!r}, return_tensors="pt", padding=True)
        assert inputs["attention_mask"].sum(1).min() > 2, inputs  # the prompts really are encoded
        reference = cloud.generate(**inputs, max_new_tokens=12, do_sample=False)
        lossless = cloud.generate(**inputs, max_new_tokens=12, do_sample=False, custom_generate=cloud_dir,
                                  trust_remote_code=True, edge_model=edge, preset="lossless")
        gated = cloud.generate(**inputs, max_new_tokens=12, do_sample=False, custom_generate=cloud_dir,
                               trust_remote_code=True, edge_model=edge, preset="fluency", tokenizer=tok,
                               return_dict_in_generate=True)
        from transformers.generation.streamers import BaseStreamer

        class Collect(BaseStreamer):
            def __init__(self):
                self.parts, self.ended = [], False
            def put(self, value):
                self.parts.append(value.flatten().tolist())
            def end(self):
                self.ended = True

        streamer, one = Collect(), tok({PROMPTS[:1]!r}, return_tensors="pt")
        streamed = cloud.generate(**one, max_new_tokens=12, do_sample=False, custom_generate=cloud_dir,
                                  trust_remote_code=True, edge_model=edge, preset="lossless", streamer=streamer)
        assert streamer.ended and sum(streamer.parts, []) == streamed[0].tolist(), (streamer.parts, streamed)
        assert len(streamer.parts) > 2  # the prompt, then block after block
        assert edge.config.draft_vocab_ids[:2] == [0, 3]
        print(json.dumps({{"lossless": lossless.tolist(), "reference": reference.tolist(),
                          "gated_blocks": gated.blocks, "gated_shape": list(gated.sequences.shape),
                          "module": type(gated).__module__}}))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["lossless"] == result["reference"]
    assert 3 <= result["gated_blocks"] <= 12 and result["gated_shape"] == [3, len(result["reference"][0])]
    assert "genlab" not in result["module"] and "custom_generate" in result["module"]


def test_callable_and_folder_give_the_same_tokens(tmp_path):
    tok = default_tokenizer()
    tok.padding_side = "left"
    cloud, edge = build_model("nano", tok, seed=0).eval(), build_model("nano", tok, seed=1).eval()
    cloud.save_pretrained(tmp_path)
    write_custom_generate_dir(tmp_path)
    inputs = tok(PROMPTS, return_tensors="pt", padding=True)
    kwargs = dict(max_new_tokens=10, do_sample=False, edge_model=edge, preset="fluency", entropy_threshold=30.0)
    from genlab.logits_process import TokenClasses

    classes = TokenClasses.from_tokenizer(tok)
    by_callable = cloud.generate(**inputs, **kwargs, custom_generate=edge_cloud_generate, token_classes=classes)
    by_folder = cloud.generate(**inputs, **kwargs, custom_generate=str(tmp_path), trust_remote_code=True,
                               tokenizer=tok)
    assert torch.equal(by_callable, by_folder)


def test_custom_generate_requirements_pin_what_genlab_itself_requires(tmp_path):
    """The folder's pin is the package's own transformers range (the loop needs 5.24's ``cache=`` keyword)."""
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    required = next(d for d in pyproject["project"]["dependencies"] if d.startswith("transformers"))
    written = (write_custom_generate_dir(tmp_path) / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert required in written
