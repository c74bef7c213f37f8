"""Feature extractors for the distribution and perceptual metrics, injectable for offline tests.

The scorer needs two callables, bundled in `Extractors`:
- `features(images: list[PIL.Image]) -> np.ndarray (N, D)`: Inception pool features for FID / IDS;
- `lpips(pred, target) -> Tensor (B,)`: per-image LPIPS of (B, 3, H, W) batches in [0, 1].

`"torchvision"` features are what the released MISATO evaluation uses (torchvision's ImageNet
Inception-v3 with the classifier removed and its own preprocessing), so its numbers reproduce;
`"fid"` is the standard TF-FID Inception of torchmetrics / torch-fidelity, for comparison with FID
reported elsewhere. LPIPS is torchmetrics' AlexNet LPIPS. These download weights on first use.
`"tiny"` gives small random networks that run offline in milliseconds: for tests and smoke runs only.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor


FeatureFn = Callable[[list[Image.Image]], np.ndarray]
LpipsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

FEATURE_KINDS = ("torchvision", "fid", "tiny")


@dataclass
class Extractors:
    """The networks the scorer calls; `name` is recorded in metrics.json so runs are comparable."""

    name: str
    features: FeatureFn
    lpips: LpipsFn


def _batched_features(model: torch.nn.Module, preprocess: Callable, device: torch.device) -> FeatureFn:
    """`features(images)`: `model` on the `preprocess`ed images as one batch, as float64 on the CPU."""

    @torch.no_grad()
    def features(images: list[Image.Image]) -> np.ndarray:
        batch = torch.stack([preprocess(image) for image in images]).to(device)
        return model(batch).double().cpu().numpy()

    return features


def _torchvision_inception(device: torch.device) -> FeatureFn:
    from torchvision.models import Inception_V3_Weights, inception_v3

    weights = Inception_V3_Weights.IMAGENET1K_V1
    model = inception_v3(weights=weights)
    model.fc = torch.nn.Identity()
    model.eval().to(device)
    return _batched_features(model, weights.transforms(), device)


def _fid_inception(device: torch.device) -> FeatureFn:
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ValueError(
            "Features 'fid' need the torch-fidelity package (`pip install torch-fidelity`); or use 'torchvision'."
        )
    from torchmetrics.image.fid import NoTrainInceptionV3

    model = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"]).eval().to(device)
    return _batched_features(model, pil_to_tensor, device)


def _lpips_alex(device: torch.device) -> LpipsFn:
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", reduction="none", normalize=True).to(device)

    @torch.no_grad()
    def lpips(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        metric.reset()
        metric.update(pred.float().to(device), target.float().to(device))
        return metric.compute().reshape(-1).cpu()

    return lpips


def tiny_extractors(seed: int = 0, dim: int = 16) -> Extractors:
    """Random conv features and a random-feature perceptual distance; deterministic, offline, fast."""
    generator = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv2d(3, dim, kernel_size=4, stride=4)
    with torch.no_grad():
        for parameter in conv.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)

    @torch.no_grad()
    def embed(batch: torch.Tensor) -> torch.Tensor:
        return torch.tanh(conv(torch.nn.functional.interpolate(batch, size=(32, 32), mode="area")))

    def features(images: list[Image.Image]) -> np.ndarray:
        batch = torch.stack([pil_to_tensor(image) for image in images]).float() / 255.0
        return embed(batch).mean(dim=(2, 3)).double().numpy()

    def lpips(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (embed(pred.float()) - embed(target.float())).pow(2).mean(dim=(1, 2, 3))

    return Extractors("tiny", features, lpips)


def load_extractors(kind: str = "torchvision", device: str | torch.device = "cpu") -> Extractors:
    """The extractors named `kind` (one of FEATURE_KINDS) on `device`."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"Unknown features {kind!r}; accepted: {', '.join(FEATURE_KINDS)}.")
    if kind == "tiny":
        return tiny_extractors()
    device = torch.device(device)
    features = _torchvision_inception(device) if kind == "torchvision" else _fid_inception(device)
    return Extractors(kind, features, _lpips_alex(device))
