"""Seeded inputs for pipeline runs: a random picture and a rectangular hole (the generator is
`asuka.methods.seeded_generator`)."""

import numpy as np
import PIL.Image


def random_array(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Uniform random RGB in [0, 1), float32, (height, width, 3): the pipelines' numpy input."""
    return np.random.RandomState(seed).rand(height, width, 3).astype(np.float32)


def random_image(height: int, width: int, seed: int = 0) -> PIL.Image.Image:
    """Uniform random 8-bit RGB picture of `height` x `width`."""
    return PIL.Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype(np.uint8))


def box_mask(height: int, width: int, rows: tuple[int, int], cols: tuple[int, int]) -> PIL.Image.Image:
    """An L-mode mask: white (the hole) on rows `rows[0]:rows[1]` and columns `cols[0]:cols[1]`, black elsewhere."""
    mask = np.zeros((height, width), np.uint8)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = 255
    return PIL.Image.fromarray(mask)


def box_mask_array(height: int, width: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """`box_mask` as the pipelines' numpy input: float32, 1 in the hole and 0 elsewhere."""
    return np.asarray(box_mask(height, width, rows, cols), np.float32) / 255


def make_inputs(size: int = 64) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """A random square picture of side `size` and a rectangular hole in its middle."""
    return random_image(size, size), box_mask(
        size, size, rows=(size // 4, 3 * size // 4), cols=(size // 3, 2 * size // 3)
    )
