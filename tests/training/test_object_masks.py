"""training/prepare_object_masks.py: COCO instance annotations -> binary object-mask PNGs."""

import json

import numpy as np
import prepare_object_masks
from PIL import Image

from asuka.masks import MaskGenerator, mask_ratio


def test_extracts_polygons_and_rle_skips_crowds_and_tiny_objects(tmp_path):
    height, width = 40, 50
    # uncompressed RLE (column-major) of a 10x6 box at rows 5..14, cols 30..35
    box = np.zeros((height, width), dtype=bool)
    box[5:15, 30:36] = True
    flat = box.T.ravel()
    counts, value, run = [], False, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    coco = {
        "images": [{"id": 1, "height": height, "width": width}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[2, 2, 22, 2, 22, 32, 2, 32]]},
            {
                "id": 11,
                "image_id": 1,
                "category_id": 2,
                "iscrowd": 0,
                "segmentation": {"size": [height, width], "counts": counts},
            },
            {
                "id": 12,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 1,
                "segmentation": {"size": [height, width], "counts": "abc"},
            },
            {"id": 13, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[0, 0, 2, 0, 2, 2]]},
        ],
    }
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps(coco))
    out = tmp_path / "masks"
    written = prepare_object_masks.main(
        ["--annotations", str(annotations), "--output_dir", str(out), "--min_size", "5"]
    )
    assert sorted(p.name for p in written) == ["1_10.png", "1_11.png"]
    polygon = np.asarray(Image.open(out / "1_10.png")) > 0
    assert polygon.shape == (31, 21) and polygon.all()  # cropped to its bounding box, filled
    rle = np.asarray(Image.open(out / "1_11.png")) > 0
    assert rle.shape == (10, 6) and rle.all()
    only_dogs = prepare_object_masks.main(
        [
            "--annotations",
            str(annotations),
            "--output_dir",
            str(tmp_path / "dogs"),
            "--min_size",
            "5",
            "--categories",
            "dog",
        ]
    )
    assert [p.name for p in only_dogs] == ["1_11.png"]
    # the mask generator reads the folder
    generator = MaskGenerator(
        32, object_mask_dir=out, family_probs=(1, 0, 0), object_irregular_prob=0.0, hole_range=(0.1, 0.3), seed=0
    )
    sample = generator.sample()
    assert sample.family == "object" and 0.1 <= mask_ratio(sample.mask) <= 0.3
