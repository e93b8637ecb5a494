"""genlab: research generation models that live natively in the HuggingFace ecosystem.

Importing ``genlab`` registers every architecture with ``AutoConfig`` and the fitting ``AutoModel*``
classes (SPEC H1), so genlab checkpoints load without ``trust_remote_code`` where genlab is installed;
the modeling classes also call ``register_for_auto_class`` so every checkpoint carries its own code.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_concept import Qwen2ConceptCompressionConfig
from .configuration_merge import MergeConfig
from .configuration_planner import PlannerExecutorConfig
from .modeling_concept import Qwen2ConceptCompressionForCausalLM
from .modeling_merge import MergeForMaskedRefinement
from .modeling_planner import PlannerExecutorModel

__version__ = "0.1.0"


def _register(config_class, *auto_model_pairs) -> None:
    """Register ``config_class`` with ``AutoConfig`` and each ``(AutoModelX, ModelClass)`` pair."""
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    for auto_class, model_class in auto_model_pairs:
        auto_class.register(config_class, model_class, exist_ok=True)


_register(PlannerExecutorConfig, (AutoModel, PlannerExecutorModel))  # concept-first planner–executor (P1–P8)
_register(Qwen2ConceptCompressionConfig, (AutoModelForCausalLM, Qwen2ConceptCompressionForCausalLM))  # C1–C10
_register(MergeConfig, (AutoModel, MergeForMaskedRefinement))  # MERGE: Mask-Edit-Refine Gated Encoder (M1–M10)
