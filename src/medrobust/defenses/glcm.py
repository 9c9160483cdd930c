"""A differentiable grey-level co-occurrence matrix (GLCM) and the GLCM texture loss of domain
assimilation (Chen & Luo, arXiv 2402.16005, "texture preservation").

Haralick's GLCM counts how often grey level ``j`` sits at offset ``o`` from grey level ``i``. Counting
needs integer levels, which has no gradient; here each pixel is *softly* assigned to the ``L`` levels
and the matrix is a sum of products of assignments, so gradients reach the image:

* **Quantisation.** A grey value ``g ∈ [0, 1]`` sits at ``u = g·(L − 1)`` in level units; the level
  centres are ``k = 0 … L − 1``. The soft assignment is ``a_k(g) = softmax_k(−(u − k)² / T)`` (a
  Gaussian kernel over the centres, normalised to sum to 1; ``T`` = ``temperature`` in squared
  level units). As ``T → 0`` it becomes the one-hot of the nearest level ``round(u)``, which is the
  ``hard=True`` path (no gradient; used for checks and reporting).
* **Offsets.** Angles and distances follow ``skimage.feature.graycomatrix`` exactly: the partner
  of the pixel at ``(r, c)`` is ``(r + round(d·sin θ), c + round(d·cos θ))`` (row index grows
  downwards, rounding half away from zero). So at ``d = 3`` the diagonal angles give offsets
  ``(±2, ±2)`` — skimage's rounding of ``3·cos 45° = 2.12`` — not ``(±3, ±3)``.
* **Matrix.** ``P_o[i, j] = Σ_pixels a_i(p) · a_j(p + o)`` over the pixels whose partner lies in
  the image (no padding), optionally made symmetric (``P + Pᵀ``), then normalised to sum to 1, as
  ``graycomatrix(..., normed=True)``. With one-hot assignments this *is* skimage's count matrix.
* **Eight orientations vs skimage's four.** The paper uses distance 3 in 8 orientations
  0°, 45°, …, 315°. The matrix at ``θ + 180°`` is the transpose of the one at ``θ`` (the same pairs
  read the other way round), and ``P + Pᵀ`` (skimage's ``symmetric=True``) at ``θ`` equals the
  non-symmetric matrix of ``θ`` plus that of ``θ + 180°``. All five features below are unchanged
  by a transpose, so the 8 non-symmetric orientations give each of the 4 directions 0°, 45°, 90°,
  135° twice, and the 8 symmetric ones each symmetric 4-direction value twice: the average over
  8 orientations equals the average over skimage's 4 directions of the same kind. The loss uses
  the paper's 8 angles (:func:`glcm` computes each direction once and reads its opposite as the
  transpose); ``symmetric`` is a parameter (default False: skimage's default, each ordered offset
  counted once).
* **Features** (:data:`FEATURES`, exactly ``skimage.feature.graycoprops``):
  ``ASM = Σ P²``, ``contrast = Σ P (i−j)²``, ``homogeneity = Σ P / (1 + (i−j)²)`` (skimage's
  definition, not ``1/(1+|i−j|)``), ``correlation = Σ P (i−μ_i)(j−μ_j) / (σ_i σ_j)`` (1 where
  ``σ_i`` or ``σ_j`` is below 1e-15, as skimage), ``dissimilarity = Σ P |i−j|``.

The loss (:func:`glcm_loss`) compares the feature vectors of the original grey image and of the
grey version of the colourised image, per orientation, and averages over orientations and the
batch. Choices (the paper gives none of them; each is a parameter):

* RGB → grey: ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` (what PIL's ``convert("L")`` and
  OpenCV use); ``bt709`` (``0.2126, 0.7152, 0.0722``) and ``mean`` are the alternatives;
* distance: ``l1`` (sum of absolute differences over the 5 features) or ``l2`` (sum of squares);
* ``scale_features``: contrast is divided by ``(L−1)²`` and dissimilarity by ``L−1`` before the
  distance so that every feature lies in [0, 1] ([−1, 1] for correlation) and the loss does not
  grow with the number of levels;
* defaults ``levels = 16``, ``temperature = 0.5``, ``distance = 3``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: feature order of :func:`glcm_features` (the paper's order).
FEATURES = ("ASM", "contrast", "homogeneity", "correlation", "dissimilarity")

#: the paper's 8 orientations 0°, 45°, …, 315° (radians, skimage's convention).
EIGHT_ANGLES = tuple(k * math.pi / 4 for k in range(8))

LUMA = {
    "bt601": (0.299, 0.587, 0.114),
    "bt709": (0.2126, 0.7152, 0.0722),
    "mean": (1 / 3, 1 / 3, 1 / 3),
}


def _round_half_away(v: float) -> int:
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def glcm_offsets(distance: int, angles: Sequence[float]) -> list[tuple[int, int]]:
    """``(row, col)`` offsets of skimage's ``graycomatrix``: ``(round(d sin θ), round(d cos θ))``.

    Rounding is half away from zero, as skimage.

    Args:
        distance: d, the offset length in pixels.
        angles: θ in radians (0: to the right, π/2: downwards in row index).

    Returns:
        One ``(dr, dc)`` pair per angle, in order.

    Example:
        >>> glcm_offsets(3, [0.0, math.pi / 4])
        [(0, 3), (2, 2)]
    """
    return [(_round_half_away(distance * math.sin(a)), _round_half_away(distance * math.cos(a))) for a in angles]


def to_grey(x: torch.Tensor, luma: str = "bt601") -> torch.Tensor:
    """``[N, C, H, W]`` → ``[N, 1, H, W]``: 1 channel is returned as is, 3 channels by the ``luma``
    weights (:data:`LUMA`), any other count by the channel mean.

    Args:
        x: images ``[N, C, H, W]`` (values in [0, 1]); differentiable.
        luma: a key of :data:`LUMA` (``bt601``, ``bt709`` or ``mean``), used for 3 channels only.

    Returns:
        The grey images ``[N, 1, H, W]`` (``x`` itself when C = 1).

    Raises:
        ValueError: an unknown ``luma`` (checked for every channel count).
    """
    if luma not in LUMA:
        raise ValueError(f"luma: {luma!r} is not allowed; allowed values: {', '.join(LUMA)}")
    if x.shape[1] == 1:
        return x
    if x.shape[1] == 3:
        w = torch.tensor(LUMA[luma], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def soft_quantize(grey: torch.Tensor, levels: int, temperature: float = 0.5, hard: bool = False) -> torch.Tensor:
    """Assignments ``[N, L, H, W]`` of a grey image ``[N, 1, H, W]`` (values in [0, 1]) to ``L`` levels.

    ``hard``: the one-hot of ``round(g·(L−1))`` (clamped to the levels; no gradient). Otherwise
    ``softmax_k(−(g·(L−1) − k)² / temperature)``.

    Args:
        grey: grey images ``[N, 1, H, W]``; values are clamped to [0, 1] first.
        levels: L ≥ 2, the number of grey levels.
        temperature: T > 0, in squared level units (ignored when ``hard``).
        hard: return the one-hot of the nearest level instead.

    Returns:
        Assignments ``[N, L, H, W]`` that sum to 1 over the level axis, with the dtype of ``grey``.

    Raises:
        ValueError: ``levels`` < 2, or ``temperature`` ≤ 0 without ``hard``.
    """
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    u = grey.clamp(0.0, 1.0) * (levels - 1)
    if hard:
        idx = torch.round(u.detach()).long().clamp(0, levels - 1).squeeze(1)
        return torch.nn.functional.one_hot(idx, levels).permute(0, 3, 1, 2).to(grey.dtype)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use hard=True for the hard assignment), got {temperature}")
    centres = torch.arange(levels, dtype=grey.dtype, device=grey.device).view(1, levels, 1, 1)
    return torch.softmax(-((u - centres) ** 2) / temperature, dim=1)


def glcm(assign: torch.Tensor, offsets: Sequence[tuple[int, int]], symmetric: bool = False) -> torch.Tensor:
    """Normalised co-occurrence matrices ``[N, len(offsets), L, L]`` from assignments ``[N, L, H, W]``.

    ``P[n, o, i, j] ∝ Σ_(r,c) assign[n, i, r, c] · assign[n, j, r + dr, c + dc]`` over the pixels whose
    partner is inside the image; each matrix sums to 1 (an all-zero matrix, e.g. an offset longer
    than the image, stays 0 as in skimage).

    Args:
        assign: level assignments ``[N, L, H, W]`` (:func:`soft_quantize`).
        offsets: ``(dr, dc)`` pixel offsets (:func:`glcm_offsets`); an offset whose opposite was
            computed earlier reuses that matrix, transposed.
        symmetric: add the transpose (``P + Pᵀ``) before normalising.

    Returns:
        ``P`` ``[N, len(offsets), L, L]``, differentiable w.r.t. ``assign``.
    """
    n, levels, h, w = assign.shape
    mats = []
    done: dict[tuple[int, int], torch.Tensor] = {}
    for dr, dc in offsets:
        if (-dr, -dc) in done:  # the opposite offset counts the same pairs the other way round
            mats.append(done[(-dr, -dc)].transpose(1, 2))
            continue
        r0, r1 = max(0, -dr), min(h, h - dr)
        c0, c1 = max(0, -dc), min(w, w - dc)
        if r1 <= r0 or c1 <= c0:
            mats.append(assign.new_zeros(n, levels, levels))
            continue
        a = assign[:, :, r0:r1, c0:c1].reshape(n, levels, -1)
        b = assign[:, :, r0 + dr:r1 + dr, c0 + dc:c1 + dc].reshape(n, levels, -1)
        done[(dr, dc)] = torch.bmm(a, b.transpose(1, 2))
        mats.append(done[(dr, dc)])
    p = torch.stack(mats, dim=1)
    if symmetric:
        p = p + p.transpose(-1, -2)
    total = p.sum(dim=(-1, -2), keepdim=True)
    return p / torch.where(total > 0, total, torch.ones_like(total))


def glcm_props(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The five :data:`FEATURES` of normalised GLCMs ``[..., L, L]`` → ``[..., 5]``, as ``graycoprops``.

    ``eps`` is added to ``σ_i² σ_j²`` under the square root of the correlation's denominator (a
    bounded gradient for nearly flat images); ``eps = 0`` reproduces skimage exactly.

    Args:
        p: normalised co-occurrence matrices ``[..., L, L]`` (:func:`glcm`).
        eps: the stabiliser of the correlation's denominator.

    Returns:
        ``[..., 5]``: ASM, contrast, homogeneity, correlation, dissimilarity (correlation is 1 where
        σ_i or σ_j is below 1e-15).
    """
    levels = p.shape[-1]
    idx = torch.arange(levels, dtype=p.dtype, device=p.device)
    i, j = idx.view(levels, 1), idx.view(1, levels)
    diff = i - j
    asm = (p**2).sum(dim=(-1, -2))
    contrast = (p * diff**2).sum(dim=(-1, -2))
    homogeneity = (p / (1.0 + diff**2)).sum(dim=(-1, -2))
    dissimilarity = (p * diff.abs()).sum(dim=(-1, -2))
    mu_i = (p * i).sum(dim=(-1, -2), keepdim=True)
    mu_j = (p * j).sum(dim=(-1, -2), keepdim=True)
    var_i = (p * (i - mu_i) ** 2).sum(dim=(-1, -2))
    var_j = (p * (j - mu_j) ** 2).sum(dim=(-1, -2))
    cov = (p * (i - mu_i) * (j - mu_j)).sum(dim=(-1, -2))
    flat = (var_i < 1e-30) | (var_j < 1e-30)  # σ < 1e-15, skimage's threshold
    denom = torch.sqrt(torch.where(flat, torch.ones_like(var_i), var_i * var_j + eps))
    correlation = torch.where(flat, torch.ones_like(cov), cov / denom)
    return torch.stack([asm, contrast, homogeneity, correlation, dissimilarity], dim=-1)


def glcm_features(
    grey: torch.Tensor,
    levels: int = 16,
    distance: int = 3,
    angles: Sequence[float] = EIGHT_ANGLES,
    symmetric: bool = False,
    temperature: float = 0.5,
    hard: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GLCM features ``[N, len(angles), 5]`` (:data:`FEATURES`) of grey images ``[N, 1, H, W]`` in [0, 1].

    Args:
        grey: grey images ``[N, 1, H, W]`` in [0, 1].
        levels: L ≥ 2, the number of grey levels.
        distance: the co-occurrence offset in pixels.
        angles: orientations in radians (default: the paper's 8, :data:`EIGHT_ANGLES`).
        symmetric: count each pair in both orders (``P + Pᵀ``).
        temperature: T > 0 of the soft quantisation, in squared level units (ignored when ``hard``).
        hard: one-hot quantisation (no gradient; equals skimage's ``graycoprops(graycomatrix(...))``).
        eps: stabiliser of the correlation's denominator (:func:`glcm_props`).

    Returns:
        The features ``[N, len(angles), 5]``.

    Raises:
        ValueError: ``levels`` < 2, or ``temperature`` ≤ 0 without ``hard``.

    Example:
        >>> glcm_features(torch.rand(2, 1, 16, 16), levels=8, hard=True).shape  # graycoprops per angle
        torch.Size([2, 8, 5])
    """
    assign = soft_quantize(grey, levels, temperature, hard)
    return glcm_props(glcm(assign, glcm_offsets(distance, angles), symmetric), eps)


def scale_features(feats: torch.Tensor, levels: int) -> torch.Tensor:
    """Contrast / (L−1)² and dissimilarity / (L−1): every feature in [0, 1] ([−1, 1] for correlation).

    Args:
        feats: GLCM features ``[..., 5]`` in :data:`FEATURES` order.
        levels: L, the number of grey levels they were computed with.

    Returns:
        The scaled features, same shape.
    """
    scale = feats.new_tensor([1.0, 1.0 / (levels - 1) ** 2, 1.0, 1.0, 1.0 / (levels - 1)])
    return feats * scale


def feature_distance(f_ref: torch.Tensor, f_out: torch.Tensor, distance: str = "l1") -> torch.Tensor:
    """Mean over everything but the last (feature) axis of ``Σ_features |Δ|`` (``l1``) or ``Σ Δ²`` (``l2``).

    Args:
        f_ref: reference features ``[..., F]``.
        f_out: features to compare, same shape; ``Δ = f_out − f_ref``.
        distance: ``"l1"`` or ``"l2"``.

    Returns:
        A scalar.

    Raises:
        ValueError: an unknown ``distance``.
    """
    delta = f_out - f_ref
    if distance == "l1":
        return delta.abs().sum(-1).mean()
    if distance == "l2":
        return (delta**2).sum(-1).mean()
    raise ValueError(f"distance: {distance!r} is not allowed; allowed values: l1, l2")


def glcm_loss(
    original: torch.Tensor,
    colourised: torch.Tensor,
    levels: int = 16,
    distance: int = 3,
    angles: Sequence[float] = EIGHT_ANGLES,
    symmetric: bool = False,
    temperature: float = 0.5,
    metric: str = "l1",
    luma: str = "bt601",
    scale: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """The GLCM texture loss: the distance between the GLCM features of ``original`` (the input,
    detached: it is the target) and of the grey version of ``colourised``, averaged over the
    orientations and the batch.

    Args:
        original: input images ``[N, C, H, W]`` in [0, 1] (1 channel: used as is).
        colourised: the adapter's output ``[N, 3, H, W]`` in [0, 1], converted to grey by ``luma``.
        levels, distance, angles, symmetric, temperature, eps: see :func:`glcm_features`.
        metric: ``l1`` or ``l2`` (:func:`feature_distance`).
        luma: RGB → grey rule (:data:`LUMA`).
        scale: put contrast and dissimilarity on [0, 1] first (:func:`scale_features`).

    Returns:
        A scalar; 0 when the colourised image's grey equals the original.

    Raises:
        ValueError: an unknown ``luma`` or ``metric``, ``levels`` < 2 or ``temperature`` ≤ 0.
    """
    kw = dict(levels=levels, distance=distance, angles=angles, symmetric=symmetric,
              temperature=temperature, eps=eps)
    with torch.no_grad():
        f_ref = glcm_features(to_grey(original.detach(), luma), **kw)
    f_out = glcm_features(to_grey(colourised, luma), **kw)
    if scale:
        f_ref, f_out = scale_features(f_ref, levels), scale_features(f_out, levels)
    return feature_distance(f_ref, f_out, metric)
