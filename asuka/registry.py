"""Registry of inpainting methods shared by the app, the CLI and the evaluation runner.

A method is a :class:`MethodSpec`: how to load its pipeline (real weights or tiny random ones) and
how to run one :class:`InpaintRequest`. User interfaces only ever talk to this module, so a new
pipeline appears everywhere once it is registered:

* pipelines of this package register from a provider module listed in :data:`PROVIDER_MODULES`
  (imported lazily on first lookup; a provider that is not there yet is skipped);
* other packages can expose a provider module through the ``asuka.methods`` entry-point group.

A provider module simply calls :func:`register_method` at import time.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from asuka.imageio import composite_unmasked


logger = logging.getLogger(__name__)

#: Modules that register built-in methods when imported (the SD entries live in this file).
PROVIDER_MODULES: tuple[str, ...] = ("asuka.registry_flux", "asuka.registry_strdiffusion")

#: Entry-point group through which other packages add methods.
ENTRY_POINT_GROUP = "asuka.methods"

#: Hub id of the plain SD-1.5 inpainting backbone (the community mirror of runwayml's release).
SD_INPAINT_REPO = "stable-diffusion-v1-5/stable-diffusion-inpainting"

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(steps_done, total_steps)`` after each denoising step."""


@dataclass
class InpaintRequest:
    """One inpainting job: an RGB image and an ``L`` mask of the same size (255 = hole)."""

    image: Image.Image
    mask: Image.Image
    steps: int | None = None
    seed: int = 0
    condition_weight: float | None = None
    guidance_scale: float | None = None
    keep_unmasked: bool = True


@dataclass
class InpaintResult:
    """The inpainted image (input size) and, where the method has one, its prior's reconstruction."""

    image: Image.Image
    reconstruction: Image.Image | None = None


@dataclass
class MethodSpec:
    """How to load and run one inpainting method.

    ``load(model_id_or_path, device, dtype, tiny)`` returns a pipeline; ``run(pipeline, request,
    progress)`` returns an :class:`InpaintResult`. ``backbone`` names the method that runs "the
    backbone alone" for a side-by-side comparison.
    """

    name: str
    label: str
    default_model: str | None
    load: Callable[[str | None, str, torch.dtype, bool], Any]
    run: Callable[[Any, InpaintRequest, ProgressCallback | None], InpaintResult]
    uses_guidance: bool = False
    uses_condition_weight: bool = False
    default_steps: int = 50
    default_guidance: float = 1.0
    backbone: str | None = None
    description: str = ""


class ModelLoadError(RuntimeError):
    """A method's weights could not be loaded; the message says how to fix it."""


_METHODS: dict[str, MethodSpec] = {}
_providers_loaded = False
_lock = threading.RLock()


def register_method(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add ``spec`` to the registry; re-registering a name needs ``replace=True``."""
    with _lock:
        if spec.name in _METHODS and not replace and _METHODS[spec.name] is not spec:
            raise ValueError(f"A method named {spec.name!r} is already registered; pass replace=True to override it.")
        _METHODS[spec.name] = spec
    return spec


def _load_providers() -> None:
    """Import the provider modules once; missing providers are skipped, broken ones logged."""
    global _providers_loaded
    with _lock:
        if _providers_loaded:
            return
        _providers_loaded = True
        for module in PROVIDER_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as error:
                if error.name != module:
                    logger.warning("Method provider %s could not be imported: %s", module, error)
            except Exception as error:  # a broken provider must not take the other methods down
                logger.warning("Method provider %s failed: %s", module, error)
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                entry_point.load()
            except Exception as error:
                logger.warning("Method entry point %s failed: %s", entry_point.name, error)


def list_methods() -> list[MethodSpec]:
    """All registered methods, built-in ones first, in registration order."""
    _load_providers()
    with _lock:
        return list(_METHODS.values())


def get_method(name: str) -> MethodSpec:
    """The method registered as ``name``; ``ValueError`` lists the known names otherwise."""
    _load_providers()
    with _lock:
        if name not in _METHODS:
            known = ", ".join(sorted(_METHODS)) or "(none)"
            raise ValueError(f"Unknown method {name!r}; known methods: {known}.")
        return _METHODS[name]


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float16"``/``"fp16"``/``"bfloat16"``/``"bf16"``/``"float32"``/``"fp32"`` to a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    table = {
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float32": torch.float32,
        "fp32": torch.float32,
        "float": torch.float32,
    }
    if name not in table:
        raise ValueError(f"Unknown dtype {name!r}; accepted: {', '.join(table)}.")
    return table[name]


def load_guidance(spec: MethodSpec, model: str | None, reason: str) -> str:
    """The message shown when ``spec``'s weights cannot be loaded: what failed and how to fix it."""
    target = model or spec.default_model or "(no default checkpoint)"
    lines = [
        f"Could not load the {spec.label} model {target!r}: {reason}",
        "How to fix it:",
        "  - log in to the Hugging Face Hub: `hf auth login` (or set HF_TOKEN);",
        "  - if the repository is gated, accept its licence on its Hub page with the same account;",
        "  - or pass a local folder: --model /path/to/pipeline_folder;",
        "  - or try the interface with random weights: --tiny.",
    ]
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        lines.insert(1, "HF_HUB_OFFLINE is set, so only files already in the local cache can be used.")
    return "\n".join(lines)


def load_pipeline(
    name: str,
    model: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    tiny: bool = False,
) -> Any:
    """Load method ``name``; any failure becomes :class:`ModelLoadError` with the fix-it guidance."""
    spec = get_method(name)
    dtype = parse_dtype(dtype)
    if not tiny and model is None and spec.default_model is None:
        raise ModelLoadError(load_guidance(spec, None, f"{spec.label} has no default checkpoint on the Hub."))
    try:
        return spec.load(model if model is not None else spec.default_model, device, dtype, tiny)
    except ModelLoadError:
        raise
    except Exception as error:  # OSError, Hub errors, ImportError, bad folders: all reported the same way
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        raise ModelLoadError(load_guidance(spec, model, reason)) from error


class PipelineCache:
    """Loads each method's pipeline on first use and keeps it (thread-safe)."""

    def __init__(
        self,
        device: str = "cpu",
        dtype: torch.dtype | str = torch.float32,
        tiny: bool = False,
        models: dict[str, str] | None = None,
    ):
        self.device = device
        self.dtype = parse_dtype(dtype)
        self.tiny = tiny
        self.models = dict(models or {})
        self._pipelines: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Any:
        """The pipeline of method ``name``, loading it now if needed (may raise ModelLoadError)."""
        with self._lock:
            if name not in self._pipelines:
                self._pipelines[name] = load_pipeline(name, self.models.get(name), self.device, self.dtype, self.tiny)
            return self._pipelines[name]

    def loaded(self) -> list[str]:
        """Names of the methods loaded so far."""
        return list(self._pipelines)


def run_method(
    name: str, pipeline: Any, request: InpaintRequest, progress: ProgressCallback | None = None
) -> InpaintResult:
    """Run ``request`` through ``pipeline`` with method ``name``, validating the request first."""
    if request.image.size != request.mask.size:
        raise ValueError(f"Image size {request.image.size} and mask size {request.mask.size} differ; they must match.")
    spec = get_method(name)
    return spec.run(pipeline, _with_default_steps(spec, request), progress)


def _with_default_steps(spec: MethodSpec, request: InpaintRequest) -> InpaintRequest:
    if request.steps is None:
        return dataclasses.replace(request, steps=spec.default_steps)
    if request.steps < 1:
        raise ValueError(f"steps must be a positive integer, got {request.steps}.")
    return request


def step_callback(progress: ProgressCallback | None, total: int) -> Callable | None:
    """A diffusers ``callback_on_step_end`` that reports ``(step + 1, total)`` to ``progress``."""
    if progress is None:
        return None

    def callback(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        progress(min(step + 1, total), total)  # some schedulers (PNDM) take one step more than asked
        return callback_kwargs

    return callback


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


def backbone_result(output: Any, request: InpaintRequest) -> InpaintResult:
    """A plain backbone's working-size output scaled back to the input size.

    With ``keep_unmasked`` only the hole is pasted into the input, as the ASUKA pipelines do themselves.
    """
    result = output.images[0].resize(request.image.size, Image.Resampling.BICUBIC)
    if request.keep_unmasked:
        result = composite_unmasked(result, request.image, request.mask)
    return InpaintResult(image=result)


# --- built-in SD-1.5 entries ---------------------------------------------------------------------


def _load_asuka_sd(model: str | None, device: str, dtype: torch.dtype, tiny: bool) -> Any:
    if tiny:
        from asuka.testing import make_tiny_pipeline

        pipeline = make_tiny_pipeline("sd").to(device)
    else:
        from asuka import AsukaPipeline

        pipeline = AsukaPipeline.from_pretrained(model, torch_dtype=dtype).to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _run_asuka_sd(pipeline: Any, request: InpaintRequest, progress: ProgressCallback | None) -> InpaintResult:
    # Only aligners trained with a null embedding have a condition weight; for others it is ignored.
    has_null = pipeline.aligner.config.null_embedding is not None
    output = pipeline(
        image=request.image,
        mask_image=request.mask,
        num_inference_steps=request.steps,
        generator=_generator(request.seed),
        condition_weight=request.condition_weight if has_null else None,
        keep_unmasked=request.keep_unmasked,
        callback_on_step_end=step_callback(progress, request.steps),
        callback_on_step_end_tensor_inputs=[],  # progress needs only the step index
    )
    reconstruction = pipeline.mae_reconstruction(request.image, request.mask)[0]
    return InpaintResult(image=output.images[0], reconstruction=reconstruction)


def _load_sd(model: str | None, device: str, dtype: torch.dtype, tiny: bool) -> Any:
    if tiny:
        from asuka.testing import make_tiny_pipeline

        pipeline = make_tiny_pipeline("sd-backbone").to(device)
    else:
        from diffusers import StableDiffusionInpaintPipeline

        pipeline = StableDiffusionInpaintPipeline.from_pretrained(
            model, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
        ).to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _run_sd(pipeline: Any, request: InpaintRequest, progress: ProgressCallback | None) -> InpaintResult:
    """The plain SD-inpainting backbone with an empty prompt (the paper's "SD" baseline).

    It runs on the whole image scaled so the long side is the UNet's native resolution; the result is
    scaled back and, with ``keep_unmasked``, only the hole is pasted into the input.
    """
    width, height = request.image.size
    native = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    scale = native / max(width, height)
    work_w, work_h = (max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8))
    if pipeline.text_encoder is not None:
        text = {"prompt": ""}
    else:  # the tiny backbone has no text encoder: an all-zero "empty prompt" stands in
        text = {
            "prompt_embeds": torch.zeros(
                1, 77, pipeline.unet.config.cross_attention_dim, device=pipeline.device, dtype=pipeline.unet.dtype
            )
        }
    output = pipeline(
        **text,
        image=request.image,
        mask_image=request.mask,
        height=work_h,
        width=work_w,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale if request.guidance_scale is not None else 1.0,
        generator=_generator(request.seed),
        callback_on_step_end=step_callback(progress, request.steps),
        callback_on_step_end_tensor_inputs=[],  # progress needs only the step index
    )
    return backbone_result(output, request)


#: No public ASUKA-SD checkpoint exists yet; pass --model with a folder written by save_pretrained.
ASUKA_SD_REPO: str | None = None

register_method(
    MethodSpec(
        name="asuka-sd",
        label="ASUKA-SD",
        default_model=ASUKA_SD_REPO,
        load=_load_asuka_sd,
        run=_run_asuka_sd,
        uses_guidance=False,
        uses_condition_weight=True,
        default_steps=50,
        backbone="sd",
        description="ASUKA on SD-1.5-inpainting: MAE prior + aligner instead of text, mask-conditioned decoder.",
    )
)
register_method(
    MethodSpec(
        name="sd",
        label="SD-1.5 inpainting (backbone)",
        default_model=SD_INPAINT_REPO,
        load=_load_sd,
        run=_run_sd,
        uses_guidance=False,
        uses_condition_weight=False,
        default_steps=50,
        description="The frozen SD-1.5 inpainting backbone alone, with an empty prompt.",
    )
)
