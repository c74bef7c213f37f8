"""Shared cases for the diffusers-contract tests (tests/test_pipeline_contract_*.py): one entry per public pipeline.

Each case names the tiny pipeline kind, a test image size the tiny pipeline runs at without resizing and a step
count that keeps the run well under a second.
"""

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from asuka.testing import make_tiny_pipeline


@dataclass(frozen=True)
class Case:
    kind: str
    size: tuple[int, int]  # (width, height) of the test images
    steps: int

    def __str__(self) -> str:
        return self.kind


CASES = [
    Case("sd", (64, 48), 2),
    Case("flux", (48, 32), 2),
    Case("strdiffusion", (16, 16), 3),
]


def make_pipe(case: Case):
    return make_tiny_pipeline(case.kind)


def make_image(case: Case, seed: int = 0) -> PIL.Image.Image:
    width, height = case.size
    rng = np.random.RandomState(seed)
    return PIL.Image.fromarray((rng.rand(height, width, 3) * 255).astype(np.uint8))


def make_mask(case: Case, shift: int = 0) -> PIL.Image.Image:
    """A white rectangle in the middle (moved right by `shift` pixels) on black."""
    width, height = case.size
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : 3 * height // 4, width // 4 + shift : width // 2 + shift] = 255
    return PIL.Image.fromarray(mask)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run(pipe, case: Case, image=None, mask=None, **kwargs):
    """One call with the case's defaults (its image, mask, step count, seed 0, numpy output)."""
    kwargs.setdefault("num_inference_steps", case.steps)
    kwargs.setdefault("output_type", "np")
    if "generator" not in kwargs:
        kwargs["generator"] = gen()
    image = make_image(case) if image is None else image
    mask = make_mask(case) if mask is None else mask
    return pipe(image, mask, **kwargs).images
