"""The method registry shared by the app, the CLI and the evaluation runner: one `MethodSpec` per method.

A method is a `MethodSpec`: how to load its pipeline from real weights, which tiny random pipeline stands in for it
(`--tiny`), how to run one `InpaintRequest`, what it needs (a GPU, gated or missing weights) and what a run costs.
User interfaces only ever talk to this package, so a new pipeline appears everywhere once it is registered:

- pipelines of this package register from a provider module listed in `PROVIDER_MODULES` (imported lazily on first
  lookup; a provider that is not there yet is skipped);
- other packages can expose a provider module through the `asuka.methods` entry-point group.

A provider module simply calls `register_method` at import time. Loading a method's pipeline lives in
`asuka.methods.loading`, running a request in `asuka.methods.running`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch


if TYPE_CHECKING:
    from asuka.methods.running import InpaintRequest, InpaintResult, ProgressCallback


logger = logging.getLogger(__name__)

# Modules that register the built-in methods when imported, in the order the methods are listed.
PROVIDER_MODULES: tuple[str, ...] = ("asuka.methods.sd", "asuka.methods.flux", "asuka.methods.strdiffusion")

# Entry-point group through which other packages add methods.
ENTRY_POINT_GROUP = "asuka.methods"

# ZeroGPU seconds per denoising step of a method that states none: as slow as the slowest built-in one.
DEFAULT_GPU_SECONDS_PER_STEP = 0.6


@dataclass
class MethodSpec:
    """How to load and run one inpainting method, and what it needs.

    `load(model_id_or_path, device, dtype)` returns a pipeline from real weights; `tiny_kind` names the
    `asuka.testing.make_tiny_pipeline` kind that stands in for it with random weights (None: no tiny version).
    `run(pipeline, request, progress)` returns an [`InpaintResult`]. `backbone` names the method that runs
    "the backbone alone" for a side-by-side comparison.

    What the method needs, for the first-run guidance and the load-error advice: `needs_gpu` (too large for a
    CPU), `gated_repo` (a Hub repository whose licence must be accepted), `weights_hint` (how to get weights
    when there is no public checkpoint, i.e. `default_model` is None) and `requirements` (one line for users).
    `paper` cites the method's paper in one Markdown line (the demo shows it under the model choice).
    `gpu_seconds_per_step` is what one denoising step costs at the method's working size on one ZeroGPU slice
    (the demo asks a Space for its GPU time from it).
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
    gpu_seconds_per_step: float = DEFAULT_GPU_SECONDS_PER_STEP

    @property
    def public_weights(self) -> bool:
        """Whether the method has a default checkpoint that can be downloaded."""
        return self.default_model is not None


_METHODS: dict[str, MethodSpec] = {}
_providers_loaded = False
_lock = threading.RLock()


def register_method(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add `spec` to the registry; re-registering a name needs `replace=True`."""
    with _lock:
        if spec.name in _METHODS and not replace and _METHODS[spec.name] is not spec:
            raise ValueError(f"A method named {spec.name!r} is already registered; pass replace=True to override it.")
        _METHODS[spec.name] = spec
    return spec


def unregister_method(name: str) -> MethodSpec | None:
    """Remove method `name` (if registered) and return its spec."""
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
    """The method registered as `name`; `ValueError` lists the known names otherwise."""
    _load_providers()
    with _lock:
        if name not in _METHODS:
            known = ", ".join(sorted(_METHODS)) or "(none)"
            raise ValueError(f"Unknown method {name!r}; known methods: {known}.")
        return _METHODS[name]


# --- first run: the default method and what each method needs ------------------------------------


def default_method(cuda_available: bool | None = None) -> str | None:
    """The method to use when none is named: with a GPU, the first method (not a backbone baseline) with public
    weights (ASUKA-FLUX); without one, None (show [`no_default_guidance`])."""
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
    """The method an interface runs: the one asked for (checked: `ValueError` for an unknown name); with `tiny`
    the first registered (tiny weights run anywhere); else [`default_method`] for `cuda_available` (the
    device the interface will use; None: whether this machine has a GPU). Without one, [`NoDefaultMethod`]
    carries [`no_default_guidance`]."""
    if requested:
        return get_method(requested).name
    if tiny:
        return list_methods()[0].name
    name = default_method(cuda_available)
    if name is None:
        raise NoDefaultMethod(no_default_guidance())
    return name


def method_needs(spec: MethodSpec) -> str:
    """One line saying what `spec` needs to run with real weights."""
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
