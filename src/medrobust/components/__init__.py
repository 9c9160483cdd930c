"""Kubeflow Pipelines components: one lightweight component per stage, each a thin shell that parses
params.yaml text, calls ``medrobust.stages.<stage>.run`` and copies the result's fields into its
outputs — no stage logic lives here. ``medrobust pipeline compile`` writes each one to
``components/<stage>/component.yaml`` so other teams can reuse a stage with
``kfp.components.load_component_from_file``.

The component functions run in the image ``BASE_IMAGE`` (medrobust installed, see docker/), or, with
kfp.local's SubprocessRunner, in the current Python environment.
"""

from medrobust.components.advgen import advgen
from medrobust.components.evaluate import attack, evaluate
from medrobust.components.ingest import ingest
from medrobust.components.register import register
from medrobust.components.synthesize import synthesize
from medrobust.components.train import train

#: stage name -> component, in pipeline order
COMPONENTS = {"synthesize": synthesize, "ingest": ingest, "advgen": advgen, "train": train, "attack": attack,
              "evaluate": evaluate, "register": register}

__all__ = ["COMPONENTS", "advgen", "attack", "evaluate", "ingest", "register", "synthesize", "train"]
