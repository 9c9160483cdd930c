"""Model registry: robustness gates and promotion with MLflow aliases (``@champion``)."""
