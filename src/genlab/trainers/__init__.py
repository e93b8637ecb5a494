"""Training entry points (do not travel with checkpoints). One module per system: ``ar``, ``merge``,
``concept``, ``planner``; each exposes ``add_arguments(parser)`` and ``run(args)`` for ``genlab train``."""
