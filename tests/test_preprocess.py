"""Tests of cmedl.data.preprocess: intensities, body mask, crops, resampling, prepare/restore."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmedl.data import body, cropping, intensity, preprocess, resampling
from cmedl.data.preprocess import (
    PreprocessConfig,
    PreprocessOptions,
    body_mask,
    bounding_box,
    box_centre,
    crop_or_pad,
    ct_window,
    extract_window,
    mr_normalise,
    paste_window,
    prepare_label,
    prepare_volume,
    resample_in_plane,
    resample_volume,
    restore_to_input,
    standardise,
)
from cmedl.errors import ConfigError, GeometryError, InputError
from cmedl.io import Volume


def phantom(
    z: int = 8, n: int = 40, modality: str = "ct"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A thorax-like volume [z, n, n]: elliptic body, two lungs through every slice, a sphere
    tumour in the right lung and a small couch blob outside the body. Returns image, body, tumour."""
    zz, yy, xx = np.mgrid[:z, :n, :n]
    c = (n - 1) / 2
    body = ((yy - c) / (0.35 * n)) ** 2 + ((xx - c) / (0.42 * n)) ** 2 < 1
    lungs = (((yy - c) / (0.2 * n)) ** 2 + ((xx - c + 0.2 * n) / (0.12 * n)) ** 2 < 1) | (
        ((yy - c) / (0.2 * n)) ** 2 + ((xx - c - 0.2 * n) / (0.12 * n)) ** 2 < 1
    )
    tumour = (((zz - z / 2) * 2.0) ** 2 + (yy - c) ** 2 + (xx - c - 0.2 * n) ** 2) < (0.08 * n) ** 2
    couch = (yy >= n - 3) & (yy < n - 1) & (np.abs(xx - c) < 3)
    if modality == "mr":
        img = (
            np.where(body, 300.0, 5.0) + np.where(lungs, -280.0, 0.0) + np.where(tumour, 200.0, 0.0)
        )
        img = img + np.where(couch, 200.0, 0.0)
    else:
        img = (
            np.where(body, 40.0, -1000.0)
            + np.where(lungs, -840.0, 0.0)
            + np.where(tumour, 830.0, 0.0)
        )
        img = np.where(couch, 200.0, img)
    return img.astype(np.float32), body, tumour


# ---------------------------------------------------------------------- intensity
def test_ct_window_known_values_and_clipping():
    hu = np.array([-2000.0, -1000.0, -250.0, 500.0, 3000.0])
    out = ct_window(hu)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-1.0, -1.0, 0.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(
        ct_window(np.array([-160.0, 40.0, 240.0]), (-160, 240)), [-1, 0, 1], atol=1e-6
    )
    with pytest.raises(InputError):
        ct_window(hu, (100, 100))


def test_mr_normalise_uses_percentiles_inside_mask():
    arr = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    mask = (arr >= 10) & (arr < 20)  # values 10..19 only
    out = mr_normalise(arr, mask, percentiles=(0, 100))
    assert out.dtype == np.float32
    assert out[0, 1, 0] == pytest.approx(-1.0) and out[0, 1, 9] == pytest.approx(1.0)
    assert out[0, 1, 4] == pytest.approx(2 * 4 / 9 - 1, abs=1e-6)
    assert out[0, 0, 0] == -1.0 and out[0, 9, 9] == 1.0  # clipped outside the masked range
    # default percentiles are robust to a single bright outlier
    arr2 = np.linspace(0, 1, 1000, dtype=np.float32).reshape(10, 10, 10)
    arr2[0, 0, 0] = 1e6
    assert np.median(mr_normalise(arr2)) == pytest.approx(0.0, abs=0.02)
    assert (mr_normalise(np.full((2, 3, 3), 7.0)) == -1).all()


def test_standardise_known_values():
    arr = np.array([1.0, 2.0, 3.0, 4.0, 100.0]).reshape(1, 1, 5)
    mask = arr < 50
    z = standardise(arr, mask, clip_sd=None)
    sd = np.std([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(z[0, 0, :4], (np.array([1, 2, 3, 4]) - 2.5) / sd, rtol=1e-5)
    squashed = standardise(arr, mask)  # clip at 3 SD, divide by 3
    np.testing.assert_allclose(
        squashed[0, 0, :4], (np.array([1, 2, 3, 4]) - 2.5) / sd / 3, rtol=1e-5
    )
    assert squashed[0, 0, 4] == pytest.approx(1.0)
    assert squashed.min() >= -1 and squashed.max() <= 1


# ---------------------------------------------------------------------- body mask
@pytest.mark.parametrize("modality", ["ct", "cbct", "mr"])
def test_body_mask_fills_lungs_and_drops_couch(modality):
    img, body, _ = phantom(modality="mr" if modality == "mr" else "ct")
    mask = body_mask(img, modality)
    assert mask.dtype == bool
    # the lungs run through every slice (open in 3D): only per-slice filling closes them
    np.testing.assert_array_equal(mask, body)


def test_body_mask_hull_closes_lung_cut_by_truncated_fov():
    img, body, _ = phantom()
    yy, xx = np.mgrid[:40, :40]
    fov = (yy - 19.5) ** 2 + (xx - 23.0) ** 2 < 15.5**2  # CBCT field of view cuts the left lung
    img = np.where(fov, img, -1000.0).astype(np.float32)
    inside = body & fov
    holes = body_mask(img, "cbct")
    missed = (inside & ~holes).sum()
    assert missed > 100  # the lung open to the FOV edge is no hole: left out
    hull = body_mask(img, "cbct", fill="hull")
    assert (holes & ~hull).sum() == 0
    # the hull closes the opening with a chord: only the thin segment beyond it stays out
    assert (inside & ~hull).sum() < 0.4 * missed
    assert (hull & ~body).sum() < 0.05 * hull.sum()  # the hull adds little outside the body
    assert (
        PreprocessConfig("cbct").body_fill == "hull" and PreprocessConfig("ct").body_fill == "holes"
    )


def test_body_mask_empty_and_bad_modality():
    assert not body_mask(np.full((2, 5, 5), -1000.0), "ct").any()
    with pytest.raises(InputError, match="did you mean 'mr'"):
        body_mask(np.zeros((2, 5, 5)), "mri")


# ---------------------------------------------------------------------- crops
def test_bounding_box_margin_and_clipping():
    m = np.zeros((4, 10, 12), bool)
    m[1:3, 2:5, 9:11] = True
    assert bounding_box(m) == (slice(1, 3), slice(2, 5), slice(9, 11))
    assert bounding_box(m, margin=2) == (slice(0, 4), slice(0, 7), slice(7, 12))
    assert bounding_box(m, margin=(0, 1, 0)) == (slice(1, 3), slice(1, 6), slice(9, 11))
    with pytest.raises(InputError, match="empty"):
        bounding_box(np.zeros((3, 3), bool))


def test_crop_or_pad_centring_and_padding():
    a = np.zeros((3, 20, 30), np.float32)
    a[:, 10, 12] = 5
    out = crop_or_pad(a, (5, 7), center=(10, 12))
    assert out.shape == (3, 5, 7) and out[0, 2, 3] == 5 and out.sum() == 15
    # near the edge: the window runs outside and is padded
    # (an even window on an integer centre has one more voxel before the centre: start -4)
    out = crop_or_pad(a, (8, 8), center=(0, 0), pad_value=-1)
    assert out.shape == (3, 8, 8)
    assert (
        (out[:, :4, :] == -1).all() and (out[:, :, :4] == -1).all() and (out[:, 4:, 4:] == 0).all()
    )
    # pad to larger: the input sits in the middle
    small = np.arange(4, dtype=np.float32).reshape(1, 2, 2) + 1
    big = crop_or_pad(small, (4, 6), pad_value=0)
    np.testing.assert_array_equal(big[0, 1:3, 2:4], small[0])
    assert big.sum() == small.sum()
    # None keeps an axis; a box crops exactly
    assert crop_or_pad(a, (None, 4)).shape == (3, 20, 4)
    box = (slice(2, 6), slice(10, 13))
    np.testing.assert_array_equal(crop_or_pad(a, box), a[:, 2:6, 10:13])
    assert box_centre(box) == (3.5, 11.0)


def test_extract_paste_window_inverse():
    rng = np.random.default_rng(1)
    a = rng.random((4, 9, 11)).astype(np.float32)
    for starts in [(0, -3, 2), (0, 4, -5), (0, 0, 0)]:
        w = extract_window(a, starts, (4, 8, 16), pad_value=-7)
        back = paste_window(w, starts, a.shape, fill_value=np.nan)
        inside = ~np.isnan(back)
        np.testing.assert_array_equal(back[inside], a[inside])
        assert inside.sum() == (w != -7).sum()


# ---------------------------------------------------------------------- resampling
def test_resample_keeps_extent_origin_and_linear_values():
    a = np.cos(0.4)
    direction = (a, -np.sin(0.4), 0, np.sin(0.4), a, 0, 0, 0, 1)
    zz, yy, xx = np.mgrid[:6, :20, :24].astype(np.float32)
    vol = Volume(
        2 * xx + 3 * yy + zz, spacing=(1.0, 1.2, 2.5), origin=(-10, 5, 30), direction=direction
    )
    out = resample_volume(vol, (0.5, 0.6, 1.25))
    assert out.shape == (12, 40, 48)
    assert out.array.dtype == np.float32
    np.testing.assert_allclose(out.origin, vol.origin)
    np.testing.assert_allclose(out.direction, vol.direction)
    np.testing.assert_allclose(
        np.array(out.shape) * out.spacing_zyx, np.array(vol.shape) * vol.spacing_zyx
    )
    # linear in index space -> exact at interior points (index i' maps to i'/2 of the input)
    np.testing.assert_allclose(out.array[4, 10, 10], 2 * 5 + 3 * 5 + 2, atol=1e-4)
    np.testing.assert_allclose(out.array[5, 13, 21], 2 * 10.5 + 3 * 6.5 + 2.5, atol=1e-4)


def test_resample_label_nearest_keeps_values_and_in_plane_keeps_slices():
    lab = np.zeros((5, 30, 30), np.uint8)
    lab[1:4, 5:15, 5:15] = 3
    lab[2, 20:25, 20:28] = 7
    vol = Volume(lab, spacing=(0.9, 0.9, 3.0))
    out = resample_in_plane(vol, 1.7, is_label=True)
    assert out.array.dtype == np.uint8
    assert set(np.unique(out.array)) == {0, 3, 7}
    assert out.shape == (5, 16, 16) and out.spacing[2] == 3.0
    vol_mm3 = (lab == 3).sum() * 0.81
    assert (out.array == 3).sum() * 1.7**2 == pytest.approx(vol_mm3, rel=0.2)
    with pytest.raises(InputError):
        resample_volume(vol, (1.0, 0.0, 1.0))


# ---------------------------------------------------------------------- config
def test_config_round_trip_and_validation():
    cfg = PreprocessConfig("mr", in_plane_spacing_mm=1.5, in_plane_size=(64, 64))
    assert cfg.intensity == "percentile"
    assert PreprocessConfig("cbct").intensity == "standardise"
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert PreprocessConfig.from_dict(json.loads(json.dumps(d))) == cfg
    with pytest.raises(ConfigError, match="did you mean 'window'"):
        PreprocessConfig.from_dict({"modality": "ct", "windw": [0, 1]})
    with pytest.raises(ConfigError):
        PreprocessConfig("pet")
    with pytest.raises(ConfigError):
        PreprocessConfig("ct", window=(500, -1000))
    with pytest.raises(ConfigError):
        PreprocessConfig("ct", intensity="zscore")


# ---------------------------------------------------------------------- typed options
@pytest.mark.parametrize("modality", ["ct", "cbct", "mr"])
def test_options_defaults_resolve_to_the_modality_defaults(modality):
    opts = PreprocessOptions()
    assert opts.resolve(modality) == PreprocessConfig(modality=modality)
    assert opts.to_overrides() == {}
    assert PreprocessOptions.from_overrides({}) == opts


def test_options_override_changes_only_that_field():
    opts = PreprocessOptions(window=(-500, 500))
    cfg = opts.resolve("ct")
    assert cfg.window == (-500.0, 500.0)
    default = PreprocessConfig(modality="ct").to_dict()
    changed = {k for k, v in cfg.to_dict().items() if v != default[k]}
    assert changed == {"window"}
    # the same overrides apply to every modality; intensity/body_fill keep the modality default
    assert opts.resolve("mr").intensity == "percentile"
    assert opts.resolve("cbct").body_fill == "hull"
    # plain YAML/JSON data, only the non-None fields; and back
    over = opts.to_overrides()
    assert over == {"window": [-500.0, 500.0]}
    assert json.loads(json.dumps(over)) == over
    assert PreprocessOptions.from_overrides(over) == opts
    # equal to the untyped route used for dict configs
    sized = PreprocessOptions(in_plane_size=(64, 64), clip_sd=2.0, intensity="standardise")
    assert sized.resolve("mr") == PreprocessConfig.from_dict(
        {**sized.to_overrides(), "modality": "mr"}
    )
    assert sized.to_overrides() == {
        "intensity": "standardise",
        "clip_sd": 2.0,
        "in_plane_size": [64, 64],
    }


def test_options_invalid_values_raise_config_error():
    with pytest.raises(ConfigError):
        PreprocessOptions(window=(500, -1000))
    with pytest.raises(ConfigError, match="did you mean 'standardise'"):
        PreprocessOptions(intensity="standardize")
    with pytest.raises(ConfigError):
        PreprocessOptions(percentiles=(99.0, 1.0))
    with pytest.raises(ConfigError):
        PreprocessOptions(window=(1.0,))
    with pytest.raises(ConfigError, match="did you mean 'window'"):
        PreprocessOptions.from_overrides({"windw": [0, 1]})
    with pytest.raises(ConfigError):
        PreprocessOptions.from_overrides({"modality": "ct"})
    opts = PreprocessOptions()
    opts.clip_sd = -1.0  # not frozen: a later bad value is caught when resolving
    with pytest.raises(ConfigError):
        opts.resolve("cbct")
    with pytest.raises(ConfigError):
        PreprocessOptions().resolve("pet")


def test_preprocess_reexports_the_building_blocks():
    for module in (intensity, body, cropping, resampling):
        for name in dir(module):
            obj = getattr(module, name)
            if name in preprocess.__all__:
                assert getattr(preprocess, name) is obj
    for name in preprocess.__all__:
        assert hasattr(preprocess, name)


# ---------------------------------------------------------------------- prepare / restore
def oblique_volume(modality: str = "ct") -> tuple[Volume, np.ndarray]:
    img, _, tumour = phantom(8, 40, modality)
    a = np.cos(0.3)
    direction = (a, -np.sin(0.3), 0.0, np.sin(0.3), a, 0.0, 0.0, 0.0, 1.0)
    return Volume(
        img, spacing=(2.7, 2.3, 3.0), origin=(-50, 20, 100), direction=direction
    ), tumour.astype(np.uint8)


def test_prepare_restore_round_trip_resampled_oblique():
    vol, tumour = oblique_volume()
    cfg = PreprocessConfig("ct", in_plane_spacing_mm=1.5, body_margin=2)
    p = prepare_volume(vol, cfg)
    assert p.image.dtype == np.float32 and p.image.shape[0] == vol.shape[0]
    assert p.image.shape[1] % 16 == 0 and p.image.shape[2] % 16 == 0
    assert -1.0 <= p.image.min() and p.image.max() <= 1.0
    lab = prepare_label(tumour, p)
    assert lab.shape == p.image.shape and set(np.unique(lab)) == {0, 1}
    # tumour volume preserved by the resampling (mm^3)
    assert lab.sum() * 1.5**2 == pytest.approx(tumour.sum() * 2.7 * 2.3, rel=0.1)
    back = restore_to_input(lab, p, is_label=True)
    assert back.shape == vol.shape and back.dtype == np.uint8
    np.testing.assert_array_equal(back, tumour)
    prob = restore_to_input(lab.astype(np.float32), p, is_label=False)
    assert prob.dtype == np.float32 and prob.shape == vol.shape
    assert ((prob > 0.5) != tumour.astype(bool)).sum() <= 2
    # the working grid is a physical sub-grid: working voxel centres map onto resampled voxels
    wv = p.working_volume()
    np.testing.assert_allclose(wv.direction, vol.direction)
    k, j, i = 3, 5, 7
    phys = wv.index_to_physical(np.array([i, j, k]))
    idx = vol.physical_to_index(phys)  # (x, y, z) in input voxels
    expect = np.array([(i + p.crop_start[1]) * 1.5 / 2.7, (j + p.crop_start[0]) * 1.5 / 2.3, k])
    np.testing.assert_allclose(idx, expect, atol=1e-6)


def test_prepare_without_resampling_is_a_pure_crop():
    vol, tumour = oblique_volume()
    p = prepare_volume(vol, PreprocessConfig("ct", body_margin=1, pad_multiple=8))
    assert not p.resampled
    y0, x0 = p.crop_start
    h, w = p.image.shape[1:]
    ys, xs = slice(max(y0, 0), min(y0 + h, 40)), slice(max(x0, 0), min(x0 + w, 40))
    np.testing.assert_allclose(
        p.image[:, ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0],
        ct_window(vol.array[:, ys, xs]),
    )
    np.testing.assert_array_equal(restore_to_input(prepare_label(tumour, p), p, True), tumour)
    # body box + margin 1 is 30 x 36 -> padded to multiples of 8
    assert p.image.shape[1:] == (32, 40)


def test_prepare_fixed_size_crop_and_mr_and_errors():
    vol, tumour = oblique_volume("mr")
    p = prepare_volume(vol, PreprocessConfig("mr", in_plane_size=(32, 32), in_plane_spacing_mm=2.0))
    assert p.image.shape == (8, 32, 32)
    assert p.image.min() >= -1 and p.image.max() <= 1
    back = restore_to_input(prepare_label(tumour, p), p, True)
    assert back.shape == vol.shape
    # the fixed 32x32 window at 2 mm (+-32 mm) is centred on the body: the tumour (<= 30 mm off) stays in
    np.testing.assert_array_equal(back, tumour)
    with pytest.raises(GeometryError):
        restore_to_input(np.zeros((8, 20, 24)), p, True)
    bad = vol.with_array(np.where(tumour > 0, np.nan, vol.array))
    bad.meta["source"] = "/data/x.nii.gz"
    with pytest.raises(InputError, match=r"^/data/x.nii.gz: image has NaN"):
        prepare_volume(bad, PreprocessConfig("mr"))
    with pytest.raises(GeometryError):
        prepare_label(Volume(tumour, spacing=(1, 1, 1)), p)
