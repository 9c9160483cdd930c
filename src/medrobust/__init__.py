"""medrobust: train, attack, certify and ship adversarially robust medical-image classifiers."""

__version__ = "0.1.0"
