"""Rebuild the demo examples: public-domain / CC0 photos shipped with scikit-image, plus drawn masks.

    python examples/make_examples.py

Each mask is white where the app should repaint. Sources and licences are listed in LICENSE.
"""

from pathlib import Path

from PIL import Image, ImageDraw
from skimage import data


HERE = Path(__file__).resolve().parent


def _mask(size: tuple[int, int], draw_fn) -> Image.Image:
    mask = Image.new("L", size, 0)
    draw_fn(ImageDraw.Draw(mask))
    return mask


EXAMPLES = {
    # name: (loader, mask drawing)
    "astronaut": (data.astronaut, lambda d: d.ellipse((125, 335, 225, 430), fill=255)),  # the mission patch
    "chelsea": (
        data.chelsea,
        lambda d: d.line([(60, 250), (140, 200), (230, 230), (300, 180)], fill=255, width=28),
    ),  # a stroke across the whiskers
    "coffee": (data.coffee, lambda d: d.rectangle((330, 210, 430, 330), fill=255)),  # the spoon
    "rocket": (data.rocket, lambda d: d.rectangle((540, 0, 615, 300), fill=255)),  # the right tower
}


def main() -> None:
    for name, (load, draw) in EXAMPLES.items():
        image = Image.fromarray(load()).convert("RGB")
        image.save(HERE / f"{name}.jpg", quality=90)
        _mask(image.size, draw).save(HERE / f"{name}_mask.png")


if __name__ == "__main__":
    main()
