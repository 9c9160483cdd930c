"""Stage 2 — advgen: adversarial versions of the test split, crafted on a surrogate model.

A surrogate (standard training on the clean train split, or weights given in
``advgen.surrogate.weights``) is attacked with every (attack, norm, ε) in ``advgen.attacks``.
Later stages use the result as a *transfer* (grey-box) test set, and training methods may use it as
pre-computed adversarial data.

Outputs (in ``out_dir``, written atomically):

* ``manifest.csv`` — one row per adversarial image: ``image_id`` (the clean image's), label,
  ``set`` (e.g. ``pgd_linf@0.031373``), attack, norm, eps, steps, step_size, ``surrogate_sha256``;
* ``shards/*.npy`` — the images, float32 (N, 1, S, S) in [0, 1];
* ``surrogate/model.pt`` + ``model.json`` — the surrogate (state dict: loads with weights_only);
* ``advgen.json`` — the surrogate's own accuracy on every set (a white-box number for it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from medrobust.attacks import Attack
from medrobust.attacks.spec import from_spec
from medrobust.data.shards import load_split, write_shards
from medrobust.models import accuracy, save_model
from medrobust.params import Params
from medrobust.training import build_surrogate
from medrobust.utils import atomic_output_dir, resolve_device, seed_everything, sha256_file, write_csv, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdvgenResult:
    """What advgen wrote: the folder, the surrogate's accuracy on every set, the surrogate's hash.

    Attributes:
        out_dir: the stage's output folder.
        sets: set id (:func:`set_id`) -> the surrogate's accuracy on that set; ``"clean"`` is the
            clean test split.
        surrogate_sha256: SHA-256 of ``surrogate/model.pt``.
    """

    out_dir: Path
    sets: dict[str, float]  # set id -> surrogate accuracy on it
    surrogate_sha256: str


def set_id(attack_key: str, eps: float) -> str:
    """The id of one adversarial set, e.g. ``pgd_linf@0.031373``.

    Args:
        attack_key: ``<attack>_<norm>`` (:attr:`medrobust.attacks.spec.AttackSpec.key`).
        eps: the budget, written with 6 decimals.

    Returns:
        ``<attack_key>@<eps>``.

    Example:
        >>> set_id("pgd_linf", 8 / 255)
        'pgd_linf@0.031373'
    """
    return f"{attack_key}@{eps:.6f}"


def attack_dataset(attack: Attack, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   device: torch.device) -> torch.Tensor:
    """Adversarial versions of ``x`` (returned on the CPU), attacked batch by batch on ``device``.

    Args:
        attack: the attack, built on a model that lives on ``device``.
        x: images in [0, 1] (any device).
        y: ``(N,)`` their labels (targeted attacks: target classes).
        batch_size: images per attack call.
        device: where each batch is attacked.

    Returns:
        The adversarial images, shaped like ``x``, on the CPU, in the order of ``x``.
    """
    return torch.cat([
        attack(x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)).cpu()
        for i in range(0, len(x), batch_size)
    ])


def run(params: Params, dataset_dir: str | Path, out_dir: str | Path) -> AdvgenResult:
    """Train (or load) the surrogate and write the adversarial test sets.

    Args:
        params: validated params (``advgen``, ``data``, ``seed``, ``device``).
        dataset_dir: the ingest stage's output.
        out_dir: the stage's output folder (replaced atomically on success).

    Returns:
        The surrogate's accuracy per set and its SHA-256.
    """
    cfg = params.advgen
    seed_everything(params.seed + 101)
    train, val, test = (load_split(dataset_dir, s) for s in ("train", "val", "test"))
    device = resolve_device(params.device)
    with atomic_output_dir(out_dir) as tmp:
        model, spec = build_surrogate(cfg.surrogate, train, val, len(params.data.classes), params.data.image_size,
                                      seed=params.seed + 101, device=device)
        save_model(model, spec, tmp / "surrogate")
        digest = sha256_file(tmp / "surrogate" / "model.pt")
        clean_acc = accuracy(model, test.x, test.y)
        sets: dict[str, float] = {"clean": clean_acc}
        rows = []
        jobs = [(a, e) for a in cfg.attacks for e in a.eps]
        for spec_a, eps in tqdm(jobs, desc="advgen", mininterval=5):
            sid = set_id(spec_a.key, eps)
            attack = from_spec(spec_a, model, eps, seed=params.seed)
            x_adv = attack_dataset(attack, test.x, test.y, cfg.batch_size, device)
            sets[sid] = accuracy(model, x_adv, test.y)
            refs = write_shards(tmp, "test", list(x_adv.numpy()), params.data.shard_size,
                                prefix=sid.replace("@", "-eps"))
            # from the attack object: the spec leaves unset options to the attack's defaults
            steps = getattr(attack, "steps", 1)
            step_size = getattr(attack, "step_size", eps)
            for (shard, idx), (_, m) in zip(refs, test.manifest.iterrows(), strict=True):
                rows.append({
                    "image_id": m["image_id"], "split": "test", "label": m["label"],
                    "label_index": int(m["label_index"]), "set": sid, "attack": spec_a.name,
                    "norm": spec_a.norm, "eps": eps, "steps": steps, "step_size": step_size,
                    "surrogate_sha256": digest, "shard": shard, "shard_index": idx,
                })
            log.info("advgen %s: surrogate accuracy %.3f (clean %.3f)", sid, sets[sid], clean_acc)
        write_csv(pd.DataFrame(rows), tmp / "manifest.csv")
        write_json(tmp / "advgen.json", {"surrogate_accuracy": sets, "surrogate_sha256": digest,
                                         "surrogate": spec.__dict__, "n_test": len(test)})
    return AdvgenResult(Path(out_dir), sets, digest)
