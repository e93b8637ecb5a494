"""Definitions the speculative benchmark relies on (SPEC S6, B): cloud agreement and edge distillation loss."""

import copy

import torch
from transformers import TrainingArguments

from genlab.bench.speculative import cloud_agreement
from genlab.trainers.edge import DistillationTrainer
from genlab.logits_process import build_cjk_processors
from genlab.tokenization import default_tokenizer
from genlab.trainers.ar import build_model


def test_cloud_agreement_is_one_on_cloud_greedy_output_and_drops_on_a_foreign_token():
    tok = default_tokenizer()
    cloud = build_model("nano", tok, seed=0).eval()
    processors = build_cjk_processors(tok)
    inputs = tok("今天天气", return_tensors="pt")
    prompt_len = inputs["input_ids"].shape[1]
    out = cloud.generate(**inputs, max_new_tokens=8, do_sample=False, logits_processor=processors)
    assert cloud_agreement(cloud, processors, out, prompt_len) == (8, 8)
    changed = out.clone()
    changed[0, prompt_len] = (changed[0, prompt_len] + 1) % len(tok)
    agree, total = cloud_agreement(cloud, processors, changed, prompt_len)
    assert total == 8 and agree < 8


def test_distillation_loss_is_zero_when_the_edge_equals_the_cloud_and_reaches_only_the_edge(tmp_path):
    """KL(cloud ‖ edge) over the draft vocabulary: 0 for an exact copy, > 0 once a layer moves; gradients reach the
    edge's layers and never the teacher."""
    tok = default_tokenizer()
    teacher = build_model("nano", tok, seed=0)
    student = copy.deepcopy(teacher)
    student.config.draft_vocab_ids = list(range(0, len(tok), 2))
    trainer = DistillationTrainer(model=student, args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True),
                                  teacher=teacher)
    ids = tok(["我爱北京天安门"], return_tensors="pt")["input_ids"]
    assert trainer.compute_loss(student, {"input_ids": ids}).abs() < 1e-6
    with torch.no_grad():
        student.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    loss = trainer.compute_loss(student, {"input_ids": ids})
    assert loss > 1e-4
    loss.backward()
    assert student.model.layers[0].mlp.down_proj.weight.grad is not None
    assert teacher.model.layers[0].mlp.down_proj.weight.grad is None
