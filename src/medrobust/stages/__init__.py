"""The pipeline's stages, one module each, each a typed ``run(params, ...)`` function.

``synthesize`` (default data only) -> ``ingest`` -> ``advgen`` -> ``train`` -> ``evaluate`` -> ``register``.
The CLI, ``dvc.yaml`` and the Kubeflow components only move paths and params into these functions.
"""

STAGES = ("synthesize", "ingest", "advgen", "train", "evaluate", "register")
