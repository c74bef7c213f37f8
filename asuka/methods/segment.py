"""Click to select: the object under a point (or inside a box), segmented by SAM 2.1 from transformers.

The app's "Click to select" tab and its `/segment` endpoint go through [`Segmenter`]. The model is
`facebook/sam2.1-hiera-tiny` (`asuka.defaults.SEGMENT_MODEL_REPO`, 38.9 M parameters, 156 MB in float32), the
smallest SAM 2.1 (docs/app.md says why). It loads on the first click, on the device of the inpainting model, and
keeps the last image's embeddings so that further clicks on the same image only run the prompt encoder and the
mask decoder.

A selection is built like clicks in the page: each point selects one object (its best of SAM's three masks by
predicted IoU) which is added to the mask, or removed from it for a subtracting point; a box selects the one object
it frames. Masks come back at the image's size through the processor's own `post_process_masks`.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from asuka.defaults import SEGMENT_MODEL_REPO
from asuka.methods.loading import ModelLoadError


# A point prompt: pixel column, pixel row, and whether its object is added (True) or removed (False).
Point = tuple[int, int, bool]
# A box prompt: two opposite corners `(x0, y0, x1, y1)` in pixels, in any order.
Box = tuple[int, int, int, int]

# Side of the square input of the tiny random model (`--tiny`), its masks a quarter of that.
TINY_IMAGE_SIZE = 128


def make_tiny_segmenter(seed: int = 0) -> tuple[Any, Any]:
    """A tiny random SAM 2 model (124 k parameters) and its processor, the same for the same `seed`; no download.

    The global random state is left as it was.
    """
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2ImageProcessor,
        Sam2Model,
        Sam2Processor,
        Sam2VisionConfig,
    )

    size = TINY_IMAGE_SIZE
    backbone = Sam2HieraDetConfig(
        image_size=[size, size],
        hidden_size=8,
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 2, 2],
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2],
    )
    config = Sam2Config(
        vision_config=Sam2VisionConfig(
            backbone_config=backbone,
            backbone_channel_list=[64, 32, 16, 8],
            backbone_feature_sizes=[[size // 4] * 2, [size // 8] * 2, [size // 16] * 2],
            fpn_hidden_size=32,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=size, patch_size=16),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam2Model(config).eval()
    image_processor = Sam2ImageProcessor(
        size={"height": size, "width": size}, mask_size={"height": size // 4, "width": size // 4}
    )
    return model, Sam2Processor(image_processor)


def image_key(image: Image.Image) -> str:
    """A fingerprint of `image`'s pixels: a selection and cached embeddings belong to the image of the same key."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    return f"{image.mode}:{image.width}x{image.height}:{digest.hexdigest()}"


def check_prompts(image: Image.Image | None, points: Sequence[Point] = (), box: Box | None = None) -> None:
    """Raise `ValueError` with a message for a person when there is no image, no prompt, or a prompt off the image."""
    if image is None:
        raise ValueError("No image is loaded yet: upload an image (or pick an example) first, then click on it.")
    if not points and box is None:
        raise ValueError("Nothing to select: give at least one point (x, y) or a box (x0, y0, x1, y1).")
    width, height = image.size
    for x, y, *_ in points:
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(
                f"The point ({x}, {y}) lies outside the image, which is {width}x{height} pixels: "
                f"click on the image (x from 0 to {width - 1}, y from 0 to {height - 1})."
            )
    if box is not None:
        x0, y0, x1, y1 = box
        if min(x0, x1) < 0 or min(y0, y1) < 0 or max(x0, x1) >= width or max(y0, y1) >= height:
            raise ValueError(f"The box {tuple(box)} reaches outside the image, which is {width}x{height} pixels.")
        if x0 == x1 or y0 == y1:
            raise ValueError(f"The box {tuple(box)} has no area: give two opposite corners.")


def parse_prompts(points: Any, box: Any) -> tuple[list[Point], Box | None]:
    """The points (`[[x, y], ...]` or `[[x, y, add], ...]`, `add` 1 or 0) and box (`[x0, y0, x1, y1]` or
    empty) of an API call, checked for shape; `ValueError` names what is accepted."""
    parsed = []
    for point in points or []:
        if not isinstance(point, (list, tuple)) or len(point) not in (2, 3):
            raise ValueError(
                f"A point must be [x, y] or [x, y, add] (add: 1 adds its object, 0 removes it), got {point!r}."
            )
        try:
            x, y = (int(round(float(v))) for v in point[:2])
        except (TypeError, ValueError):
            raise ValueError(f"A point's x and y must be numbers (pixels), got {point!r}.") from None
        parsed.append((x, y, bool(point[2]) if len(point) == 3 else True))
    if box is None or (isinstance(box, (list, tuple)) and len(box) == 0):
        return parsed, None
    try:
        corners = tuple(int(round(float(v))) for v in box)
    except (TypeError, ValueError):
        corners = ()
    if len(corners) != 4:
        raise ValueError(f"A box must be four numbers [x0, y0, x1, y1] (two opposite corners, pixels), got {box!r}.")
    return parsed, corners


class Segmenter:
    """SAM 2.1 behind a lock: loaded on first use (`tiny`: [`make_tiny_segmenter`]), on `device`."""

    def __init__(self, model: str | None = None, device: str = "cpu", tiny: bool = False):
        self.model_id = model or SEGMENT_MODEL_REPO
        self.device, self.tiny = device, tiny
        self._model = self._processor = None
        self._embedded: tuple[str, Any, Any] | None = None  # (image digest, embeddings, original sizes)
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _load(self) -> None:
        if self._model is not None:
            return
        if self.tiny:
            model, processor = make_tiny_segmenter()
        else:
            try:
                from transformers import Sam2Model, Sam2Processor

                model = Sam2Model.from_pretrained(self.model_id).eval()
                processor = Sam2Processor.from_pretrained(self.model_id)
            except Exception as error:  # Hub, cache and folder errors alike
                raise ModelLoadError(
                    f"Could not load the segmentation model {self.model_id!r}: {type(error).__name__}: {error}\n"
                    "How to fix it:\n"
                    f"  - download it once while online (`hf download {self.model_id}`), or unset HF_HUB_OFFLINE;\n"
                    "  - or pass another SAM 2 model (Hub id or folder): --segment-model ID_OR_PATH;\n"
                    "  - painting the mask and uploading one keep working without it."
                ) from error
        self._model, self._processor = model.to(self.device), processor

    def _embeddings(self, image: Image.Image) -> tuple[Any, Any]:
        """The image encoder's output for `image` (and its original size), reused while the image is the same."""
        key = image_key(image)
        if self._embedded is None or self._embedded[0] != key:
            inputs = self._processor(images=image, return_tensors="pt")
            embeddings = self._model.get_image_embeddings(inputs["pixel_values"].to(self.device))
            self._embedded = (key, embeddings, inputs["original_sizes"])
        return self._embedded[1], self._embedded[2]

    @torch.no_grad()
    def masks(self, image: Image.Image, points: Sequence[Point] = (), box: Box | None = None) -> np.ndarray:
        """One boolean `(H, W)` mask per point (the object under it), then one for the box: `(N, H, W)`."""
        check_prompts(image, points, box)
        image = image.convert("RGB")
        with self._lock:
            self._load()
            embeddings, original_sizes = self._embeddings(image)
            found = []
            if points:
                prompts = self._processor(
                    original_sizes=original_sizes,
                    input_points=[[[[x, y]] for x, y, _ in points]],
                    input_labels=[[[1] for _ in points]],
                    return_tensors="pt",
                )
                output = self._model(
                    image_embeddings=embeddings,
                    input_points=prompts["input_points"].to(self.device),
                    input_labels=prompts["input_labels"].to(self.device),
                    multimask_output=True,
                )
                found.append(self._best(output, original_sizes))
            if box is not None:
                x0, y0, x1, y1 = box
                prompts = self._processor(
                    original_sizes=original_sizes,
                    input_boxes=[[[min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]]],
                    return_tensors="pt",
                )
                output = self._model(
                    image_embeddings=embeddings,
                    input_boxes=prompts["input_boxes"].to(self.device),
                    multimask_output=False,
                )
                found.append(self._best(output, original_sizes))
        return np.concatenate(found)

    def _best(self, output: Any, original_sizes: Any) -> np.ndarray:
        """Each prompt's mask of highest predicted IoU, at the image's size."""
        masks = self._processor.post_process_masks(output.pred_masks.float().cpu(), original_sizes)[0]
        best = output.iou_scores[0].float().cpu().argmax(dim=-1)
        return masks[torch.arange(masks.shape[0]), best].numpy()

    def select(
        self,
        image: Image.Image,
        points: Sequence[Point] = (),
        box: Box | None = None,
        start: np.ndarray | None = None,
    ) -> np.ndarray:
        """The boolean `(H, W)` selection after the box (added) and then each point in turn, from `start`."""
        masks = self.masks(image, points, box)
        selection = np.zeros(masks.shape[1:], dtype=bool) if start is None else start.astype(bool).copy()
        if selection.shape != masks.shape[1:]:
            raise ValueError(f"The selection is {selection.shape[::-1]}, the image {image.size}: start again.")
        if box is not None:
            selection |= masks[-1]
        for (_, _, add), mask in zip(points, masks):
            selection = selection | mask if add else selection & ~mask
        return selection
