"""Kubeflow Pipelines components: one lightweight component per stage, each a thin shell that parses
params.yaml text and calls ``medrobust.stages.<stage>.run`` — no stage logic lives here.

The component functions run in the image ``BASE_IMAGE`` (medrobust installed, see docker/), or, with
kfp.local's SubprocessRunner, in the current Python environment.
"""

from medrobust.components.advgen import advgen
from medrobust.components.evaluate import evaluate
from medrobust.components.ingest import ingest
from medrobust.components.register import register
from medrobust.components.synthesize import synthesize
from medrobust.components.train import train

__all__ = ["synthesize", "ingest", "advgen", "train", "evaluate", "register"]
