"""Click to select without a browser: the selection equals transformers' own SAM 2 pipeline (processor, model,
`post_process_masks`) on the same tiny random model; bad clicks get a readable message."""

import numpy as np
import pytest
import torch
from PIL import Image

from asuka.methods import ModelLoadError
from asuka.methods.segment import Segmenter, check_prompts, make_tiny_segmenter, parse_prompts
from tests.support.app_launcher import ROOT


W, H = 77, 53  # not square and not the model's input size: the mask must come back at the image's size


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(ROOT / "examples" / "chelsea.jpg").convert("RGB").resize((W, H))


@pytest.fixture(scope="module")
def reference():
    """transformers' documented path on a fresh copy of the tiny model: processor -> model -> post_process_masks."""
    model, processor = make_tiny_segmenter()

    def masks(image, points=None, box=None):
        inputs = processor(
            images=image,
            input_points=None if points is None else [[[[x, y]] for x, y in points]],
            input_labels=None if points is None else [[[1] for _ in points]],
            input_boxes=None if box is None else [[list(box)]],
            return_tensors="pt",
        )
        with torch.no_grad():
            output = model(**inputs, multimask_output=points is not None)
        masks = processor.post_process_masks(output.pred_masks, inputs["original_sizes"])[0]  # (objects, 3, H, W)
        best = output.iou_scores[0].argmax(dim=-1)  # SAM's choice among its masks: the highest predicted IoU
        return np.stack([masks[i, best[i]].numpy() for i in range(masks.shape[0])])

    return masks


def test_a_click_selects_what_transformers_post_processing_gives(photo, reference):
    segmenter = Segmenter(tiny=True)
    assert not segmenter.loaded  # loaded lazily, at the first click
    selection = segmenter.select(photo, [(20, 30, True)])
    assert segmenter.loaded
    expected = reference(photo, points=[(20, 30)])[0]
    assert selection.shape == (H, W) and selection.dtype == bool
    assert np.array_equal(selection, expected)
    assert 0 < selection.sum() < selection.size  # a partial mask: the test can tell a wrong wiring


def test_clicks_add_and_subtract_objects_in_order(photo, reference):
    segmenter = Segmenter(tiny=True)
    first, second, third = reference(photo, points=[(20, 30), (60, 10), (40, 40)])
    assert not np.array_equal(first, second)  # different points, different objects
    selection = segmenter.select(photo, [(20, 30, True)])
    selection = segmenter.select(photo, [(60, 10, True)], start=selection)  # a second click on the same image
    assert np.array_equal(selection, first | second)
    selection = segmenter.select(photo, [(40, 40, False)], start=selection)  # subtract
    assert np.array_equal(selection, (first | second) & ~third)
    # the same clicks in one call (the /segment endpoint's form)
    together = segmenter.select(photo, [(20, 30, True), (60, 10, True), (40, 40, False)])
    assert np.array_equal(together, selection)


def test_a_box_selects_what_transformers_gives_for_that_box(photo, reference):
    segmenter = Segmenter(tiny=True)
    expected = reference(photo, box=(10, 5, 50, 40))[0]
    assert np.array_equal(segmenter.select(photo, box=(50, 40, 10, 5)), expected)  # corners in any order


def test_a_new_image_gets_its_own_embeddings(photo, reference):
    segmenter = Segmenter(tiny=True)
    segmenter.select(photo, [(20, 30, True)])
    other = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert np.array_equal(segmenter.select(other, [(20, 30, True)]), reference(other, points=[(20, 30)])[0])


def test_bad_clicks_get_a_readable_message(photo):
    segmenter = Segmenter(tiny=True)
    with pytest.raises(ValueError, match="No image is loaded yet: upload an image"):
        segmenter.select(None, [(1, 1, True)])
    with pytest.raises(ValueError, match=r"The point \(77, 10\) lies outside the image, which is 77x53 pixels"):
        segmenter.select(photo, [(77, 10, True)])
    with pytest.raises(ValueError, match="outside the image"):
        segmenter.select(photo, [(-1, 10, True)])
    with pytest.raises(ValueError, match="reaches outside the image"):
        check_prompts(photo, box=(0, 0, 80, 10))
    with pytest.raises(ValueError, match="no area"):
        check_prompts(photo, box=(5, 5, 5, 20))
    with pytest.raises(ValueError, match="Nothing to select"):
        check_prompts(photo)
    assert not segmenter.loaded  # nothing was loaded for a bad click


def test_api_prompts_are_parsed_or_refused_with_what_is_accepted():
    assert parse_prompts([[1, 2], [3.4, 5, 0]], []) == ([(1, 2, True), (3, 5, False)], None)
    assert parse_prompts(None, [1, 2, 3, 4]) == ([], (1, 2, 3, 4))
    with pytest.raises(ValueError, match=r"\[x, y\] or \[x, y, add\]"):
        parse_prompts([[1, 2, 3, 4]], None)
    with pytest.raises(ValueError, match="must be numbers"):
        parse_prompts([["a", 2]], None)
    with pytest.raises(ValueError, match=r"four numbers \[x0, y0, x1, y1\]"):
        parse_prompts([], [1, 2, 3])


def test_a_model_that_cannot_load_says_how_to_fix_it(photo, tmp_path):
    segmenter = Segmenter(model=str(tmp_path / "no-such-sam"))
    with pytest.raises(ModelLoadError, match="Could not load the segmentation model") as error:
        segmenter.select(photo, [(1, 1, True)])
    assert "--segment-model" in str(error.value) and "hf download" in str(error.value)
