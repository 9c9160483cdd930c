"""``medrobust.certify``: certified robustness by randomized smoothing (Cohen et al., ICML 2019).

An attack gives an upper bound on robustness; a certificate a lower one, for any attack inside
an L2 radius, with probability ``1 - α``. :func:`certify` (CERTIFY) and :func:`predict` (PREDICT)
are in :mod:`medrobust.certify.smoothing`; the soundness check that attacks the smoothed classifier
inside its certified radii in :mod:`medrobust.certify.attack`.
"""

from medrobust.attacks.smoothed import smoothed_pgd_l2
from medrobust.certify.attack import soundness_check
from medrobust.certify.smoothing import (ABSTAIN, Certificate, certify, certify_all, lower_confidence_bound,
                                         predict, sample_counts)

__all__ = ["ABSTAIN", "Certificate", "certify", "certify_all", "lower_confidence_bound", "predict",
           "sample_counts", "smoothed_pgd_l2", "soundness_check"]
