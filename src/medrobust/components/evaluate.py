"""Components: attack (one entry of the attack suite, fanned out) and evaluate (the merge) — shells around
:func:`medrobust.stages.evaluate.run_attack` and :func:`medrobust.stages.evaluate.run`."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from medrobust.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def attack(params_yaml: str, dataset: Input[Dataset], model: Input[Model], attack_key: str,
           attacked: Output[Artifact]):
    """One entry of evaluate.attacks, at each of its epsilons, on the test split (one task of the fan-out).

    Runs medrobust.stages.evaluate.run_attack; the evaluate task merges every such run.

    Args:
        params_yaml: params.yaml as one line of JSON (medrobust.params.params_as_text).
        dataset: the ingest task's dataset.
        model: the train task's model.
        attack_key: <name>_<norm> of an entry of evaluate.attacks.

    Returns:
        attacked: the attack run (attack.json, conditions.npz), bound to the model's and dataset's SHA-256.
    """
    from medrobust.params import params_from_text
    from medrobust.stages import evaluate as stage
    from medrobust.utils import setup_logging

    setup_logging()
    stage.run_attack(params_from_text(params_yaml), dataset.path, model.path, attack_key, attacked.path)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(
    params_yaml: str,
    dataset: Input[Dataset],
    adversarial: Input[Dataset],
    model: Input[Model],
    attacks: Input[List[Artifact]],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[Markdown],
) -> bool:
    """Evaluate; returns whether the absolute gates pass (the DAG branches on it).

    Runs medrobust.stages.evaluate.run: clean accuracy and AUC, the white-box attacks of evaluate.attacks
    (from the attack tasks' runs; an attack without a matching run is run here), the gradient-masking checks, natural shifts and the transfer sets, all logged to the train task's
    MLflow run; then the absolute gates of register.gates.

    Args:
        params_yaml: params.yaml as one line of JSON (medrobust.params.params_as_text).
        dataset: the ingest task's dataset.
        adversarial: the advgen task's transfer sets.
        model: the train task's model.
        attacks: the attack tasks' runs (dsl.Collected over the fan-out).

    Returns:
        evaluation: metrics.json, robustness.csv, robustness.png, shifts.png (with natural shifts),
            report.md, gates.json and timing.json.
        metrics: clean_accuracy, clean_auc and gate_robust_accuracy (the gate attack at the gate epsilon).
        report: report.md, the readable evaluation report.
        Output: whether every absolute gate passes (the champion comparison comes at registration).

    Raises:
        ConfigError: params_yaml is invalid.
    """
    import shutil

    from medrobust.params import params_from_text
    from medrobust.stages import evaluate as stage
    from medrobust.utils import setup_logging

    setup_logging()
    result = stage.run(params_from_text(params_yaml), dataset.path, model.path, adversarial.path, evaluation.path,
                       attack_runs=[a.path for a in attacks])
    metrics.log_metric("clean_accuracy", result.clean_accuracy)
    metrics.log_metric("clean_auc", result.clean_auc)
    metrics.log_metric("gate_robust_accuracy", result.gate_robust_accuracy)
    shutil.copyfile(result.report, report.path)
    return result.passes_gates
