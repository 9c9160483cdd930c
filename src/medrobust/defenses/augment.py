"""AugMix for batches of grey medical images, in torch — Hendrycks, Mu, Cubuk, Zoph, Gilmer &
Lakshminarayanan, "AugMix: A Simple Data Processing Method to Improve Robustness and Uncertainty",
ICLR 2020 (Section 3, Algorithm 1 "AugmentAndMix").

For every image, ``width`` (k) augmentation chains are built; chain ``i`` applies ``depth`` ops
(1–3 drawn uniformly per chain when ``depth = -1``, the paper's default), each op drawn uniformly
from :data:`DEFAULT_OPS` with an intensity ``level ~ U(0.1, severity)``. The chains are mixed with
weights ``w ~ Dirichlet(α, …, α)`` and the result with the original image with ``m ~ Beta(α, α)``::

    x_aug = m · x + (1 − m) · Σ_i w_i · chain_i(x)                                  (Algorithm 1)

(AugMix writes ``(1 − m)·x + m·mix``; with ``Beta(α, α)`` symmetric the two are the same
distribution.) Defaults are the paper's: k = 3, depth 1–3, α = 1, severity 3.

Ops (``DEFAULT_OPS``) and their level → parameter maps (level ∈ [0.1, severity] ⊂ (0, 10]):

=============  ===============================================================================
autocontrast   per-image, per-channel min–max stretch to [0, 1] (PIL ``autocontrast``, cutoff 0)
equalize       histogram equalisation on 256 grey levels (torchvision's PIL-exact ``equalize``;
               like PIL, a no-op when fewer than 255 pixels lie below the image maximum)
posterize      keep ``4 − ⌊4·level/10⌋`` bits (at least 1) of the 8-bit value (AugMix's map)
rotate         ``±⌊30·level/10⌋`` degrees about the centre, bilinear, zero fill (AugMix's map)
shear_x / _y   shear ``±0.3·level/10`` (AugMix's map), bilinear, zero fill
translate_x/_y ``±⌊(side/3)·level/10⌋`` pixels (AugMix's map), zero fill
contrast       ``mean + f·(x − mean)``, image mean, ``f = 1 ± 0.9·level/10`` (PIL ``Contrast``)
brightness     ``f·x``, ``f = 1 ± 0.9·level/10`` (PIL ``Brightness``)
sharpness      blend with PIL's 3×3 smoothing (``[[1,1,1],[1,5,1],[1,1,1]]/13``, borders kept)
               ``blur + f·(x − blur)``, ``f = 1 ± 0.9·level/10`` (PIL ``Sharpness``)
gamma          ``x ** g``, ``g = (1 + level/10) ** ±1`` (not in AugMix; a display/processing-curve
               change, one of the shifts in :mod:`medrobust.evaluation.shifts`)
=============  ===============================================================================

``±`` is a fair coin per application, as AugMix does for its geometric ops.

Choices where AugMix does not fit grey medical images:

* **Contrast is included** (the RTDA paper's distribution shift is contrast). AugMix's default op
  set leaves out contrast, colour, brightness and sharpness because they overlap ImageNet-C's test
  corruptions; its "all ops" variant includes them. Here contrast, brightness and gamma overlap
  the evaluate stage's shifts (``contrast_low/high``, ``brightness``, ``gamma``), so shift accuracy
  of a model trained with them is not accuracy on *unseen* corruptions — pass ``ops`` without them
  to measure that.
* **Enhancement factors are centred on 1.** AugMix maps level to ``0.1 + 1.8·level/10``, so at its
  default severity 3 contrast/brightness/sharpness can only *decrease* (factor ≤ 0.64). We use
  ``1 ± 0.9·level/10`` so every op's severity is its distance from the identity and contrast can go
  down or up (AugMix's full range [0.1, 1.9] is reached at severity 10).
* **Left out:** ``solarize`` (inverts bright pixels: reverses tissue density on radiographs, and is
  the MONOCHROME1/2 confusion the ingest stage removes), ``color`` (saturation: a no-op on grey),
  ``invert`` and flips (laterality; the training loop has its own ``hflip``).
* Posterize keeps at least 1 bit (AugMix's map gives 0 bits, a black image, at level 10).
* Translations and rotations are whole pixels / degrees as in AugMix (``int`` truncation).

Randomness: all per-sample draws (depths, ops, levels, signs, Dirichlet and Beta weights) come
from a NumPy generator seeded with one 62-bit integer drawn from the ``torch.Generator`` passed in
(the global torch RNG when ``None``), so the output is a deterministic function of the generator
state on any device, and the generator advances from batch to batch. The image ops run in torch,
batched: the k chains of all images are stacked into one ``(k·N, C, H, W)`` tensor and each step
applies every op once to the images that drew it (all geometric ops share one ``grid_sample``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: every op this module implements; the default set is all of them (see the module docstring)
DEFAULT_OPS: tuple[str, ...] = (
    "autocontrast", "equalize", "posterize", "rotate", "shear_x", "shear_y", "translate_x",
    "translate_y", "contrast", "brightness", "sharpness", "gamma",
)
GEOMETRIC_OPS = frozenset({"rotate", "shear_x", "shear_y", "translate_x", "translate_y"})
MAX_LEVEL = 10.0


def parse_ops(ops: str | Sequence[str]) -> tuple[str, ...]:
    """``"contrast, rotate"`` or a sequence of names -> validated tuple; ``""`` -> :data:`DEFAULT_OPS`.

    Args:
        ops: a comma-separated string or a sequence of op names (surrounding spaces and empty
            names are dropped).

    Returns:
        The names in the given order, or :data:`DEFAULT_OPS` when none is given.

    Raises:
        ValueError: for an unknown or repeated op name.
    """
    names = [s.strip() for s in ops.split(",")] if isinstance(ops, str) else [str(s).strip() for s in ops]
    names = [s for s in names if s]
    if not names:
        return DEFAULT_OPS
    unknown = sorted(set(names) - set(DEFAULT_OPS))
    if unknown:
        raise ValueError(f"unknown augmentation op(s) {', '.join(unknown)}; allowed: {', '.join(DEFAULT_OPS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"augmentation ops listed twice: {', '.join(names)}")
    return tuple(names)


def check_augmix_params(severity: int, width: int, depth: int, alpha: float) -> None:
    """Raise ValueError unless 1 ≤ severity ≤ 10, width ≥ 1, depth = -1 or ≥ 1, α > 0.

    Args:
        severity: upper bound of the op intensity (a bool is refused).
        width: number of augmentation chains k.
        depth: ops per chain; -1 draws 1..3 per chain.
        alpha: Dirichlet / Beta concentration.

    Raises:
        ValueError: for the first parameter outside its range, naming it.
    """
    if isinstance(severity, bool) or not 1 <= severity <= MAX_LEVEL:
        raise ValueError(f"augmix severity must be in 1..10, got {severity!r}")
    if width < 1:
        raise ValueError(f"augmix width (number of chains) must be >= 1, got {width}")
    if depth == 0 or depth < -1:
        raise ValueError(f"augmix depth must be -1 (random 1..3) or >= 1, got {depth}")
    if not alpha > 0:
        raise ValueError(f"augmix alpha must be > 0, got {alpha}")


# ----------------------------------------------------------------------------- ops
# Each op maps (x [n, C, H, W] in [0, 1], level [n], sign [n] in {-1, +1}) to [n, C, H, W].


def _per_sample(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def _enhance_factor(level: Tensor, sign: Tensor) -> Tensor:
    return _per_sample(1.0 + sign * 0.9 * level / MAX_LEVEL)


def _autocontrast(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    spread = hi - lo
    ok = spread > 0
    return torch.where(ok, (x - lo) / torch.where(ok, spread, torch.ones_like(spread)), x)


def _equalize(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    from torchvision.transforms.v2 import functional as TVF  # torchvision loads in ~2 s: only when used

    return TVF.equalize(x.clamp(0.0, 1.0))


def _posterize(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    bits = (4 - torch.floor(level * 4 / MAX_LEVEL)).clamp(1, 4)
    step = _per_sample(2.0 ** (8 - bits))
    q = torch.round(x.clamp(0.0, 1.0) * 255)
    return torch.floor(q / step) * step / 255


def _contrast(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + _enhance_factor(level, sign) * (x - mean)


def _brightness(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    return _enhance_factor(level, sign) * x


def _sharpness(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    if x.shape[-1] < 3 or x.shape[-2] < 3:
        return x
    c = x.shape[1]
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(c, 1, 3, 3)
    blur = x.clone()
    blur[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)  # PIL leaves the 1-pixel border as is
    return blur + _enhance_factor(level, sign) * (x - blur)


def _gamma(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    g = (1.0 + level / MAX_LEVEL) ** sign
    return x.clamp(0.0, 1.0) ** _per_sample(g)


_GEOMETRIC_CODES = {"rotate": 0, "shear_x": 1, "shear_y": 2, "translate_x": 3, "translate_y": 4}


def _affine_matrices(codes: Tensor, level: Tensor, sign: Tensor, height: int, width: int) -> Tensor:
    """Per-sample 2×3 maps from output to input *pixel* coordinates (centred), AugMix's magnitudes.

    ``codes`` holds one :data:`_GEOMETRIC_CODES` value per sample.
    """
    zero, one = torch.zeros_like(level), torch.ones_like(level)
    rot = codes == 0
    theta = torch.where(rot, torch.deg2rad(sign * torch.floor(30.0 * level / MAX_LEVEL)), zero)
    shear = sign * 0.3 * level / MAX_LEVEL
    cos, sin = torch.cos(theta), torch.sin(theta)
    row0 = torch.stack([torch.where(rot, cos, one),
                        torch.where(rot, -sin, torch.where(codes == 1, shear, zero)),
                        torch.where(codes == 3, sign * torch.floor((width / 3.0) * level / MAX_LEVEL), zero)], 1)
    row1 = torch.stack([torch.where(rot, sin, torch.where(codes == 2, shear, zero)),
                        torch.where(rot, cos, one),
                        torch.where(codes == 4, sign * torch.floor((height / 3.0) * level / MAX_LEVEL), zero)], 1)
    return torch.stack([row0, row1], 1)


def _geometric(x: Tensor, codes: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Apply per-sample rotate/shear/translate with one bilinear ``grid_sample`` (zero fill)."""
    n, _, h, w = x.shape
    pix = _affine_matrices(codes, level, sign, h, w)
    # pixel (centred) -> normalised coordinates: n = D⁻¹ p with D = diag(w/2, h/2)
    d = torch.tensor([w / 2.0, h / 2.0], dtype=x.dtype, device=x.device)
    theta = torch.empty_like(pix)
    theta[:, :, :2] = pix[:, :, :2] * d.view(1, 1, 2) / d.view(1, 2, 1)
    theta[:, :, 2] = pix[:, :, 2] / d.view(1, 2)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


_POINT_OPS = {
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "posterize": _posterize,
    "contrast": _contrast,
    "brightness": _brightness,
    "sharpness": _sharpness,
    "gamma": _gamma,
}


def apply_op(name: str, x: Tensor, level: float | Tensor, sign: float | Tensor = 1.0) -> Tensor:
    """Apply one op to every image of ``x`` with the given level(s) and sign(s); output in [0, 1].

    Args:
        name: one of :data:`DEFAULT_OPS`.
        x: float images ``(N, C, H, W)`` in [0, 1].
        level: intensity in [0, 10] (a number or one per image).
        sign: ``+1`` / ``-1`` (direction of rotation, shear, translation, enhancement, gamma), a
            number or one per image.

    Returns:
        The transformed batch, same shape, computed without gradient, clamped to [0, 1].

    Raises:
        ValueError: for an unknown op name.

    Example:
        >>> apply_op("contrast", torch.rand(2, 1, 8, 8), level=5.0, sign=torch.tensor([1.0, -1.0])).shape
        torch.Size([2, 1, 8, 8])
    """
    if name not in DEFAULT_OPS:
        raise ValueError(f"unknown augmentation op {name!r}; allowed: {', '.join(DEFAULT_OPS)}")
    n = len(x)
    lv = torch.as_tensor(level, dtype=x.dtype, device=x.device).expand(n).clone()
    sg = torch.as_tensor(sign, dtype=x.dtype, device=x.device).expand(n).clone()
    with torch.no_grad():
        if name in GEOMETRIC_OPS:
            codes = torch.full((n,), _GEOMETRIC_CODES[name], device=x.device)
            out = _geometric(x, codes, lv, sg)
        else:
            out = _POINT_OPS[name](x, lv, sg)
    return out.clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- AugMix


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=gen_device))
    return np.random.default_rng(seed)


def augmix(
    x: Tensor,
    generator: torch.Generator | None = None,
    *,
    severity: int = 3,
    width: int = 3,
    depth: int = -1,
    alpha: float = 1.0,
    ops: str | Sequence[str] = DEFAULT_OPS,
) -> Tensor:
    """AugMix (Algorithm 1) on a batch, with independent chains and mixing weights per image.

    Args:
        x: float images ``(N, C, H, W)`` in [0, 1]; not modified, no gradient flows through.
        generator: source of all randomness (the global torch RNG when ``None``).
        severity: upper bound of the op intensity, 1..10 (AugMix default 3).
        width: number of chains k (default 3).
        depth: ops per chain; ``-1`` draws 1..3 per chain (default).
        alpha: Dirichlet / Beta concentration (default 1).
        ops: op names (see :data:`DEFAULT_OPS`), as a sequence or a comma-separated string.

    Returns:
        The augmented batch: same shape, dtype and device, values in [0, 1].

    Raises:
        ValueError: ``x`` is not a float ``(N, C, H, W)`` tensor, an AugMix parameter is out of
            range (:func:`check_augmix_params`) or an op name is unknown or repeated (:func:`parse_ops`).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> out = augmix(torch.rand(4, 1, 16, 16), g)
        >>> out.shape
        torch.Size([4, 1, 16, 16])
    """
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"augmix expects float images (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    check_augmix_params(severity, width, depth, alpha)
    names = parse_ops(ops)
    n, k = len(x), int(width)
    rng = _numpy_rng(generator)
    work = x.detach().to(torch.promote_types(x.dtype, torch.float32)).clamp(0.0, 1.0)
    if n == 0:
        return x.clone()
    total = k * n  # chain-major: row c·n + i is chain c of image i
    depths = rng.integers(1, 4, size=total) if depth == -1 else np.full(total, int(depth))
    geo_code = np.array([_GEOMETRIC_CODES.get(name, -1) for name in names])
    with torch.no_grad():
        chains = work.repeat(k, 1, 1, 1)
        for step in range(int(depths.max())):
            op_idx = rng.integers(0, len(names), size=total)
            level = rng.uniform(0.1, float(severity), size=total)
            sign = rng.choice(np.array([-1.0, 1.0]), size=total)
            active = depths > step
            lv = torch.as_tensor(level, dtype=work.dtype, device=x.device)
            sg = torch.as_tensor(sign, dtype=work.dtype, device=x.device)
            geo_rows = np.flatnonzero(active & (geo_code[op_idx] >= 0))
            if geo_rows.size:
                idx = torch.as_tensor(geo_rows, device=x.device)
                codes = torch.as_tensor(geo_code[op_idx[geo_rows]], device=x.device)
                chains[idx] = _geometric(chains[idx], codes, lv[idx], sg[idx]).clamp(0.0, 1.0)
            for j, name in enumerate(names):
                if name in GEOMETRIC_OPS:
                    continue
                rows = np.flatnonzero(active & (op_idx == j))
                if rows.size:
                    idx = torch.as_tensor(rows, device=x.device)
                    chains[idx] = _POINT_OPS[name](chains[idx], lv[idx], sg[idx]).clamp(0.0, 1.0)
        weights = torch.as_tensor(rng.dirichlet([alpha] * k, size=n), dtype=work.dtype, device=x.device)  # [n, k]
        m = torch.as_tensor(rng.beta(alpha, alpha, size=n), dtype=work.dtype, device=x.device)
        mix = (chains.view(k, n, *x.shape[1:]) * weights.t().reshape(k, n, 1, 1, 1)).sum(0)
        out = _per_sample(m) * work + (1.0 - _per_sample(m)) * mix
    return out.clamp(0.0, 1.0).to(x.dtype)


__all__ = ["DEFAULT_OPS", "GEOMETRIC_OPS", "apply_op", "augmix", "check_augmix_params", "parse_ops"]
