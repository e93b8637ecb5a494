"""Configuration of the toy remote-code model (SPEC H2 proof; see ``modeling_toy``)."""

from transformers import PretrainedConfig


class ToyConfig(PretrainedConfig):
    """A tiny config: ``vocab_size`` tokens embedded in ``hidden_size`` and mixed by ``num_layers`` blocks."""

    model_type = "genlab_toy"

    def __init__(self, vocab_size: int = 50, hidden_size: int = 16, num_layers: int = 2, **kwargs):
        if hidden_size <= 0 or num_layers <= 0:
            raise ValueError(f"hidden_size and num_layers must be positive, got {hidden_size} and {num_layers}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        super().__init__(**kwargs)


ToyConfig.register_for_auto_class("AutoConfig")
