"""Memory of a training step computed on the `meta` device: every tensor the step creates, alive at once.

`LiveTensorBytes` is a `TorchDispatchMode` that adds each new storage an operator returns to a running total and
takes it off when the storage is freed (a weak-reference callback), so its `peak` is the largest sum of tensor bytes
alive at one time during the step: the activations autograd saves for the backward, the gradients, the recomputation
of a checkpointed block and the temporaries of each operator. Storages that exist when it starts (weights, buffers,
optimizer state, inputs: every tensor the garbage collector knows then) are not counted. No memory is allocated on
`meta`, so a full-size 12 B step is counted in seconds; what a CUDA caching allocator adds (block rounding,
fragmentation) and the CUDA context are not in it.

`flash_attention` makes `F.scaled_dot_product_attention` run as the CUDA flash kernel does (it saves the output and
the log-sum-exp, not the attention matrix); on `meta` the default is the math decomposition, which materialises and
saves the full attention matrix and would overstate a bf16 step on a GPU.
"""

import contextlib
import gc
import warnings
import weakref
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary


class LiveTensorBytes(TorchDispatchMode):
    """The bytes of the storages created inside the context and alive at once: `live` now, `peak` the largest."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen = WeakIdKeyDictionary()

    def __enter__(self):
        with warnings.catch_warnings():  # isinstance on deprecated module attributes warns
            warnings.simplefilter("ignore", FutureWarning)
            existing = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
        for tensor in existing:
            self._seen[tensor.untyped_storage()] = 0
        return super().__enter__()

    def _freed(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage not in self._seen:
                    size = storage.nbytes()
                    self._seen[storage] = size
                    self.live += size
                    weakref.finalize(storage, self._freed, size)
        self.peak = max(self.peak, self.live)
        return out


@contextlib.contextmanager
def flash_attention() -> Iterator[None]:
    """Inside, `F.scaled_dot_product_attention` without a mask is the flash kernel's op (its meta implementation on
    `meta`); a masked one (the MAE's, run without gradients) stays as it is."""
    original = F.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if attn_mask is not None or enable_gqa:
            return original(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        flash = torch.ops.aten._scaled_dot_product_flash_attention
        return flash(query, key, value, dropout_p=dropout_p, is_causal=is_causal, scale=scale)[0]

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def step_peak_bytes(step: Callable[[], object]) -> int:
    """The peak of `LiveTensorBytes` over one call of `step` (run it once before, so that lazily created optimizer
    state exists and is not counted), with flash attention."""
    with flash_attention(), LiveTensorBytes() as tracker:
        step()
    return tracker.peak
