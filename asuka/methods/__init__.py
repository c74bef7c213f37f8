"""Inpainting methods for the app, the CLI and the evaluation runner.

One `MethodSpec` per method in `asuka.methods.registry` (registration, lookup, the default method); loading its
pipeline in `asuka.methods.loading` (advice per cause of failure, the `PipelineCache`); running a request in
`asuka.methods.running`.

Built-in methods live in one module per family: `asuka.methods.sd` (asuka-sd, sd),
`asuka.methods.flux` (asuka-flux, flux-fill) and `asuka.methods.strdiffusion`; other packages add
theirs through the `asuka.methods` entry-point group.
"""

from asuka.methods.loading import ModelLoadError, PipelineCache, load_error_message, load_pipeline, ready_pipeline
from asuka.methods.registry import (
    DEFAULT_GPU_SECONDS_PER_STEP,
    ENTRY_POINT_GROUP,
    PROVIDER_MODULES,
    MethodSpec,
    NoDefaultMethod,
    choose_method,
    default_method,
    get_method,
    list_methods,
    method_needs,
    no_default_guidance,
    register_method,
    unregister_method,
)
from asuka.methods.running import (
    InpaintRequest,
    InpaintResult,
    ProgressCallback,
    run_method,
    seeded_generator,
    step_callback,
)
from asuka.methods.speedups import CACHE_HELP, Speedups, add_speed_arguments, apply_speedups, use_step_cache


__all__ = [
    "CACHE_HELP",
    "DEFAULT_GPU_SECONDS_PER_STEP",
    "ENTRY_POINT_GROUP",
    "PROVIDER_MODULES",
    "InpaintRequest",
    "InpaintResult",
    "MethodSpec",
    "ModelLoadError",
    "NoDefaultMethod",
    "PipelineCache",
    "ProgressCallback",
    "Speedups",
    "choose_method",
    "default_method",
    "get_method",
    "list_methods",
    "load_error_message",
    "load_pipeline",
    "method_needs",
    "no_default_guidance",
    "ready_pipeline",
    "register_method",
    "run_method",
    "add_speed_arguments",
    "apply_speedups",
    "seeded_generator",
    "step_callback",
    "unregister_method",
    "use_step_cache",
]
