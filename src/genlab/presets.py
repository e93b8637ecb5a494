"""Size presets for the autoregressive Qwen2 yardstick (and the models built on it).

``tiny`` ≈ 6 layers / 256 hidden and ``base`` ≈ 12 layers / 512 hidden (issue: foundation §4); ``nano`` is
for tests and smoke runs. Every preset is a plain ``Qwen2Config`` — nothing genlab-specific travels.
"""

from __future__ import annotations

from transformers import Qwen2Config

AR_PRESETS: dict[str, dict] = {
    "nano": dict(num_hidden_layers=2, hidden_size=64, intermediate_size=176, num_attention_heads=4,
                 num_key_value_heads=2),
    "tiny": dict(num_hidden_layers=6, hidden_size=256, intermediate_size=704, num_attention_heads=4,
                 num_key_value_heads=2),
    "base": dict(num_hidden_layers=12, hidden_size=512, intermediate_size=1408, num_attention_heads=8,
                 num_key_value_heads=4),
}


def qwen2_config(preset: str, vocab_size: int, *, max_position_embeddings: int = 1024,
                 pad_token_id: int | None = None, bos_token_id: int | None = None,
                 eos_token_id: int | None = None, **overrides) -> Qwen2Config:
    """A ``Qwen2Config`` for ``preset`` (``ValueError`` naming the allowed presets otherwise)."""
    if preset not in AR_PRESETS:
        raise ValueError(f"preset must be one of {sorted(AR_PRESETS)}, got {preset!r}")
    fields = {**AR_PRESETS[preset], **overrides}
    return Qwen2Config(
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        **fields,
    )
