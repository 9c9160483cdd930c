"""Evaluation: clean and robust metrics, gradient-masking checks, natural shifts, plots and the report.

* :mod:`.suite` — :func:`evaluate_model`, the whole evaluation (``metrics.json``);
* :mod:`.metrics` — clean accuracy/AUC and robust accuracy of one attack;
* :mod:`.masking`, :mod:`.shifts` — the gradient-masking checks and the natural shifts;
* :mod:`.plots`, :mod:`.report` — figures and ``report.md``; :mod:`.config` — ``evaluate:``.
"""
