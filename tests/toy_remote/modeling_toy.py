"""The toy remote-code model: a flat set of sibling files importing each other as ``from .x import y`` (SPEC H2)."""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_toy import ToyConfig
from .toy_layers import ToyBlock


class ToyModel(PreTrainedModel):
    """Embedding -> ``num_layers`` ToyBlocks -> LM head; ``forward`` returns per-token logits."""

    config_class = ToyConfig
    base_model_prefix = "toy"

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(ToyBlock(config.hidden_size) for _ in range(config.num_layers))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids: torch.LongTensor, labels: torch.LongTensor | None = None) -> MaskedLMOutput:
        hidden = self.embed(input_ids)  # (batch, seq, hidden)
        for block in self.blocks:
            hidden = block(hidden)
        logits = self.lm_head(hidden)  # (batch, seq, vocab)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return MaskedLMOutput(loss=loss, logits=logits)


ToyModel.register_for_auto_class("AutoModel")
