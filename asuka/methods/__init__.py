"""Inpainting methods for the app, the CLI and the evaluation runner (see :mod:`asuka.methods.registry`).

Built-in methods live in one module per family: :mod:`asuka.methods.sd` (asuka-sd, sd),
:mod:`asuka.methods.flux` (asuka-flux, flux-fill) and :mod:`asuka.methods.strdiffusion`; other packages add
theirs through the ``asuka.methods`` entry-point group.
"""

from asuka.methods.registry import (
    ENTRY_POINT_GROUP,
    PROVIDER_MODULES,
    InpaintRequest,
    InpaintResult,
    MethodSpec,
    ModelLoadError,
    NoDefaultMethod,
    PipelineCache,
    ProgressCallback,
    choose_method,
    default_method,
    get_method,
    list_methods,
    load_error_message,
    load_pipeline,
    method_needs,
    no_default_guidance,
    ready_pipeline,
    register_method,
    run_method,
    seeded_generator,
    step_callback,
    unregister_method,
)
from asuka.methods.speedups import CACHE_HELP, Speedups, add_speed_arguments, apply_speedups, use_step_cache


__all__ = [
    "CACHE_HELP",
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
