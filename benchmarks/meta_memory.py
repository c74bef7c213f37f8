"""Activation memory counted on the `meta` device: every tensor a call creates, alive at once.

`LiveTensorBytes` is a `TorchDispatchMode` that adds each new storage an operator returns to a running total and
takes it off when the storage is freed (a weak-reference callback), so its `peak` is the largest sum of tensor bytes
alive at one time: the activations autograd saves for the backward, the gradients, the recomputation of a
checkpointed block and the temporaries of each operator. It counts storages, not tensors: a view or an in-place
result shares its input's storage and adds nothing, and a storage stays counted while any view of it is alive.
Storages that exist when it starts (weights, buffers, optimizer state, inputs: every tensor the garbage collector
knows then) are not counted, unless given to `track` (an inference phase's inputs). No memory is allocated on
`meta`, so a full-size 12 B call is counted in seconds; what a CUDA caching allocator adds (block rounding,
fragmentation), kernel workspaces and the CUDA context are not in it.

`fused_attention` makes `F.scaled_dot_product_attention` allocate what a fused GPU kernel does: the output and a
float32 log-sum-exp per query row (the flash kernel's op without a mask, the memory-efficient kernel's with one,
both with their backward), not the score matrix that the meta device's default math decomposition materialises.
"""

import contextlib
import gc
import math
import warnings
import weakref
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary


class LiveTensorBytes(TorchDispatchMode):
    """The bytes of the storages created inside the context (or given to `track`) and alive at once: `live` now,
    `peak` the largest."""

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
            self._seen[tensor.untyped_storage()] = None
        return super().__enter__()

    def _freed(self, size: int) -> None:
        self.live -= size

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage not in self._seen:
            size = storage.nbytes()
            self._seen[storage] = size
            self.live += size
            weakref.finalize(storage, self._freed, size)

    def track(self, tensor: torch.Tensor) -> None:
        """Count `tensor`'s storage as alive from now on, though it existed before (once, however often given)."""
        if self._seen.get(tensor.untyped_storage(), 0) is None:
            del self._seen[tensor.untyped_storage()]
        self._add(tensor)
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._add(tensor)
        self.peak = max(self.peak, self.live)
        return out


@contextlib.contextmanager
def fused_attention() -> Iterator[None]:
    """Inside, `F.scaled_dot_product_attention` is a fused GPU kernel: the flash kernel's op without a mask, the
    memory-efficient kernel's with one (a boolean mask becomes the additive bias SDPA makes of it). Both allocate
    the output and a float32 log-sum-exp per query row and have their backward, also when a checkpointed block is
    recomputed; grouped-query attention stays as it is."""
    original = F.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if enable_gqa:
            return original(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=True)
        if attn_mask is None:
            flash = torch.ops.aten._scaled_dot_product_flash_attention
            return flash(query, key, value, dropout_p=dropout_p, is_causal=is_causal, scale=scale)[0]
        if attn_mask.dtype == torch.bool:
            bias = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device)
            attn_mask = bias.masked_fill_(~attn_mask, -math.inf)
        bias = attn_mask.expand(*query.shape[:-1], key.shape[-2])
        efficient = torch.ops.aten._scaled_dot_product_efficient_attention
        return efficient(query, key, value, bias, True, dropout_p=dropout_p, is_causal=is_causal, scale=scale)[0]

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def peak_bytes(call: Callable[[], object], inputs: tuple[torch.Tensor, ...] = (), grad: bool = True) -> int:
    """The peak of `LiveTensorBytes` over one call of `call`, with fused attention. A training step (`grad`) is run
    once before, so that lazily created optimizer state exists and is not counted; an inference phase passes
    `grad=False` (no autograd) and its `inputs`, counted as alive throughout."""
    with torch.set_grad_enabled(grad), fused_attention(), LiveTensorBytes() as counter:
        for tensor in inputs:
            counter.track(tensor)
        result = call()
        del result
    return counter.peak
