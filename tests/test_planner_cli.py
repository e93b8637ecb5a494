"""`genlab train planner` → `genlab generate` → `genlab probe planner` on a small user corpus (SPEC P7, P8, H8)."""

import json
import random

import torch

from genlab.cli import main
from genlab.bench.probe import drop_concepts

CHARS = "天地人和春夏秋冬山水风云花草树木日月星辰江河湖海东南西北上下左右大小多少"


def test_drop_concepts_removes_the_given_share_and_keeps_order():
    z = torch.tensor([[[3, 4, 5, 6], [7, 8, 0, 0]]])
    g = torch.Generator().manual_seed(0)
    assert torch.equal(drop_concepts(z, 0.0, g)[0], z)
    assert (drop_concepts(z, 1.0, g)[0] == 0).all()
    half = drop_concepts(z, 0.5, g)[0][0, 0]
    kept = half[half != 0].tolist()
    assert kept == sorted(kept) and set(kept) <= {3, 4, 5, 6}
    embeds = z[..., None].float().expand(-1, -1, -1, 2)  # each slot's embedding names its id
    ids, moved = drop_concepts(z, 0.5, torch.Generator().manual_seed(1), embeds)
    slots = ids != 0
    assert torch.equal(moved[..., 0][slots], ids[slots].float())  # the embeddings moved with their ids


def test_train_generate_probe_end_to_end(tmp_path, capsys):
    rng = random.Random(0)
    lines = ["。".join("".join(rng.choice(CHARS) for _ in range(rng.randint(5, 12))) for _ in range(3)) + "。"
             for _ in range(300)]
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(lines), encoding="utf-8")
    run_dir = tmp_path / "run"
    assert main(["train", "planner", "--data", str(data), "--run-dir", str(run_dir), "--max-steps", "3",
                 "--batch-size", "4", "--hidden-size", "32", "--planner-layers", "1", "--executor-layers", "1",
                 "--monitor-steps", "3", "--warmup-estep", "1", "--estep-top-k", "2", "--report-to", "none",
                 "--save-steps", "3", "--logging-steps", "3"]) == 0
    manifest = json.loads((run_dir / "genlab_run.json").read_text(encoding="utf-8"))
    assert manifest["system"] == "planner" and manifest["steps"] == 3
    capsys.readouterr()
    assert main(["generate", "--model", str(run_dir), "--max-new-tokens", "5", "--greedy", "天地人和"]) == 0
    u, plan, _ = capsys.readouterr().out.strip().split("\t")
    assert u == "天地人和" and len(json.loads(plan)) == 2
    out = tmp_path / "probe.json"
    assert main(["probe", "planner", str(run_dir), "--split", "train", "--pairs", "8", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["pairs"] == 8 and set(result["delta_nll"]) == {"0.1", "0.25", "0.5", "1.0"}
    assert main(["probe", "planner", str(tmp_path / "missing")]) == 2


def test_one_sentence_per_line_file_is_a_clear_error(tmp_path, small_corpus, capsys):
    code = main(["train", "planner", "--run-dir", str(tmp_path / "run"), "--data", str(small_corpus),
                 "--max-steps", "1", "--report-to", "none"])
    assert code == 2
    assert "no (u, y) pairs" in capsys.readouterr().err


def test_your_own_pairs_with_the_keyword_proposer_train_generate_and_probe(tmp_path, capsys):
    rng = random.Random(1)
    rows = []
    for _ in range(300):
        words = ["".join(rng.choice(CHARS) for _ in range(2)) for _ in range(3)]
        rows.append({"u": "、".join(words), "y": "".join(words) + "。"})
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    run_dir = tmp_path / "run"
    assert main(["train", "planner", "--pairs", str(pairs), "--proposer", "keywords", "--estep-selection",
                 "likelihood", "--run-dir", str(run_dir), "--max-steps", "3", "--batch-size", "4", "--hidden-size",
                 "32", "--planner-layers", "1", "--executor-layers", "1", "--monitor-steps", "3", "--warmup-estep",
                 "1", "--estep-top-k", "2", "--report-to", "none", "--save-steps", "3", "--logging-steps", "3",
                 "--warmup-end", "gain"]) == 0
    manifest = json.loads((run_dir / "genlab_run.json").read_text(encoding="utf-8"))
    assert manifest["pairs_file"] == str(pairs) and manifest["pairs"] > 250  # the train split of the file
    assert "estep_warmup_ended_at" in manifest  # the gain rule ran (an untrained executor: None, or the step)
    logged = json.loads((run_dir / "trainer_log.json").read_text(encoding="utf-8"))
    assert any("monitor/warmup_gain" in entry and "monitor/warmup_cost" in entry for entry in logged)
    capsys.readouterr()
    assert main(["generate", "--model", str(run_dir), "--max-new-tokens", "5", "--greedy", "天地、人和"]) == 0
    assert len(json.loads(capsys.readouterr().out.strip().split("\t")[1])) == 1  # one text concept type
    assert main(["probe", "planner", str(run_dir), "--split", "train", "--pairs", "8"]) == 0  # reads the file again
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"u": "天地"}\n', encoding="utf-8")
    assert main(["train", "planner", "--pairs", str(bad), "--run-dir", str(tmp_path / "bad"), "--max-steps", "1",
                 "--report-to", "none"]) == 2
    assert "line 1 needs string fields 'u' and 'y'" in capsys.readouterr().err
