"""The project's defaults in one place: Hub ids of the backbones and the release, and the device and dtype.

Imported by the methods, the CLI, the app, the evaluation runner and the converters; it imports only torch.
"""

import torch


# Hub id of the SD-1.5 inpainting backbone (the community mirror of runwayml's release).
SD_INPAINT_REPO = "stable-diffusion-v1-5/stable-diffusion-inpainting"
# Hub id of the FLUX.1-Fill backbone (gated: accept its licence and log in).
FLUX_FILL_REPO = "black-forest-labs/FLUX.1-Fill-dev"
# Hub id of the authors' ASUKA-FLUX release (MAE, aligners and decoder for FLUX.1-Fill).
ASUKA_FLUX_RELEASE_REPO = "yikaiwang/ASUKA-FLUX.1-Fill"
# Hub id of the demo's click-to-select model (SAM 2.1, its smallest size; see asuka/methods/segment.py).
SEGMENT_MODEL_REPO = "facebook/sam2.1-hiera-tiny"

_DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """A dtype name (`"fp16"`, `"bfloat16"`, `"float32"`, ...) or a torch dtype to a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"Unknown dtype {name!r}; accepted: {', '.join(_DTYPES)}.") from None


def default_device() -> str:
    """`"cuda"` when a GPU is visible, else `"cpu"`."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bfloat16 on a GPU (the dtype of the ASUKA-FLUX release, and safe for SD's VAE), float32 on the CPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def resolve_device_dtype(
    device: str | torch.device | None, dtype: str | torch.dtype | None
) -> tuple[str, torch.dtype]:
    """The device and dtype to run on, as the app, the CLI and the evaluation runner choose them: None or
    `"auto"` is the default ([`default_device`], then [`default_dtype`] for that device); a dtype name
    is parsed (`ValueError` for an unknown one)."""
    device = default_device() if device is None or device == "auto" else str(device)
    dtype = default_dtype(device) if dtype is None or dtype == "auto" else parse_dtype(dtype)
    return device, dtype
