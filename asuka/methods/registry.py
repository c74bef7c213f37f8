"""The method registry shared by the app, the CLI and the evaluation runner.

A method is a :class:`MethodSpec`: how to load its pipeline from real weights, which tiny random pipeline stands in
for it (``--tiny``), how to run one :class:`InpaintRequest`, and what it needs (a GPU, gated or missing weights).
User interfaces only ever talk to this package, so a new pipeline appears everywhere once it is registered:

* pipelines of this package register from a provider module listed in :data:`PROVIDER_MODULES`
  (imported lazily on first lookup; a provider that is not there yet is skipped);
* other packages can expose a provider module through the ``asuka.methods`` entry-point group.

A provider module simply calls :func:`register_method` at import time.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from asuka.defaults import parse_dtype
from asuka.methods.speedups import Speedups, apply_speedups, use_step_cache


logger = logging.getLogger(__name__)

#: Modules that register the built-in methods when imported, in the order the methods are listed.
PROVIDER_MODULES: tuple[str, ...] = ("asuka.methods.sd", "asuka.methods.flux", "asuka.methods.strdiffusion")

#: Entry-point group through which other packages add methods.
ENTRY_POINT_GROUP = "asuka.methods"

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(steps_done, total_steps)`` after each denoising step."""


@dataclass
class InpaintRequest:
    """One inpainting job: an RGB image and an ``L`` mask of the same size (255 = hole).

    ``reconstruction`` asks methods with a prior for its reconstruction too (an extra prior pass; only the app shows
    it). ``mae_input_preprocessing`` is the MAE's input order for methods with one (``None``: the MAE's config); the
    run and its reconstruction use the same. ``step_cache`` is a diffusers step cache as ``NAME[:VALUE]`` (e.g.
    ``first-block:0.12``; see :mod:`asuka.methods.speedups`) for the ASUKA methods.
    """

    image: Image.Image
    mask: Image.Image
    steps: int | None = None
    seed: int = 0
    condition_weight: float | None = None
    guidance_scale: float | None = None
    keep_unmasked: bool = True
    reconstruction: bool = False
    mae_input_preprocessing: str | None = None
    step_cache: str | None = None

    @classmethod
    def from_settings(cls, image: Image.Image, mask: Image.Image, settings: Any) -> InpaintRequest:
        """A request for `image` and `mask` with `settings`' steps, seed, condition_weight, guidance_scale and
        cache, where it has one (the CLI's parsed arguments, an evaluation run's settings), so every interface
        passes the same fields."""
        return cls(
            image=image,
            mask=mask,
            steps=settings.steps,
            seed=settings.seed,
            condition_weight=settings.condition_weight,
            guidance_scale=settings.guidance_scale,
            step_cache=getattr(settings, "cache", None),
        )


@dataclass
class InpaintResult:
    """The inpainted image (input size) and, when the request asked for it and the method has a prior, the prior's
    reconstruction."""

    image: Image.Image
    reconstruction: Image.Image | None = None


@dataclass
class MethodSpec:
    """How to load and run one inpainting method, and what it needs.

    ``load(model_id_or_path, device, dtype)`` returns a pipeline from real weights; ``tiny_kind`` names the
    ``asuka.testing.make_tiny_pipeline`` kind that stands in for it with random weights (None: no tiny version).
    ``run(pipeline, request, progress)`` returns an :class:`InpaintResult`. ``backbone`` names the method that runs
    "the backbone alone" for a side-by-side comparison.

    What the method needs, for the first-run guidance and the load-error advice: ``needs_gpu`` (too large for a
    CPU), ``gated_repo`` (a Hub repository whose licence must be accepted), ``weights_hint`` (how to get weights
    when there is no public checkpoint, i.e. ``default_model`` is None) and ``requirements`` (one line for users).
    ``paper`` cites the method's paper in one Markdown line (the demo shows it under the model choice).
    """

    name: str
    label: str
    default_model: str | None
    load: Callable[[str, str, torch.dtype], Any]
    run: Callable[[Any, InpaintRequest, ProgressCallback | None], InpaintResult]
    tiny_kind: str | None = None
    uses_guidance: bool = False
    uses_condition_weight: bool = False
    default_steps: int = 50
    default_guidance: float = 1.0
    backbone: str | None = None
    description: str = ""
    needs_gpu: bool = False
    gated_repo: str | None = None
    weights_hint: str = ""
    requirements: str = ""
    paper: str = ""

    @property
    def public_weights(self) -> bool:
        """Whether the method has a default checkpoint that can be downloaded."""
        return self.default_model is not None


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


def unregister_method(name: str) -> MethodSpec | None:
    """Remove method ``name`` (if registered) and return its spec."""
    with _lock:
        return _METHODS.pop(name, None)


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


# --- first run: the default method and what each method needs ------------------------------------


def default_method(cuda_available: bool | None = None) -> str | None:
    """The method to use when none is named: with a GPU, the first method (not a backbone baseline) with public
    weights (ASUKA-FLUX); without one, None (show :func:`no_default_guidance`)."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        return None
    specs = list_methods()
    baselines = {spec.backbone for spec in specs}
    return next((spec.name for spec in specs if spec.name not in baselines and spec.public_weights), None)


class NoDefaultMethod(RuntimeError):
    """No method can run here without being asked for (no GPU, no --tiny); the message says what to try."""


def choose_method(requested: str | None, tiny: bool, cuda_available: bool | None = None) -> str:
    """The method an interface runs: the one asked for (checked: ``ValueError`` for an unknown name); with ``tiny``
    the first registered (tiny weights run anywhere); else :func:`default_method` for ``cuda_available`` (the
    device the interface will use; None: whether this machine has a GPU). Without one, :class:`NoDefaultMethod`
    carries :func:`no_default_guidance`."""
    if requested:
        return get_method(requested).name
    if tiny:
        return list_methods()[0].name
    name = default_method(cuda_available)
    if name is None:
        raise NoDefaultMethod(no_default_guidance())
    return name


def method_needs(spec: MethodSpec) -> str:
    """One line saying what ``spec`` needs to run with real weights."""
    parts = []
    if not spec.public_weights:
        parts.append("no public checkpoint: " + (spec.weights_hint or "pass a folder or Hub repo with --model"))
    if spec.gated_repo:
        parts.append(f"gated weights: accept the licence on https://huggingface.co/{spec.gated_repo}, `hf auth login`")
    if spec.requirements:
        parts.append(spec.requirements)
    elif spec.needs_gpu:
        parts.append("a CUDA GPU")
    return "; ".join(parts) or "nothing special"


def no_default_guidance() -> str:
    """What to tell a user who named no method on a machine without a GPU: try --tiny, or pick a method."""
    specs = list_methods()
    width = max((len(spec.name) for spec in specs), default=0)
    lines = [
        "No CUDA GPU was found, so there is no default method (the methods with public weights need a GPU).",
        "Try the interface with tiny random weights: add --tiny (results are noise, not inpainting).",
        "Or choose a method with --method NAME (and its weights with --model); what each needs:",
    ]
    lines += [f"  {spec.name:<{width}}  {spec.label}: {method_needs(spec)}" for spec in specs]
    return "\n".join(lines)


# --- loading ---------------------------------------------------------------------------------------


def _causes(error: BaseException | None) -> list[BaseException]:
    """``error`` and the exceptions it was raised from (diffusers wraps the Hub's errors in OSError)."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load_error_message(
    spec: MethodSpec, model: str | None, error: BaseException | None = None, device: str = "cpu"
) -> str:
    """Why ``spec``'s weights could not be loaded and how to fix it, with advice that fits the cause.

    Causes, in order: no public checkpoint (how to get one); a gated repository (accept its licence, log in);
    offline or not in the local cache; a repository that does not exist; no GPU for a method that needs one;
    anything else (every fix). With HF_HUB_OFFLINE set, the message says so.
    """
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    target = model or spec.default_model
    if error is None:
        reason = f"{spec.label} has no public checkpoint (no default checkpoint on the Hub)."
        fixes = [spec.weights_hint or "pass a local folder or Hub repo of its weights: --model PATH_OR_ID"]
        return _message(spec, target, reason, fixes)
    text = str(error).strip()
    reason = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
    causes = _causes(error)
    if any(isinstance(cause, GatedRepoError) for cause in causes):
        repo = spec.gated_repo or target
        fixes = [
            f"accept the licence on https://huggingface.co/{repo} with your Hugging Face account;",
            "then log in on this machine: `hf auth login` (or set HF_TOKEN);",
            "or try the interface with random weights: --tiny.",
        ]
    elif any(isinstance(cause, (OfflineModeIsEnabled, LocalEntryNotFoundError)) for cause in causes):
        fixes = [
            "the files are not in the local Hugging Face cache and the Hub cannot be reached;",
            f"download them once while online (`hf download {target}`) or unset HF_HUB_OFFLINE;",
            "the Hub could not be asked whether the repository is gated or private: if it is, accept its licence "
            "on its Hub page and log in (`hf auth login`) before downloading;",
            "or pass a local folder: --model /path/to/pipeline_folder;",
            "or try the interface with random weights: --tiny.",
        ]
    elif any(isinstance(cause, RepositoryNotFoundError) for cause in causes):
        fixes = [
            f"check the repository id {target!r} (a private repository also needs `hf auth login`);",
            "or pass a local folder: --model /path/to/pipeline_folder;",
            "or try the interface with random weights: --tiny.",
        ]
    elif spec.needs_gpu and torch.device(device).type != "cuda":
        fixes = [
            f"{spec.label} needs a CUDA GPU ({spec.requirements or 'see its model page'}); it ran on {device!r};",
            "run it on a machine with a GPU (--device cuda), or try the interface with random weights: --tiny.",
        ]
    else:
        fixes = [
            "log in to the Hugging Face Hub: `hf auth login` (or set HF_TOKEN);",
            "if the repository is gated, accept its licence on its Hub page with the same account;",
            "or pass a local folder: --model /path/to/pipeline_folder;",
            "or try the interface with random weights: --tiny.",
        ]
    if _hub_offline():
        fixes.insert(0, "HF_HUB_OFFLINE is set, so only files already in the local cache can be used;")
    return _message(spec, target, reason, fixes)


def _message(spec: MethodSpec, target: str | None, reason: str, fixes: list[str]) -> str:
    what = f"{target!r}" if target else "(no checkpoint given)"
    return "\n".join(
        [f"Could not load the {spec.label} model {what}: {reason}", "How to fix it:"] + [f"  - {fix}" for fix in fixes]
    )


def supports_memory(name: str) -> bool:
    """Whether method ``name``'s loader takes a memory configuration (``--quantize`` / ``--offload``)."""
    return "memory" in inspect.signature(get_method(name).load).parameters


def ready_pipeline(pipeline: Any, device: str) -> Any:
    """``pipeline`` on ``device`` with its progress bar off (the interfaces report progress themselves)."""
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def load_pipeline(
    name: str,
    model: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    tiny: bool = False,
    memory: Any = None,
) -> Any:
    """Load method ``name`` (with ``tiny``: its tiny random stand-in, float32); a failure becomes
    :class:`ModelLoadError` with advice that fits the cause. ``memory`` (an ``asuka.methods.memory.Configuration``:
    weight format and offloading) goes to a loader that takes it (``supports_memory``); the tiny stand-ins ignore
    it."""
    spec = get_method(name)
    dtype = parse_dtype(dtype)
    if tiny:
        if spec.tiny_kind is None:
            raise ModelLoadError(f"{spec.label} has no tiny version; choose another method or drop --tiny.")
        from asuka.testing import make_tiny_pipeline

        return ready_pipeline(make_tiny_pipeline(spec.tiny_kind), device)
    model = model if model is not None else spec.default_model
    if model is None:
        raise ModelLoadError(load_error_message(spec, None, device=device))
    try:
        return spec.load(model, device, dtype, **({} if memory is None else {"memory": memory}))
    except ModelLoadError:
        raise
    except Exception as error:  # OSError, Hub errors, ImportError, bad folders: all reported with advice
        raise ModelLoadError(load_error_message(spec, model, error, device)) from error


class PipelineCache:
    """Loads each method's pipeline on first use, with `speedups` (LoRAs, compilation) applied, and keeps it
    (thread-safe)."""

    def __init__(
        self,
        device: str = "cpu",
        dtype: torch.dtype | str = torch.float32,
        tiny: bool = False,
        models: dict[str, str] | None = None,
        memory: Any = None,
        speedups: Speedups | None = None,
    ):
        self.device = device
        self.dtype = parse_dtype(dtype)
        self.tiny = tiny
        self.models = dict(models or {})
        self.memory = memory  # for the methods that take it (`supports_memory`)
        self.speedups = speedups or Speedups()
        self._pipelines: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Any:
        """The pipeline of method ``name``, loading it now if needed (may raise ModelLoadError)."""
        with self._lock:
            if name not in self._pipelines:
                memory = self.memory if supports_memory(name) else None
                pipeline = load_pipeline(
                    name, self.models.get(name), self.device, self.dtype, self.tiny, memory=memory
                )
                self._pipelines[name] = apply_speedups(pipeline, self.speedups)
            return self._pipelines[name]

    def loaded(self) -> list[str]:
        """Names of the methods loaded so far."""
        return list(self._pipelines)


# --- running ---------------------------------------------------------------------------------------


def run_method(
    name: str, pipeline: Any, request: InpaintRequest, progress: ProgressCallback | None = None
) -> InpaintResult:
    """Run ``request`` through ``pipeline`` with method ``name``, validating the request first.

    The method's run function always gets a positive ``request.steps`` and a ``request.guidance_scale`` (the
    spec's defaults when none is given); the pipeline runs with ``request.step_cache`` (none when it is None).
    """
    if request.image.size != request.mask.size:
        raise ValueError(f"Image size {request.image.size} and mask size {request.mask.size} differ; they must match.")
    spec = get_method(name)
    if request.steps is None:
        request = dataclasses.replace(request, steps=spec.default_steps)
    elif request.steps < 1:
        raise ValueError(f"steps must be a positive integer, got {request.steps}.")
    if request.guidance_scale is None:
        request = dataclasses.replace(request, guidance_scale=spec.default_guidance)
    use_step_cache(pipeline, request.step_cache, request.steps)
    return spec.run(pipeline, request, progress)


def step_callback(progress: ProgressCallback | None, total: int) -> Callable | None:
    """A diffusers ``callback_on_step_end`` that reports ``(step + 1, total)`` to ``progress``."""
    if progress is None:
        return None

    def callback(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        progress(min(step + 1, total), total)  # some schedulers (PNDM) take one step more than asked
        return callback_kwargs

    return callback


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (CPU, so a seed gives the same noise on every device)."""
    return torch.Generator(device="cpu").manual_seed(int(seed))
