"""The Kubeflow DAG (``dag.py``), its compilation, and local execution with kfp.local (``local.py``)."""
