"""genlab: research generation models that live natively in the HuggingFace ecosystem.

Importing ``genlab`` registers every architecture with ``AutoConfig`` and the fitting ``AutoModel*``
classes (SPEC H1), so genlab checkpoints load without ``trust_remote_code`` where genlab is installed;
the modeling classes also call ``register_for_auto_class`` so every checkpoint carries its own code.
"""

from transformers import AutoConfig

__version__ = "0.1.0"


def _register(config_class, *auto_model_pairs) -> None:
    """Register ``config_class`` with ``AutoConfig`` and each ``(AutoModelX, ModelClass)`` pair."""
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    for auto_class, model_class in auto_model_pairs:
        auto_class.register(config_class, model_class, exist_ok=True)


# One block per architecture (imports kept local to the block):


def _register_planner() -> None:  # concept-first planner–executor (SPEC P1–P8)
    from transformers import AutoModel

    from .configuration_planner import PlannerExecutorConfig
    from .modeling_planner import PlannerExecutorModel

    _register(PlannerExecutorConfig, (AutoModel, PlannerExecutorModel))


_register_planner()


def _register_concept() -> None:  # online concept compression on Qwen2 (SPEC C1–C10)
    from transformers import AutoModelForCausalLM

    from .configuration_concept import Qwen2ConceptCompressionConfig
    from .modeling_concept import Qwen2ConceptCompressionForCausalLM

    _register(Qwen2ConceptCompressionConfig, (AutoModelForCausalLM, Qwen2ConceptCompressionForCausalLM))


_register_concept()


def _register_merge() -> None:  # MERGE: Mask-Edit-Refine Gated Encoder (SPEC M1–M10)
    from transformers import AutoModel

    from .configuration_merge import MergeConfig
    from .modeling_merge import MergeForMaskedRefinement

    _register(MergeConfig, (AutoModel, MergeForMaskedRefinement))


_register_merge()
