"""Score a folder of inpaintings against a benchmark with the released MISATO protocol.

Each output is pasted into its ground truth where the mask is > 0.5 (the composite), so only the
hole is judged. Pixel metrics are per image and averaged; FID / U-IDS / P-IDS compare Inception
features of the composites with those of all ground truths. Files that cannot be scored (missing
output or mask, size mismatch, unreadable file) are reported by name and left out.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor
from tqdm.auto import tqdm

from asuka.evaluation.data import Benchmark, Sample, SampleError, composite, load_prediction, load_sample
from asuka.evaluation.extractors import Extractors
from asuka.evaluation.metrics import (
    boundary_gradient_error,
    frechet_distance,
    inception_discriminative_scores,
    psnr,
    ssim_gray,
)
from asuka.imageio import IMAGE_EXTENSIONS


PIXEL_METRICS = ("psnr", "ssim", "lpips", "grad")
METRICS = ("fid", "u_ids", "p_ids") + PIXEL_METRICS


def find_prediction(pred_dir: Path, sample: Sample) -> Path:
    """The output for `sample`: `<stem>.png`, else the image's own file name, else `<stem>.<any ext>`."""
    stem = sample.image_path.stem
    candidates = [pred_dir / sample.name, pred_dir / sample.image_path.name]
    candidates += [pred_dir / (stem + ext) for ext in IMAGE_EXTENSIONS]
    return next((path for path in candidates if path.is_file()), candidates[0])


def _to_batch(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([pil_to_tensor(image) for image in images]).double() / 255.0


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _domain_metrics(rows: list[dict], real: np.ndarray, fake: np.ndarray, pca_dim: int | None, grad: bool) -> dict:
    metrics: dict[str, float | None] = {"fid": None, "u_ids": None, "p_ids": None}
    if len(rows) >= 2:
        metrics["fid"] = frechet_distance(real, fake)
        metrics["u_ids"], metrics["p_ids"] = inception_discriminative_scores(real, fake, pca_dim)
    for name in PIXEL_METRICS:
        metrics[name] = _mean([row[name] for row in rows]) if (grad or name != "grad") else None
    return metrics


def score(
    benchmark: Benchmark,
    pred_dir: str | Path,
    extractors: Extractors,
    batch_size: int = 16,
    ids_pca_dim: int | None = None,
    grad: bool = True,
    known_errors: dict[str, str] | None = None,
) -> dict:
    """Metrics of the outputs in `pred_dir`: overall ("all") and per domain, plus per-image rows and errors.

    `ids_pca_dim` is the PCA dimension for U-IDS/P-IDS (`None`: all feature dimensions).
    `known_errors` (name -> reason, e.g. from generation) take precedence over "no generated output".
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer; got {batch_size}.")
    pred_dir = Path(pred_dir)
    errors = dict(known_errors or {})
    rows: list[dict] = []
    real_features, fake_features = [], []
    samples = list(benchmark.samples)
    bar = tqdm(total=len(samples), desc="scoring")
    for start in range(0, len(samples), batch_size):
        batch = []  # (sample, ground truth, mask, composite)
        for sample in samples[start : start + batch_size]:
            try:
                image, mask = load_sample(sample)
                pred = load_prediction(find_prediction(pred_dir, sample), image.size)
                batch.append((sample, image, mask, composite(pred, image, mask)))
            except SampleError as error:
                errors.setdefault(sample.name, str(error))
        bar.update(len(samples[start : start + batch_size]))
        if not batch:
            continue
        groups: dict[tuple[int, int], list] = {}
        for item in batch:  # pixel metrics are batched per image size
            groups.setdefault(item[1].size, []).append(item)
        for items in groups.values():
            target, pred = _to_batch([i[1] for i in items]), _to_batch([i[3] for i in items])
            values = {
                "psnr": psnr(pred, target),
                "ssim": ssim_gray(pred, target),
                "lpips": extractors.lpips(pred, target),
            }
            real_features.extend(extractors.features([i[1] for i in items]))
            fake_features.extend(extractors.features([i[3] for i in items]))
            for k, (sample, image, mask, comp) in enumerate(items):
                row = {"name": sample.name, "domain": sample.domain}
                row.update({key: float(value[k]) for key, value in values.items()})
                row["grad"] = (
                    boundary_gradient_error(np.asarray(comp), np.asarray(image), np.asarray(mask)) if grad else None
                )
                rows.append(row)
    bar.close()
    real, fake = np.asarray(real_features), np.asarray(fake_features)
    domains = {"all": np.arange(len(rows))}
    for domain in benchmark.domains:
        if domain != "all":
            domains[domain] = np.array([i for i, row in enumerate(rows) if row["domain"] == domain], dtype=int)
    results = {
        domain: _domain_metrics([rows[i] for i in index], real[index], fake[index], ids_pca_dim, grad)
        for domain, index in domains.items()
    }
    counts = {domain: int(len(index)) for domain, index in domains.items()}
    return {
        "metrics": results,
        "counts": counts,
        "errors": {name: errors[name] for name in sorted(errors)},
        "per_image": rows,
        "features": extractors.name,
        "ids_pca_dim": ids_pca_dim,
    }


def default_ids_pca_dim(benchmark: Benchmark) -> int | None:
    """The released evaluation's PCA dimension: MISATO's resolution (512 / 1024); none for other layouts."""
    if benchmark.layout != "misato":
        return None
    try:
        with Image.open(benchmark.samples[0].image_path) as image:
            return max(image.size)
    except OSError:
        return None


def is_number(value: float | None) -> bool:
    """True for a finite float (metrics that could not be computed are None)."""
    return value is not None and math.isfinite(value)
