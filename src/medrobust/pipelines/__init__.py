"""The Kubeflow DAG (:mod:`.dag`), its compilation with the components' (:mod:`.compile`), and local
execution with kfp.local (:mod:`.local`)."""
