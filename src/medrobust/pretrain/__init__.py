"""RAN's upstream stage (arXiv 2407.02716, M9): noisy image–caption pairs and contrastive pretraining.

The RAN paper studies what noise in a vision-language model's *pretraining* data does downstream:
it perturbs a share of the upstream image–caption pairs with multimodal adversarial attacks, pre-trains
at noise ratios 0–30 %, and then fine-tunes light-weight heads on the frozen image features. This
package is that upstream half, small enough for a CPU:

* :mod:`.captions` — captions for the embedded data from templates over the label and the header
  facts ("a mammogram with a lesion in the left breast");
* :mod:`.clip` — a tiny open_clip CLIP (:class:`ClipConfig`, :func:`build_clip`) whose image tower is
  medrobust's ``clip_vit_tiny`` backbone, so a pre-trained ``clip.pt`` feeds ``linear_probe``,
  ``mlp_tuning`` and ``ran`` through ``train.model.pretrained``;
* :mod:`.noisy` — exactly ``round(r·N)`` pairs perturbed: image PGD (L∞) on the contrastive loss and
  a greedy word substitution or insertion against the text tower (:func:`make_noisy_pairs`);
* :mod:`.contrastive` — pretraining with open_clip's ``ClipLoss`` (:func:`pretrain_clip`).
"""

from __future__ import annotations

from medrobust.pretrain.captions import caption_vocabulary, make_captions
from medrobust.pretrain.clip import ClipConfig, ImageTextModel, build_clip, tokenize
from medrobust.pretrain.contrastive import contrastive_loss, pretrain_clip
from medrobust.pretrain.noisy import NoisyPairs, choose_noisy, image_pgd, make_noisy_pairs, perturb_captions

__all__ = ["ClipConfig", "ImageTextModel", "NoisyPairs", "build_clip", "caption_vocabulary", "choose_noisy",
           "contrastive_loss", "image_pgd", "make_captions", "make_noisy_pairs", "perturb_captions", "pretrain_clip",
           "tokenize"]
