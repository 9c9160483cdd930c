"""A stage killed with ``kill -9`` while MLflow or the registry held its state: the next start repairs it (issue 14).

Real processes and real SIGKILLs against the session's real sqlite registry (a copy per test).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.conftest import REPO, tiny_params

NAME = "medrobust-classifier"

_RUN = r"""
import sys, time
import mlflow
from medrobust.registry import tracking
from medrobust.params import parse_params
tracking.configure(parse_params({}).mlflow)
with mlflow.start_run(run_name="doomed"):
    tracking.claim_run()
    print(mlflow.active_run().info.run_id, flush=True)
    time.sleep(120)
"""

_REGISTER = r"""
import sys, time
from medrobust.registry import champion
from medrobust.stages import register
from tests.conftest import tiny_params

def killed_here(*args, **kwargs):  # right after "Created version", before any gate is recorded
    print("READY", flush=True)
    time.sleep(120)

champion.tag_gate_numbers = killed_here
register.run(tiny_params(), sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])
"""


def _run_and_kill(code: str, *args: str) -> str:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    line = proc.stdout.readline().strip()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert line, "the child process printed nothing before it was killed"
    return line


def test_a_run_left_running_by_a_killed_process_is_marked_failed_on_the_next_start(registry):
    from medrobust.registry import tracking

    run_id = _run_and_kill(_RUN)
    assert registry.get_run(run_id).info.status == "RUNNING"
    tracking.configure(tiny_params().mlflow)  # any stage's start
    run = registry.get_run(run_id)
    assert run.info.status == "FAILED" and "died with the run open" in run.data.tags[tracking.INTERRUPTED_TAG]


def test_register_killed_after_created_version_is_tagged_incomplete_and_resumed(pipeline_run, candidates,
                                                                              registry, tmp_path):
    from medrobust.registry import champion
    from medrobust.stages import register

    c = candidates[0]
    before = {v.version for v in registry.search_model_versions(f"name='{NAME}'")}
    assert _run_and_kill(_REGISTER, str(c.model), str(c.evaluation), str(tmp_path / "decision.json"),
                         str(pipeline_run.dataset)) == "READY"
    (new,) = [v for v in registry.search_model_versions(f"name='{NAME}'") if v.version not in before]
    assert "validation_status" not in new.tags  # the kill left a version with no verdict
    assert champion.mark_incomplete(registry, NAME) == [str(new.version)]
    assert registry.get_model_version(NAME, new.version).tags["validation_status"] == "incomplete"
    assert champion.mark_incomplete(registry, NAME) == []  # once
    # the next register of the same run resumes that version instead of calling it "already registered"
    decision = register.run(tiny_params(), c.model, c.evaluation, tmp_path / "decision.json", pipeline_run.dataset)
    assert decision.version == str(new.version) and not decision.already_registered and decision.gates
    tags = registry.get_model_version(NAME, new.version).tags
    assert tags["validation_status"] in {"passed", "challenger", "rejected"} and "gate.clean_accuracy.verdict" in tags
    assert len(registry.search_model_versions(f"name='{NAME}'")) == len(before) + 1  # no second version
