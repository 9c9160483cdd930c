"""Default locations, relative to the current folder (the repository root, as in dvc.yaml)."""

from pathlib import Path

RAW = Path("data/raw")  # ingest's DVC dependency: where local inputs live
RAW_SYNTHETIC = RAW / "synthetic"
INGESTED = Path("data/ingested")
ADVGEN = Path("data/advgen")
MODEL = Path("models/classifier")
EVALUATION = Path("reports/evaluation")
DECISION = Path("reports/decision.json")
REPORT = Path("reports/report.md")
STAGE_PARAMS = Path(".medrobust/stage-params.yaml")
PIPELINE_YAML = Path("pipelines/medrobust_pipeline.yaml")
COMPONENTS = Path("components")
PARAMS_SCHEMA = Path("params.schema.json")
KFP_LOCAL_ROOT = Path(".kfp")
