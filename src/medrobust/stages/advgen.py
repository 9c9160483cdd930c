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

from medrobust.attacks import from_spec
from medrobust.config import Params
from medrobust.data.shards import load_split, write_shards
from medrobust.defenses import get_defense
from medrobust.models import ModelSpec, build_model, load_model, save_model, set_trainable, spec_defaults
from medrobust.training import accuracy, train_model
from medrobust.utils import atomic_output_dir, resolve_device, seed_everything, sha256_file, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdvgenResult:
    out_dir: Path
    sets: dict[str, float]  # set id -> surrogate accuracy on it
    surrogate_sha256: str


def set_id(attack_key: str, eps: float) -> str:
    return f"{attack_key}@{eps:.6f}"


def attack_dataset(attack, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Adversarial versions of ``x`` (returned on the CPU), attacked batch by batch on ``device``."""
    return torch.cat([
        attack(x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)).cpu()
        for i in range(0, len(x), batch_size)
    ])


def run(params: Params, dataset_dir: str | Path, out_dir: str | Path) -> AdvgenResult:
    """Train (or load) the surrogate and write the adversarial test sets."""
    cfg = params.advgen
    seed_everything(params.seed + 101)
    train, val, test = (load_split(dataset_dir, s) for s in ("train", "val", "test"))
    num_classes = len(params.data.classes)
    device = resolve_device(params.device)
    with atomic_output_dir(out_dir) as tmp:
        spec = ModelSpec(backbone=cfg.surrogate.model.backbone, num_classes=num_classes,
                         width=cfg.surrogate.model.width, image_size=params.data.image_size,
                         head=cfg.surrogate.model.head, head_hidden=cfg.surrogate.model.head_hidden,
                         **spec_defaults(cfg.surrogate.model.backbone, 1,
                                         pretrained=bool(cfg.surrogate.model.pretrained)))
        if cfg.surrogate.weights:
            model, spec = load_model(Path(cfg.surrogate.weights).parent, Path(cfg.surrogate.weights).stem)
            log.info("surrogate loaded from %s", cfg.surrogate.weights)
        else:
            model = build_model(spec, pretrained=cfg.surrogate.model.pretrained or None).to(device)
            set_trainable(model, cfg.surrogate.model.trainable)
            train_model(model, get_defense("standard"), train, val, epochs=cfg.surrogate.epochs,
                        batch_size=cfg.surrogate.batch_size, optim=cfg.surrogate.optim,
                        seed=params.seed + 101, desc="surrogate")
        model = model.to(device)
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
        pd.DataFrame(rows).to_csv(tmp / "manifest.csv", index=False)
        write_json(tmp / "advgen.json", {"surrogate_accuracy": sets, "surrogate_sha256": digest,
                                         "surrogate": spec.__dict__, "n_test": len(test)})
    return AdvgenResult(Path(out_dir), sets, digest)
