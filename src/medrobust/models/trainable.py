"""Which parameters train: the whole model, its last block, its head, or named prefixes."""

from __future__ import annotations

from torch import nn

from medrobust.models.classifier import FROZEN_BN, Classifier

TRAINABLE_CHOICES = ("all", "last_block", "head")


def set_trainable(model: Classifier, which: str = "all") -> list[str]:
    """Choose which parameters train; returns the trainable parameter names.

    ``which``: ``all``; ``last_block`` (the backbone's last block + the head, as ARFL fine-tunes VGG16);
    ``head`` (the head only: a frozen encoder, e.g. linear probing / RAN); or a comma-separated list of
    parameter-name prefixes (``features.layer4,head``). A learned adapter always trains. Batch-norm
    layers whose parameters are all frozen stay in eval mode while the model trains.

    Args:
        model: the classifier, changed in place (``requires_grad`` of every parameter).
        which: ``all``, ``last_block``, ``head`` or comma-separated parameter-name prefixes.

    Returns:
        The names of the parameters that train.

    Raises:
        ValueError: a given prefix matches no parameter name.
    """
    if which == "all":
        prefixes: tuple[str, ...] = ("",)
    elif which == "last_block":
        prefixes = (*model.last_block, "head", "adapter")
    elif which == "head":
        prefixes = ("head", "adapter")
    else:
        prefixes = tuple(p.strip() for p in which.split(",") if p.strip())
        names = [n for n, _ in model.named_parameters()]
        for p in prefixes:
            if not any(n == p or n.startswith(p + ".") for n in names):
                raise ValueError(f"trainable: no parameter starts with {p!r}; choose from {TRAINABLE_CHOICES} "
                                 f"or prefixes such as {sorted({n.rsplit('.', 2)[0] for n in names})[:6]}")

    def keep(name: str) -> bool:
        return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)

    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(keep(name))
        if p.requires_grad:
            trainable.append(name)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters())
            setattr(m, FROZEN_BN, bool(params) and not any(p.requires_grad for p in params))
    model.train(model.training)
    return trainable


__all__ = ["TRAINABLE_CHOICES", "set_trainable"]
