"""Inpainting metrics of the ASUKA / MISATO protocol.

Distribution metrics work on feature matrices (one row per image) so they are independent of the
feature extractor: FID and the Inception Discriminative Scores (U-IDS / P-IDS, Zhao et al., ICLR
2021). Pixel metrics work on batches of composites in [0, 1]: PSNR, SSIM on grayscale, and the
optional boundary-gradient error.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.feature import canny
from sklearn.decomposition import PCA
from sklearn.svm import LinearSVC
from torchvision.transforms.functional import rgb_to_grayscale


PSNR_EPS = 1e-7  # added to the MSE like the released evaluation, so identical images stay finite


def _check_features(name: str, features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(
            f"`{name}` must be a (num_images, dim) matrix with at least 2 rows; got shape {features.shape}."
        )
    return features


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues clipped)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets: |mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^1/2).

    tr((S_r S_f)^1/2) is computed as the trace of (S_r^1/2 S_f S_r^1/2)^1/2, which has the same
    eigenvalues but is symmetric, so it stays real and stable for rank-deficient covariances
    (fewer images than feature dimensions, as on MISATO).
    """
    real, fake = _check_features("real", real), _check_features("fake", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"Feature dimensions differ: real {real.shape[1]}, fake {fake.shape[1]}.")
    mu_real, mu_fake = real.mean(0), fake.mean(0)
    sigma_real, sigma_fake = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root_real = _sqrtm_psd(sigma_real)
    middle = root_real @ sigma_fake @ root_real
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    distance = np.square(mu_real - mu_fake).sum() + np.trace(sigma_real) + np.trace(sigma_fake) - 2.0 * trace_sqrt
    return float(max(distance, 0.0))


def inception_discriminative_scores(
    real: np.ndarray, fake: np.ndarray, pca_dim: int | None = None, seed: int = 0
) -> tuple[float, float]:
    """U-IDS and P-IDS from paired real/fake features (row i of `fake` is the inpainting of row i of `real`).

    A linear SVM (LinearSVC, dual=False) is trained to tell real from fake.
    U-IDS = 1 - its accuracy on its own training data; P-IDS = the fraction of pairs where the fake's
    decision value exceeds its real partner's. Both are 0 when fakes are trivially told apart and
    about 0.5 when they are indistinguishable. With few images (MISATO: 2000 pairs of 2048-d
    features) the released evaluation first projects the pooled features with PCA to `pca_dim`
    dimensions (the MISATO resolution, 512 or 1024); `None` keeps all dimensions.
    """
    real, fake = _check_features("real", real), _check_features("fake", fake)
    if real.shape != fake.shape:
        raise ValueError(f"P-IDS needs paired features of equal shape; got real {real.shape} and fake {fake.shape}.")
    inputs = np.concatenate([real, fake])
    if pca_dim is not None:
        if pca_dim < 1:
            raise ValueError(f"`pca_dim` must be a positive integer or None; got {pca_dim}.")
        n_components = min(pca_dim, *inputs.shape)
        if n_components < inputs.shape[1]:
            inputs = PCA(n_components, random_state=seed).fit_transform(inputs)
    targets = np.concatenate([np.ones(len(real)), np.zeros(len(fake))])
    svm = LinearSVC(dual=False, random_state=seed).fit(inputs, targets)
    u_ids = 1.0 - svm.score(inputs, targets)
    scores = svm.decision_function(inputs)
    p_ids = np.mean(scores[len(real) :] > scores[: len(real)])
    return float(u_ids), float(p_ids)


def _check_images(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(
            "Expected two (B, 3, H, W) image batches of the same shape; "
            f"got {tuple(pred.shape)} and {tuple(target.shape)}."
        )


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of (B, 3, H, W) images in [0, 1]."""
    _check_images(pred, target)
    mse = (pred.double() - target.double()).pow(2).mean(dim=(1, 2, 3))
    return -10.0 * torch.log10(mse + PSNR_EPS)


def ssim_gray(pred: torch.Tensor, target: torch.Tensor, win_size: int = 7) -> torch.Tensor:
    """Per-image SSIM on the ITU-R 601 grayscale of (B, 3, H, W) images in [0, 1].

    Same definition as scikit-image's `structural_similarity` defaults (uniform `win_size` window,
    sample covariance, K1=0.01, K2=0.03, data range 1, mean over the window-valid interior), which
    the released evaluation calls; written in torch so it runs batched on the GPU.
    """
    _check_images(pred, target)
    if min(pred.shape[-2:]) < win_size:
        raise ValueError(f"SSIM needs images of at least {win_size}x{win_size} pixels; got {tuple(pred.shape[-2:])}.")
    x, y = rgb_to_grayscale(pred.double()), rgb_to_grayscale(target.double())
    mean = lambda t: F.avg_pool2d(t, win_size, stride=1)  # noqa: E731 - valid-region box filter
    n = win_size * win_size
    cov_norm = n / (n - 1)
    mu_x, mu_y = mean(x), mean(y)
    var_x = cov_norm * (mean(x * x) - mu_x * mu_x)
    var_y = cov_norm * (mean(y * y) - mu_y * mu_y)
    cov_xy = cov_norm * (mean(x * y) - mu_x * mu_y)
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))


def boundary_gradient_error(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """Mean Sobel-gradient difference between composite and ground truth on the mask's Canny edges.

    pred/target: (H, W, 3) uint8 or float in [0, 255]; mask: (H, W) in [0, 255]. Measured per colour
    channel and averaged, as in the released `cal_grad.py`; lower means a seamless hole boundary.
    The edges come from scikit-image's Canny with OpenCV's thresholds (100, 200) and no smoothing, so
    values are close to, not bit-identical with, the OpenCV-based release.
    """
    edges = canny(np.asarray(mask, dtype=np.float64), sigma=0.0, low_threshold=100, high_threshold=200)
    if not edges.any():
        return 0.0
    errors = []
    for channel in range(3):
        diff = np.asarray(pred, dtype=np.float64)[..., channel] - np.asarray(target, dtype=np.float64)[..., channel]
        magnitude = np.hypot(ndimage.sobel(diff, axis=1, mode="mirror"), ndimage.sobel(diff, axis=0, mode="mirror"))
        errors.append(magnitude[edges].mean())
    return float(np.mean(errors))
