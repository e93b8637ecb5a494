"""A toy remote-code architecture (model_type ``genlab_toy``) that proves the round-trip kit (SPEC H2)."""
