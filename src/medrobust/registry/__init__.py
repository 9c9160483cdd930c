"""MLflow: the tracking store (:mod:`.tracking`), the model registry and its ``@champion`` alias
(:mod:`.champion`), and the robustness gates a version must pass to earn it (:mod:`.gates`)."""
