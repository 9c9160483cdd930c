"""Natural distribution shifts ("corruptions") for medical images, MedMNIST-C style.

Adversarial robustness is one half of robustness; the other is how a classifier holds up when
the acquisition changes: another scanner's processing curve, a noisier detector, a blurrier
probe, lossy export from PACS or a camera. Following ImageNet-C (Hendrycks & Dietterich 2019,
"Benchmarking Neural Network Robustness to Common Corruptions and Perturbations", arXiv 1903.12261) and its
medical counterpart MedMNIST-C (Di Salvo et al. 2024, "MedMNIST-C: Comprehensive benchmark and improved
classifier robustness by simulating realistic image corruptions", arXiv 2406.17536), every shift here is a
deterministic function of the image, a severity 1..5 and (for noise) a seeded generator.

Images are float tensors ``(N, C, H, W)`` with values in ``[0, 1]`` (C = 1 or 3). Every shift returns a new tensor of
the same shape, dtype and device, clamped to ``[0, 1]``; the input is never modified. Computation runs in float32
(float64 stays float64). The severity table (one value per severity 1..5)::

    shift            parameter                                   1     2     3     4     5
    contrast_low     factor k around each image's channel mean   0.8   0.7   0.6   0.5   0.4
    contrast_high    factor k around each image's channel mean   1.1   1.2   1.3   1.4   1.6
    brightness       + offset on HSV value (grey: on intensity)  0.05  0.10  0.15  0.20  0.30
    gamma            exponent g in x ** g (midtones darker)      1.1   1.2   1.3   1.4   1.6
    gaussian_noise   std of additive N(0, s^2)                   0.04  0.08  0.12  0.18  0.26
    speckle_noise    std s of multiplicative x * (1 + N(0, s^2)) 0.10  0.15  0.20  0.30  0.40
    gaussian_blur    sigma in pixels (kernel radius ceil(3 s))   0.5   0.75  1.0   1.5   2.0
    jpeg             Pillow JPEG quality                         80    65    50    35    20
    pixelate         downsample factor (area avg, nearest up)    2     2.5   3     3.5   4

Where the choice comes from:

* contrast, gamma, gaussian/speckle noise: the ranges MedMNIST-C uses for its grey-scale radiology sets (ChestMNIST /
  PneumoniaMNIST / OrganMNIST families, ``contrast_down``, ``contrast_up``, ``gamma_corr_up``, ``gaussian_noise``,
  ``speckle_noise``), which are milder than ImageNet-C's because clinical images vary less than web photos.
* brightness: ImageNet-C adds a constant to the HSV value channel (0.1 .. 0.5); MedMNIST-C scales
  by 1.1 .. 1.5. We keep ImageNet-C's additive form (hue and saturation of colour images are
  preserved) with a gentler top end, and shift upwards only (over-exposure / higher gain).
* gaussian_blur: MedMNIST-C's kernels target 224-pixel images; ``sigma`` here is absolute pixels
  chosen for the 28 .. 128 pixel images this project trains on (severity 5 washes out structures
  of a few pixels, severity 1 is barely visible).
* jpeg: qualities 80 .. 20 span "good export" to "visibly blocky". Each image is quantised to
  uint8 and round-tripped through Pillow: one greyscale JPEG per channel, except 3-channel images,
  which are encoded as one RGB JPEG (with its YCbCr chroma subsampling) as a camera would.
* pixelate: area-average down by the factor (to ``round(H / f)`` x ``round(W / f)``, and on tiny images at least one
  pixel less than at the previous severity), then nearest-neighbour back up; the factors are resize ratios
  0.5 .. 0.25, inside ImageNet-C's range (0.6 .. 0.25). A factor of 1.5 was rejected: its nearest-neighbour
  misalignment changes an image more than a factor of 2 does, which would break monotonicity.

Every parameter grows with severity, and the values were chosen so the mean absolute change of
an image increases strictly with severity for every shift (checked in the tests on smooth random
textures with intensities around 0.2 .. 0.7).

Noise is drawn from the ``torch.Generator`` passed in (on the CPU, then moved to the images' device), never from the
global RNG, so :func:`apply_shift` with the same seed gives the same output on any device. :data:`DEFAULT_SHIFTS` lists
per DICOM Modality the shifts that are plausible for it; :func:`shift_accuracy` evaluates a classifier on all of them.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from medrobust.utils.registry import Registry

log = logging.getLogger(__name__)

ShiftFn = Callable[[Tensor, int, torch.Generator], Tensor]
"""``(images, severity, generator) -> shifted images``."""

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

#: name -> shift function; each shift below registers itself.
SHIFTS: Registry[ShiftFn] = Registry("natural shift")

#: the severity table (see the module docstring); index ``severity - 1``
PARAMS: dict[str, tuple[float, ...]] = {
    "contrast_low": (0.8, 0.7, 0.6, 0.5, 0.4),
    "contrast_high": (1.1, 1.2, 1.3, 1.4, 1.6),
    "brightness": (0.05, 0.10, 0.15, 0.20, 0.30),
    "gamma": (1.1, 1.2, 1.3, 1.4, 1.6),
    "gaussian_noise": (0.04, 0.08, 0.12, 0.18, 0.26),
    "speckle_noise": (0.10, 0.15, 0.20, 0.30, 0.40),
    "gaussian_blur": (0.5, 0.75, 1.0, 1.5, 2.0),
    "jpeg": (80, 65, 50, 35, 20),
    "pixelate": (2.0, 2.5, 3.0, 3.5, 4.0),
}


# ----------------------------------------------------------------------------- helpers


def _param(name: str, severity: int) -> float:
    """The table entry of ``name`` at ``severity`` (validated)."""
    _check_severity(severity)
    return PARAMS[name][severity - 1]


def _check_severity(severity: int) -> None:
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer) or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")


def _prepare(images: Tensor) -> Tensor:
    """A fresh float32 (or float64) working copy of ``images``, clamped to [0, 1]."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor in [0, 1], got {images.dtype}")
    work = torch.promote_types(images.dtype, torch.float32)
    return images.detach().to(work).clamp(0.0, 1.0)  # clamp always allocates: the input stays untouched


def _finish(out: Tensor, like: Tensor) -> Tensor:
    return out.clamp(0.0, 1.0).to(like.dtype)


def _randn_like(x: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn from ``generator`` on its device, moved to ``x``'s."""
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(device=x.device, dtype=x.dtype)


# ----------------------------------------------------------------------------- shifts


def _contrast(x: Tensor, factor: float) -> Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)
    return mean + factor * (x - mean)


@SHIFTS.register("contrast_low")
def contrast_low(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Pull every pixel towards its image's (per-channel) mean: flatter processing curve / window.

    Args:
        images: ``(N, C, H, W)`` float images in [0, 1]; not modified.
        severity: 1 .. 5: factor ``k`` = 0.8 .. 0.4 in ``mean + k (x - mean)``.
        generator: unused (the shift is deterministic).
    """
    return _finish(_contrast(_prepare(images), _param("contrast_low", severity)), images)


@SHIFTS.register("contrast_high")
def contrast_high(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Push every pixel away from its image's (per-channel) mean: steeper curve / narrower window.

    Args:
        images: ``(N, C, H, W)`` float images in [0, 1]; not modified.
        severity: 1 .. 5: factor ``k`` = 1.1 .. 1.6 in ``mean + k (x - mean)``.
        generator: unused (the shift is deterministic).
    """
    return _finish(_contrast(_prepare(images), _param("contrast_high", severity)), images)


@SHIFTS.register("brightness")
def brightness(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Raise the HSV value ``max_c x_c`` by a constant, keeping hue and saturation (grey: ``x + b``).

    Args:
        images: ``(N, C, H, W)`` float images in [0, 1]; not modified.
        severity: 1 .. 5: offset ``b`` = 0.05 .. 0.30 (the new value is capped at 1; black becomes grey).
        generator: unused (the shift is deterministic).
    """
    x = _prepare(images)
    offset = _param("brightness", severity)
    value = x.amax(dim=1, keepdim=True)
    new_value = (value + offset).clamp(max=1.0)
    # V = 0 is black (no hue): it becomes grey at the new value
    scale = torch.where(value > 0, new_value / value.clamp(min=1e-12), torch.zeros_like(value))
    out = torch.where(value > 0, x * scale, new_value.expand_as(x))
    return _finish(out, images)


@SHIFTS.register("gamma")
def gamma(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Display/processing gamma ``x ** g`` with ``g > 1``: midtones darker, 0 and 1 fixed.

    Args:
        images: ``(N, C, H, W)`` float images in [0, 1]; not modified.
        severity: 1 .. 5: exponent ``g`` = 1.1 .. 1.6.
        generator: unused (the shift is deterministic).
    """
    return _finish(_prepare(images).pow(_param("gamma", severity)), images)


@SHIFTS.register("gaussian_noise")
def gaussian_noise(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Additive white Gaussian noise (detector / quantum / thermal noise).

    Args:
        images: ``(N, C, H, W)`` float images in [0, 1]; not modified.
        severity: 1 .. 5: standard deviation ``s`` = 0.04 .. 0.26 of ``x + s n``, ``n ~ N(0, 1)``.
        generator: the noise source; the noise is drawn on its device, then moved to the images'.
    """
    x = _prepare(images)
    return _finish(x + _param("gaussian_noise", severity) * _randn_like(x, generator), images)


@SHIFTS.register("speckle_noise")
def speckle_noise(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Multiplicative Gaussian noise ``x (1 + s n)``: the granular speckle of coherent imaging (ultrasound).

    Args:
        images: ``(N, C, H, W)`` float images in [0, 1]; not modified.
        severity: 1 .. 5: standard deviation ``s`` = 0.10 .. 0.40, ``n ~ N(0, 1)``.
        generator: the noise source; the noise is drawn on its device, then moved to the images'.
    """
    x = _prepare(images)
    return _finish(x * (1.0 + _param("speckle_noise", severity) * _randn_like(x, generator)), images)


def _gaussian_kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


@SHIFTS.register("gaussian_blur")
def gaussian_blur(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Separable Gaussian blur (defocus, motion, soft reconstruction kernel); borders replicated.

    Args:
        images: ``(N, C, H, W)`` float images in [0, 1]; not modified.
        severity: 1 .. 5: sigma = 0.5 .. 2.0 pixels, kernel radius ``max(1, ceil(3 sigma))``.
        generator: unused (the shift is deterministic).
    """
    x = _prepare(images)
    n, c, h, w = x.shape
    k = _gaussian_kernel(_param("gaussian_blur", severity), x.dtype, x.device)
    r = (k.numel() - 1) // 2
    flat = x.reshape(n * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return _finish(flat.reshape(n, c, h, w), images)


def _jpeg_roundtrip(array: np.ndarray, quality: int, mode: str) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert(mode))


@SHIFTS.register("jpeg")
def jpeg(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Lossy JPEG export at decreasing quality (Pillow), through a uint8 round trip, one image at a time.

    Args:
        images: ``(N, C, H, W)`` float images in [0, 1]; not modified.
        severity: 1 .. 5: Pillow quality 80 .. 20 (3 channels: one RGB JPEG, else one per channel).
        generator: unused (the shift is deterministic).
    """
    x = _prepare(images)
    quality = int(_param("jpeg", severity))
    u8 = (x * 255.0).round().to(torch.uint8).cpu().numpy()  # (N, C, H, W)
    out = np.empty_like(u8)
    for i in range(u8.shape[0]):
        if u8.shape[1] == 3:
            rgb = np.ascontiguousarray(u8[i].transpose(1, 2, 0))
            out[i] = _jpeg_roundtrip(rgb, quality, "RGB").transpose(2, 0, 1)
        else:
            for ch in range(u8.shape[1]):
                out[i, ch] = _jpeg_roundtrip(np.ascontiguousarray(u8[i, ch]), quality, "L")
    decoded = torch.from_numpy(out).to(device=x.device, dtype=x.dtype) / 255.0
    return _finish(decoded, images)


def _pixelate_size(length: int, severity: int) -> int:
    """Side length after downsampling: ``round(length / factor)``, and at least one pixel below the
    previous severity's where possible (so tiny images still lose resolution at every step)."""
    _check_severity(severity)
    size = length
    for factor in PARAMS["pixelate"][:severity]:
        size = max(1, min(round(length / factor), size - 1))
    return size


@SHIFTS.register("pixelate")
def pixelate(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Lower acquisition / export resolution: area-average down by a factor, nearest-neighbour back up.

    Args:
        images: ``(N, C, H, W)`` float images in [0, 1]; not modified.
        severity: 1 .. 5: downsample factor 2 .. 4 (each severity at least one pixel smaller where possible).
        generator: unused (the shift is deterministic).
    """
    x = _prepare(images)
    h, w = x.shape[-2:]
    small = (_pixelate_size(h, severity), _pixelate_size(w, severity))
    down = F.interpolate(x, size=small, mode="area")
    return _finish(F.interpolate(down, size=(h, w), mode="nearest"), images)

# ----------------------------------------------------------------------------- defaults per modality

#: Default shifts per DICOM Modality (0008,0060) code.
#:
#: * ``MG`` mammography: vendor processing curves (contrast, gamma), quantum noise, small motion
#:   blur, lossy / downsampled exports of very large images. Brightness is left out: exposure is
#:   automatic and the processed image is normalised.
#: * ``CR`` / ``DX`` radiography: as MG plus brightness (manual exposure, portable units).
#: * ``CT``: window/level changes (contrast, brightness), low-dose noise, smoother reconstruction
#:   kernels / thicker slices (blur), lower in-plane resolution. No JPEG: CT is archived lossless.
#: * ``MR``: no absolute intensity scale, so contrast and gamma vary between sequences and
#:   scanners; thermal noise (Rician, Gaussian at useful SNR), motion blur, resolution.
#: * ``US`` ultrasound: speckle, gain (brightness) and dynamic range (contrast), probe / focus blur,
#:   video-grabbed or compressed frames (JPEG, pixelate).
#: * ``DERM`` / ``XC`` dermoscopy and external-camera photos: consumer-camera exposure
#:   (brightness, gamma, contrast), sensor noise, defocus, JPEG, resolution.
#: * ``default``: every generic shift except ultrasound-specific speckle.
DEFAULT_SHIFTS: dict[str, tuple[str, ...]] = {
    "MG": ("contrast_low", "contrast_high", "gamma", "gaussian_noise", "gaussian_blur", "jpeg", "pixelate"),
    "CR": ("contrast_low", "contrast_high", "brightness", "gamma", "gaussian_noise", "gaussian_blur", "jpeg",
           "pixelate"),
    "DX": ("contrast_low", "contrast_high", "brightness", "gamma", "gaussian_noise", "gaussian_blur", "jpeg",
           "pixelate"),
    "CT": ("contrast_low", "contrast_high", "brightness", "gaussian_noise", "gaussian_blur", "pixelate"),
    "MR": ("contrast_low", "contrast_high", "gamma", "gaussian_noise", "gaussian_blur", "pixelate"),
    "US": ("speckle_noise", "contrast_low", "brightness", "gaussian_blur", "jpeg", "pixelate"),
    "DERM": ("brightness", "contrast_low", "contrast_high", "gamma", "gaussian_noise", "gaussian_blur", "jpeg",
             "pixelate"),
    "XC": ("brightness", "contrast_low", "contrast_high", "gamma", "gaussian_noise", "gaussian_blur", "jpeg",
           "pixelate"),
    "default": ("contrast_low", "contrast_high", "brightness", "gamma", "gaussian_noise", "gaussian_blur", "jpeg",
                "pixelate"),
}


def default_shifts(modality: str) -> tuple[str, ...]:
    """The default shift names for a DICOM Modality code.

    Args:
        modality: DICOM Modality, e.g. ``"MG"``, ``"dx"``, ``" CT "`` (case and surrounding whitespace are ignored).

    Returns:
        ``DEFAULT_SHIFTS[modality]``, or ``DEFAULT_SHIFTS["default"]`` for an unknown or empty code.
    """
    key = (modality or "").strip().upper()
    if key in DEFAULT_SHIFTS:
        return DEFAULT_SHIFTS[key]
    log.debug("no default shifts for modality %r; using 'default'", modality)
    return DEFAULT_SHIFTS["default"]


# ----------------------------------------------------------------------------- public entry points



def _generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def apply_shift(name: str, images: Tensor, severity: int, seed: int = 0) -> Tensor:
    """Apply one shift at one severity, reproducibly.

    Args:
        name: a key of :data:`SHIFTS`.
        images: ``(N, C, H, W)`` float tensor in ``[0, 1]``; not modified.
        severity: 1 (mild) .. 5 (severe).
        seed: seeds a fresh CPU ``torch.Generator`` for the noise shifts; the global RNG is untouched.

    Returns:
        A new tensor with the shape, dtype and device of ``images``, values in ``[0, 1]``.

    Raises:
        KeyError: ``name`` is not a known shift (the message lists the available ones).
        ValueError: ``severity`` is not in :data:`SEVERITIES`, or ``images`` is not 4-D.
    """
    fn = SHIFTS[name]
    _check_severity(severity)
    return fn(images, int(severity), _generator(seed))


def shift_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    shifts: Iterable[str],
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, dict[int, float]]:
    """Accuracy of ``model`` on ``x`` under every shift and severity.

    For each (shift, severity) a CPU generator is seeded with ``seed`` and consumed batch by batch,
    so results are reproducible for a given ``seed`` and ``batch_size``; with ``batch_size >= len(x)``
    the images are exactly ``apply_shift(name, x, severity, seed)``. Using the same seed for every
    severity means the noise shifts scale one noise pattern (common random numbers).

    Args:
        model: classifier returning logits ``(N, num_classes)``; run in eval mode under
            ``torch.no_grad`` and put back into its previous train/eval mode afterwards.
        x: ``(N, C, H, W)`` images in ``[0, 1]``.
        y: ``(N,)`` integer labels.
        shifts: shift names (keys of :data:`SHIFTS`), e.g. ``default_shifts("MG")``.
        seed: noise seed.
        batch_size: images per forward pass; batches are moved to the model's device.

    Returns:
        ``{shift: {severity: accuracy}}``, accuracies in ``[0, 1]``.

    Raises:
        KeyError: an unknown shift name.
        ValueError: empty input, mismatched lengths or a non-positive ``batch_size``.
    """
    names = list(shifts)
    fns = {name: SHIFTS[name] for name in names}
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"need as many labels as images (> 0), got {len(x)} images and {len(y)} labels")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = next(model.parameters()).device
    labels = y.to(device)
    was_training = model.training
    model.eval()
    results: dict[str, dict[int, float]] = {}
    try:
        with torch.no_grad():
            for name, fn in fns.items():
                results[name] = {}
                for severity in SEVERITIES:
                    gen = _generator(seed)
                    correct = 0
                    for i in range(0, len(x), batch_size):
                        xb = fn(x[i : i + batch_size].to(device), severity, gen)
                        correct += int((model(xb).argmax(1) == labels[i : i + batch_size]).sum())
                    results[name][severity] = correct / len(x)
                log.info("shift %s: accuracy by severity %s", name,
                         ", ".join(f"{s}={a:.3f}" for s, a in results[name].items()))
    finally:
        model.train(was_training)
    return results
