"""Natural distribution shifts: contract (shape, dtype, range, no mutation), monotone severity,
seeded noise, hand-computed values, modality defaults and accuracy under shift."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medrobust.evaluation.shifts import (
    DEFAULT_SHIFTS,
    PARAMS,
    SEVERITIES,
    SHIFTS,
    apply_shift,
    default_shifts,
    shift_accuracy,
)

NAMES = list(SHIFTS)
NOISE = ("gaussian_noise", "speckle_noise")


def texture(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random textures with values in [0.2, 0.7] (bicubic upsampling of coarse noise)."""
    g = torch.Generator().manual_seed(seed)
    z = F.interpolate(torch.rand(n, c, size // 8, size // 8, generator=g), size=(size, size), mode="bicubic",
                      align_corners=False)
    lo, hi = z.amin(dim=(1, 2, 3), keepdim=True), z.amax(dim=(1, 2, 3), keepdim=True)
    return 0.2 + 0.5 * (z - lo) / (hi - lo)


@pytest.fixture(scope="module", params=[1, 3], ids=["grey", "rgb"])
def batch(request: pytest.FixtureRequest) -> torch.Tensor:
    return texture(4 if request.param == 1 else 2, request.param, 32)


def test_table_has_five_increasing_params_per_shift() -> None:
    assert SEVERITIES == (1, 2, 3, 4, 5)
    assert set(PARAMS) == set(SHIFTS) == {
        "contrast_low", "contrast_high", "brightness", "gamma", "gaussian_noise", "speckle_noise",
        "gaussian_blur", "jpeg", "pixelate"}
    for name, values in PARAMS.items():
        assert len(values) == 5, name
        # every parameter moves away from "no change" with severity
        ordered = sorted(values, reverse=name in ("contrast_low", "jpeg"))
        assert list(values) == ordered and len(set(values)) == 5, name


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_device_range(batch: torch.Tensor, name: str, severity: int) -> None:
    out = apply_shift(name, batch, severity, seed=1)
    assert out.shape == batch.shape
    assert out.dtype == batch.dtype
    assert out.device == batch.device
    assert torch.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize("name", NAMES)
def test_other_float_dtypes_are_kept(name: str, dtype: torch.dtype) -> None:
    x = texture(2, 1, 16).to(dtype)
    out = apply_shift(name, x, 3)
    assert out.dtype == dtype and out.shape == x.shape
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("name", NAMES)
def test_input_is_not_modified(batch: torch.Tensor, name: str) -> None:
    before = batch.clone()
    out = apply_shift(name, batch, 5, seed=3)
    assert torch.equal(batch, before)
    assert out.data_ptr() != batch.data_ptr()
    # the raw shift function (public via SHIFTS) honours the same contract
    SHIFTS[name](batch, 5, torch.Generator().manual_seed(0))
    assert torch.equal(batch, before)


def test_values_outside_unit_range_are_clamped_first() -> None:
    x = torch.full((1, 1, 8, 8), 1.5)
    assert torch.equal(apply_shift("contrast_low", x, 1), torch.ones_like(x))


def test_non_float_and_non_4d_inputs_are_rejected() -> None:
    with pytest.raises(TypeError):
        apply_shift("gamma", torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 1)
    with pytest.raises(ValueError):
        apply_shift("gamma", torch.zeros(1, 4, 4), 1)


# ----------------------------------------------------------------------------- severity


@pytest.mark.parametrize("name", NAMES)
def test_change_grows_strictly_with_severity(batch: torch.Tensor, name: str) -> None:
    diffs = [float((apply_shift(name, batch, s, seed=5) - batch).abs().mean()) for s in SEVERITIES]
    assert all(b > a for a, b in zip(diffs, diffs[1:])), diffs
    assert diffs[0] > 0.0


@pytest.mark.parametrize("size", [28, 64])
@pytest.mark.parametrize("name", ["gaussian_blur", "jpeg", "pixelate"])
def test_monotone_at_other_resolutions(name: str, size: int) -> None:
    x = texture(2, 1, size, seed=size)
    diffs = [float((apply_shift(name, x, s) - x).abs().mean()) for s in SEVERITIES]
    assert all(b > a for a, b in zip(diffs, diffs[1:])), diffs


# ----------------------------------------------------------------------------- randomness


@pytest.mark.parametrize("name", NOISE)
def test_noise_is_seeded_and_leaves_global_rng_alone(name: str) -> None:
    x = texture(2, 1, 32)
    state = torch.get_rng_state()
    a = apply_shift(name, x, 3, seed=11)
    b = apply_shift(name, x, 3, seed=11)
    c = apply_shift(name, x, 3, seed=12)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in NOISE])
def test_deterministic_shifts_ignore_the_seed(name: str) -> None:
    x = texture(2, 1, 32)
    assert torch.equal(apply_shift(name, x, 4, seed=0), apply_shift(name, x, 4, seed=99))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name: str) -> None:
    x = texture(2, 1, 32)
    out = apply_shift(name, x.cuda(), 3, seed=4)
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), apply_shift(name, x, 3, seed=4), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- hand-computed values


def test_gamma_on_constant_image_is_value_to_the_gamma() -> None:
    x = torch.full((2, 1, 8, 8), 0.5)
    for s in SEVERITIES:
        torch.testing.assert_close(apply_shift("gamma", x, s), torch.full_like(x, 0.5 ** PARAMS["gamma"][s - 1]))
    assert torch.equal(apply_shift("gamma", torch.tensor([0.0, 1.0]).view(1, 1, 1, 2), 5),
                       torch.tensor([0.0, 1.0]).view(1, 1, 1, 2))


@pytest.mark.parametrize("name", ["contrast_low", "contrast_high", "gaussian_blur", "pixelate"])
def test_constant_image_is_unchanged(name: str) -> None:
    x = torch.full((2, 3, 16, 16), 0.37)
    for s in SEVERITIES:
        torch.testing.assert_close(apply_shift(name, x, s), x)


def test_contrast_scales_deviation_from_the_mean() -> None:
    x = torch.tensor([0.25, 0.75]).view(1, 1, 1, 2)  # mean 0.5
    torch.testing.assert_close(apply_shift("contrast_low", x, 1), torch.tensor([0.3, 0.7]).view(1, 1, 1, 2))
    torch.testing.assert_close(apply_shift("contrast_high", x, 5), torch.tensor([0.1, 0.9]).view(1, 1, 1, 2))


def test_brightness_adds_to_grey_and_keeps_hue_of_colour() -> None:
    grey = torch.full((1, 1, 4, 4), 0.4)
    torch.testing.assert_close(apply_shift("brightness", grey, 5), torch.full_like(grey, 0.7))
    rgb = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)  # V = 0.6 -> 0.9: every channel times 1.5
    torch.testing.assert_close(apply_shift("brightness", rgb, 5), torch.tensor([0.3, 0.6, 0.9]).view(1, 3, 1, 1))
    black = torch.zeros(1, 3, 1, 1)
    torch.testing.assert_close(apply_shift("brightness", black, 2), torch.full_like(black, 0.1))
    assert torch.equal(apply_shift("brightness", torch.ones(1, 1, 2, 2), 5), torch.ones(1, 1, 2, 2))


def test_gaussian_noise_has_the_tabled_std() -> None:
    x = torch.full((1, 1, 128, 128), 0.5)
    for s in (1, 3):
        noise = apply_shift("gaussian_noise", x, s, seed=0) - x
        assert abs(float(noise.mean())) < 0.01
        assert float(noise.std()) == pytest.approx(PARAMS["gaussian_noise"][s - 1], rel=0.05)


def test_speckle_is_multiplicative() -> None:
    x = torch.zeros(1, 1, 16, 16)
    x[..., 8:] = 0.5
    out = apply_shift("speckle_noise", x, 5, seed=0)
    assert torch.equal(out[..., :8], x[..., :8])  # black stays black
    assert not torch.equal(out[..., 8:], x[..., 8:])


def test_jpeg_changes_the_image_more_at_lower_quality() -> None:
    x = texture(2, 1, 32, seed=7)
    d1 = float((apply_shift("jpeg", x, 1) - x).abs().mean())
    d5 = float((apply_shift("jpeg", x, 5) - x).abs().mean())
    assert 0.0 < d1 < d5
    # values come back on the uint8 grid
    out = apply_shift("jpeg", x, 3)
    torch.testing.assert_close(out * 255, (out * 255).round(), atol=1e-4, rtol=0)


def test_pixelate_severity_5_makes_blocks_of_area_means() -> None:
    x = texture(2, 1, 32, seed=8)
    out = apply_shift("pixelate", x, 5)  # factor 4: 32 -> 8 -> 32, blocks of 4 x 4
    blocks = out.view(2, 1, 8, 4, 8, 4)
    assert torch.equal(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))  # constant within a block
    assert not torch.equal(out[..., 0, 3], out[..., 0, 4])  # and blocks differ
    torch.testing.assert_close(blocks[:, :, :, 0, :, 0], F.avg_pool2d(x, 4))


# ----------------------------------------------------------------------------- errors and defaults


def test_unknown_shift_lists_available_names() -> None:
    with pytest.raises(KeyError) as exc:
        apply_shift("snow", texture(1, 1, 16), 1)
    for name in NAMES:
        assert name in str(exc.value)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, True])
def test_bad_severity_raises(severity: object) -> None:
    with pytest.raises(ValueError, match="severity"):
        apply_shift("gamma", texture(1, 1, 16), severity)  # type: ignore[arg-type]


def test_default_shifts_per_modality() -> None:
    assert default_shifts("MG") == DEFAULT_SHIFTS["MG"]
    assert default_shifts(" dx ") == DEFAULT_SHIFTS["DX"] == DEFAULT_SHIFTS["CR"]
    assert "speckle_noise" in default_shifts("US")
    for photo in ("DERM", "XC"):
        assert {"brightness", "jpeg"} <= set(default_shifts(photo))
    for unknown in ("OT", "", "default", "PT"):
        assert default_shifts(unknown) == DEFAULT_SHIFTS["default"]
    assert {"MG", "CR", "DX", "CT", "MR", "US", "default"} <= set(DEFAULT_SHIFTS)
    for names in DEFAULT_SHIFTS.values():
        assert names and set(names) <= set(SHIFTS) and len(set(names)) == len(names)


# ----------------------------------------------------------------------------- accuracy under shift


class MeanIntensityClassifier(nn.Module):
    """Class 1 iff the mean intensity exceeds 0.45 (a fixed linear layer on the mean)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-10.0], [10.0]]))
            self.fc.bias.copy_(torch.tensor([4.5, -4.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(1, 2, 3)).unsqueeze(1))


@pytest.fixture(scope="module")
def mean_task() -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: mean ~0.3, class 1: mean ~0.6; the classifier above is perfect on it."""
    x = texture(24, 1, 16, seed=21)
    y = torch.arange(24) % 2
    x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) * 0.5 + torch.where(y == 1, 0.6, 0.3).view(-1, 1, 1, 1)
    return x.clamp(0, 1), y


@pytest.mark.parametrize("training", [True, False])
def test_shift_accuracy_values_and_mode(mean_task: tuple[torch.Tensor, torch.Tensor], training: bool) -> None:
    x, y = mean_task
    model = MeanIntensityClassifier().train(training)
    shifts = ["brightness", "gaussian_noise", "contrast_low"]
    res = shift_accuracy(model, x, y, shifts, seed=0, batch_size=10)
    assert model.training is training
    assert list(res) == shifts
    for per_sev in res.values():
        assert sorted(per_sev) == list(SEVERITIES)
        assert all(0.0 <= a <= 1.0 for a in per_sev.values())
    # +0.05 keeps every class-0 image below 0.45; +0.30 pushes all of them above it
    assert res["brightness"][1] == 1.0
    assert res["brightness"][5] == pytest.approx(0.5)
    assert res["brightness"][5] < res["brightness"][1]
    # contrast around each image's own mean keeps the mean: the classifier does not care
    assert all(a == 1.0 for a in res["contrast_low"].values())
    assert shift_accuracy(model, x, y, shifts, seed=0, batch_size=10) == res


def test_shift_accuracy_matches_apply_shift_in_one_batch(mean_task: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mean_task
    model = MeanIntensityClassifier()
    res = shift_accuracy(model, x, y, ["speckle_noise"], seed=3, batch_size=len(x))
    with torch.no_grad():
        expected = float((model(apply_shift("speckle_noise", x, 4, seed=3)).argmax(1) == y).float().mean())
    assert res["speckle_noise"][4] == pytest.approx(expected)


def test_shift_accuracy_errors(mean_task: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mean_task
    model = MeanIntensityClassifier().train()
    with pytest.raises(KeyError, match="available"):
        shift_accuracy(model, x, y, ["brightness", "snow"])
    with pytest.raises(ValueError):
        shift_accuracy(model, x, y[:-1], ["brightness"])
    assert model.training
