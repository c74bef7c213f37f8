"""Metrics of asuka.evaluation against independent references (scipy, scikit-image, numpy)."""

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from asuka.evaluation.data import composite
from asuka.evaluation.metrics import (
    boundary_gradient_error,
    frechet_distance,
    inception_discriminative_scores,
    psnr,
    ssim_gray,
)


def _gaussian_features(rng, n, dim, shift=0.0):
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return rng.normal(size=(n, dim)) @ mixing + shift + rng.normal(size=dim)


def _scipy_fid(a, b):
    """The textbook formula with scipy's general matrix square root."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a @ s_b)
    return float(np.real(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * root)))


@pytest.mark.parametrize("shift", [0.0, 0.3, 2.0])
def test_fid_matches_scipy_reference(shift):
    rng = np.random.default_rng(1)
    real, fake = _gaussian_features(rng, 400, 24), _gaussian_features(rng, 300, 24, shift)
    ours, reference = frechet_distance(real, fake), _scipy_fid(real, fake)
    assert reference > 0
    assert abs(ours - reference) <= 1e-6 * reference


def test_fid_is_zero_for_identical_sets():
    features = _gaussian_features(np.random.default_rng(2), 200, 32)
    assert frechet_distance(features, features) == pytest.approx(
        0.0, abs=1e-9 * np.trace(np.cov(features, rowvar=False))
    )


def test_fid_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 5)))


@pytest.mark.parametrize("pca_dim", [None, 8])
def test_ids_about_half_for_one_distribution(pca_dim):
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(1500, 16)), rng.normal(size=(1500, 16))
    u_ids, p_ids = inception_discriminative_scores(real, fake, pca_dim=pca_dim)
    assert 0.4 < u_ids <= 0.5 + 1e-9
    assert 0.4 < p_ids < 0.6


def test_ids_zero_for_separated_distributions():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(500, 16))
    fake = real + 6.0  # every fake is far from every real
    u_ids, p_ids = inception_discriminative_scores(real, fake, pca_dim=4)
    assert u_ids == 0.0 and p_ids == 0.0


def test_ids_pairing_matters_for_p_ids():
    """P-IDS compares each fake with its own real partner: fakes nudged towards 'real' score higher."""
    rng = np.random.default_rng(5)
    real = rng.normal(size=(800, 8))
    fake = real + np.array([0.5] + [0.0] * 7)
    _, p_ids = inception_discriminative_scores(real, fake)
    assert p_ids == 0.0  # the SVM direction separates each pair, so no fake beats its partner
    _, p_shuffled = inception_discriminative_scores(real, fake[rng.permutation(800)])
    assert p_shuffled > 0.2  # unpaired comparison would not


def _pair(seed, size=48):
    rng = np.random.default_rng(seed)
    base = rng.random((3, size, size))
    base = (base + np.roll(base, 1, axis=1) + np.roll(base, 1, axis=2)) / 3  # some structure
    noisy = np.clip(base + rng.normal(scale=0.08, size=base.shape), 0, 1)
    return torch.from_numpy(noisy)[None], torch.from_numpy(base)[None]


def test_psnr_and_ssim_match_scikit_image():
    preds, targets = zip(*(_pair(seed) for seed in range(3)))
    pred, target = torch.cat(preds), torch.cat(targets)
    ours_psnr, ours_ssim = psnr(pred, target), ssim_gray(pred, target)
    weights = np.array([0.2989, 0.587, 0.114])  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
    for i in range(3):
        p, t = pred[i].numpy(), target[i].numpy()
        ref_psnr = peak_signal_noise_ratio(t, p, data_range=1.0)
        ref_ssim = structural_similarity(np.tensordot(weights, t, 1), np.tensordot(weights, p, 1), data_range=1.0)
        assert float(ours_psnr[i]) == pytest.approx(ref_psnr, abs=1e-3)  # the 1e-7 MSE epsilon
        assert float(ours_ssim[i]) == pytest.approx(ref_ssim, abs=1e-9)


def test_psnr_is_finite_for_identical_images():
    image = torch.rand(1, 3, 16, 16)
    assert float(psnr(image, image)) == pytest.approx(70.0)
    assert float(ssim_gray(image, image)) == pytest.approx(1.0)


def test_pixel_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim_gray(torch.rand(1, 3, 5, 5), torch.rand(1, 3, 5, 5))


def test_composite_takes_hole_from_prediction_and_rest_from_ground_truth():
    rng = np.random.default_rng(6)
    pred = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    truth = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    mask = np.zeros((20, 24), np.uint8)
    mask[5:12, 3:15] = 255
    mask[0, 0] = 128  # 128/255 > 0.5: hole
    mask[0, 1] = 127  # 127/255 < 0.5: kept
    out = np.asarray(composite(Image.fromarray(pred), Image.fromarray(truth), Image.fromarray(mask)))
    hole = mask > 127
    np.testing.assert_array_equal(out[hole], pred[hole])
    np.testing.assert_array_equal(out[~hole], truth[~hole])
    assert hole[0, 0] and not hole[0, 1]


def test_boundary_gradient_error_measures_seams_only():
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 256, (40, 40, 3)).astype(np.float64)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 255
    assert boundary_gradient_error(truth, truth, mask) == 0.0
    seamed = truth.copy()
    seamed[mask > 0] += 40.0  # a colour shift inside the hole leaves a seam on its boundary
    assert boundary_gradient_error(seamed, truth, mask) > 10.0
    interior = truth.copy()
    interior[15:25, 15:25] += 40.0  # a change well inside the hole does not touch the boundary
    assert boundary_gradient_error(interior, truth, mask) == 0.0
    assert boundary_gradient_error(seamed, truth, np.zeros_like(mask)) == 0.0
