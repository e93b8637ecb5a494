"""genlab: research generation models that live natively in the HuggingFace ecosystem.

Importing ``genlab`` registers every architecture with the ``Auto*`` classes (SPEC H1), so
``AutoConfig.from_pretrained`` / ``AutoModel*.from_pretrained`` resolve genlab checkpoints without
``trust_remote_code`` when genlab is installed; checkpoints also carry their code for machines where it is not.
"""

__version__ = "0.1.0"
