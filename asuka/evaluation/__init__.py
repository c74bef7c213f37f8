"""Benchmark evaluation with the ASUKA / MISATO protocol: `python -m asuka.evaluation run|score|table`.

Library use: `discover(folder)` lists a benchmark, `score(benchmark, pred_dir, extractors)` scores a
folder of outputs, and the metrics in `asuka.evaluation.metrics` work on plain arrays and tensors.
"""

from asuka.evaluation.data import Benchmark, Sample, SampleError, composite, discover
from asuka.evaluation.extractors import Extractors, load_extractors, tiny_extractors
from asuka.evaluation.metrics import (
    boundary_gradient_error,
    frechet_distance,
    inception_discriminative_scores,
    psnr,
    ssim_gray,
)
from asuka.evaluation.scorer import score


__all__ = [
    "Benchmark",
    "Extractors",
    "Sample",
    "SampleError",
    "boundary_gradient_error",
    "composite",
    "discover",
    "frechet_distance",
    "inception_discriminative_scores",
    "load_extractors",
    "psnr",
    "score",
    "ssim_gray",
    "tiny_extractors",
]
