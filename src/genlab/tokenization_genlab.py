"""The tokenizer class genlab checkpoints declare in ``tokenizer_config.json``; it travels with them.

genlab's tokenizers are character-level `tokenizers` models (``genlab.tokenization``): ``<s>`` then one token per
character, nothing a fast tokenizer does not already do. The class exists for ``AutoTokenizer`` and
``pipeline``: transformers maps the ``qwen2`` model type to ``Qwen2Tokenizer`` and, for that type, overrides the
``tokenizer_class`` a checkpoint declares, re-tokenising Chinese as byte-level BPE (``"今天"`` → ``['<s>', '°']``).
A tokenizer config with an ``auto_map`` is read as it is written instead: with this class under
``trust_remote_code=True``, with transformers' fast tokenizer over the same ``tokenizer.json`` without it.
"""

from transformers import PreTrainedTokenizerFast


class GenlabCharTokenizer(PreTrainedTokenizerFast):
    """A genlab character-level tokenizer (``tokenizer.json`` holds the vocabulary and the ``<s>`` template)."""
