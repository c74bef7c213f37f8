# Copyright 2026 The asuka authors. Apache-2.0.
"""The model card of a light repo, and the paper's citation that every ASUKA model card carries.

Not shipped as remote code: the light repo's writer (`hub_export.save_light_pipeline`), the ASUKA-FLUX converter
and the training scripts' Hub push write cards with it.
"""

from collections.abc import Sequence

from .backbones import Licence, backbone_for_repo


PAPER = "https://arxiv.org/abs/2312.04831"
# The paper's title and venue, and its BibTeX, as the authors give them (github.com/Yikai-Wang/asuka-misato).
PAPER_TITLE = (
    "Towards Enhanced Image Inpainting: Mitigating Unwanted Object Insertion and Preserving Color Consistency"
)
PAPER_VENUE = "CVPR 2025"
PAPER_BIBTEX = """@inproceedings{wang2025towards,
  title={Towards Enhanced Image Inpainting: Mitigating Unwanted Object Insertion and Preserving Color Consistency.},
  author={Wang, Yikai and Cao, Chenjie and Yu, Junqiu and Fan, Ke and Xue, Xiangyang and Fu, Yanwei},
  booktitle={Proceedings of the IEEE/CVF conference on computer vision and pattern recognition},
  year={2025}
}"""
# The "Citation" section of every model card that names the paper.
PAPER_CITATION = f"## Citation\n\n```bibtex\n{PAPER_BIBTEX}\n```\n"


def light_model_card(
    repo_id: str,
    pipeline_class_name: str,
    title: str,
    description: str,
    backbone_repo: str,
    backbone_revision: str | None,
    provenance: str,
    torch_dtype: str = "float16",
    tags: Sequence[str] = (),
    licence: Licence | None = None,
) -> str:
    """README.md of a light repo: the backbone (and its licence), the paper, where the weights came from, usage.

    `provenance` is Markdown: the training arguments, or the release the weights were converted from.
    `torch_dtype` is the dtype the usage snippet loads in on a GPU (`float16` for SD, `bfloat16` for FLUX).
    `licence` is the backbone's where `backbone_repo` is not a registered backbone's repo (a local folder, a
    fine-tune); without either, the card points to the backbone repo's own licence.
    """
    spec = backbone_for_repo(backbone_repo)  # a registered backbone's licence, else the given one or the repo's own
    licence = spec.licence if spec is not None else licence
    licence_id, licence_name, licence_link = (
        (licence.id, licence.name, licence.link)
        if licence is not None
        else ("other", "the backbone's own licence", f"https://huggingface.co/{backbone_repo}")
    )
    pinned = f" at revision `{backbone_revision}`" if backbone_revision else ""
    yaml_tags = "\n".join(f"- {tag}" for tag in ("asuka", "image-inpainting", "diffusers:light", *tags))
    licence_yaml = f"license: {licence_id}\n" + (
        f"license_name: {licence_name.lower().replace(' ', '-').replace('.', '-')}\nlicense_link: {licence_link}\n"
        if licence_id == "other"
        else ""
    )
    return f"""---
library_name: diffusers
pipeline_tag: image-to-image
base_model: {backbone_repo}
{licence_yaml}tags:
{yaml_tags}
---

# {title}

{description}

This repo holds only what ASUKA ([*{PAPER_TITLE}*]({PAPER}), {PAPER_VENUE}) adds to a frozen backbone: the MAE,
the aligner(s) and the mask-conditioned decoder, their code, and a pointer to the backbone
[`{backbone_repo}`](https://huggingface.co/{backbone_repo}){pinned}. Its components (and nothing of its text
encoders) are fetched from there when you load this repo, so the backbone's licence, {licence_name}
({licence_link}), applies to its use: accept it on the backbone's page (and `hf auth login` if it is gated).

## Usage

```python
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import load_image

device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.{torch_dtype} if device == "cuda" else torch.float32
pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True, torch_dtype=dtype).to(device)
image = load_image("image.png")
mask = load_image("mask.png")  # white = repaint
pipe(image, mask).images[0].save("inpainted.png")
```

With the `asuka` package installed, `asuka.{pipeline_class_name}.from_pretrained("{repo_id}")` loads the same repo
with the package's classes.

## Provenance

{provenance}

{PAPER_CITATION}"""
