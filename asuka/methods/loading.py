"""Loading a method's pipeline: real weights or the tiny stand-in, errors with advice that fits the cause, and the
`PipelineCache` the interfaces keep their pipelines in."""

from __future__ import annotations

import inspect
import os
import threading
from typing import Any

import torch

from asuka.defaults import parse_dtype
from asuka.methods.registry import MethodSpec, get_method
from asuka.methods.speedups import Speedups, apply_speedups


class ModelLoadError(RuntimeError):
    """A method's weights could not be loaded; the message says how to fix it."""


def _causes(error: BaseException | None) -> list[BaseException]:
    """`error` and the exceptions it was raised from (diffusers wraps the Hub's errors in OSError)."""
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
    """Why `spec`'s weights could not be loaded and how to fix it, with advice that fits the cause.

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
    """Whether method `name`'s loader takes a memory configuration (`--quantize` / `--offload`)."""
    return "memory" in inspect.signature(get_method(name).load).parameters


def ready_pipeline(pipeline: Any, device: str) -> Any:
    """`pipeline` on `device` with its progress bar off (the interfaces report progress themselves)."""
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
    """Load method `name` (with `tiny`: its tiny random stand-in, float32); a failure becomes
    [`ModelLoadError`] with advice that fits the cause. `memory` (an `asuka.methods.memory.Configuration`:
    weight format and offloading) goes to a loader that takes it (`supports_memory`); the tiny stand-ins ignore
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
        """The pipeline of method `name`, loading it now if needed (may raise ModelLoadError)."""
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
