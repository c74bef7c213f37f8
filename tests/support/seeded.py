"""Seeded weights for golden-conformance tests (see tests/fixtures/asuka_flux_checkpoint_keys.json).

The golden tensors in tests/fixtures were produced by the ASUKA authors' reference modules with
weights built exactly as `seeded_state_dict` builds them, so a test can rebuild the same
release-format state dict without downloading anything.
"""

import json
import math
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from tests.support import FIXTURES


CHECKPOINT_KEYS = FIXTURES / "asuka_flux_checkpoint_keys.json"
# The decoder entry of `CHECKPOINT_KEYS` (its keys without the release file's `decoder.` prefix).
DECODER_KEYS = "asuka_decoder.ckpt:state_dict (each key prefixed 'decoder.')"

# Keys of `mae_300.pth` that hold the fixed 2-D sin-cos tables instead of random values.
MAE_SINCOS_KEYS = ("pos_embed", "decoder_pos_embed")


def load_checkpoint_keys(name: str) -> list[tuple[str, list[int]]]:
    """Ordered `(key, shape)` pairs of one released file, e.g. `"mae_300.pth:model"`."""
    with open(CHECKPOINT_KEYS) as f:
        table = json.load(f)
    if name not in table:
        raise KeyError(f"{name!r} not in {CHECKPOINT_KEYS.name}; known: {sorted(table)}")
    return [(key, list(shape)) for key, shape in table[name]]


def sincos_pos_embed_2d(dim: int, grid_size: int) -> torch.Tensor:
    """MAE-style fixed 2-D sin-cos table, shape (1, grid_size**2, dim), float32.

    Half of the channels encode the column (w) index, half the row (h) index, each as
    `[sin(pos * omega), cos(pos * omega)]` with `omega = 1 / 10000 ** (i / (dim / 4))`.
    """
    if dim % 4 != 0:
        raise ValueError(f"sin-cos embedding dim must be divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    coords = np.arange(grid_size, dtype=np.float32)
    grid_w, grid_h = np.meshgrid(coords, coords)  # grid_w varies along columns

    def encode(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    table = np.concatenate([encode(grid_w), encode(grid_h)], axis=1)
    return torch.from_numpy(table).float().unsqueeze(0)


def _seeded_value(key: str, t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 0:
        return 0.5 + 0.1 * t
    if t.dim() == 1:
        return 1 + 0.1 * t if key.endswith((".weight", ".scale")) else 0.1 * t
    return t / math.sqrt(math.prod(t.shape[1:]))


def seeded_state_dict(
    keys_and_shapes: Iterable[tuple[str, Sequence[int]]],
    sincos_keys: Collection[str] = (),
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Rebuild the seeded weights the golden tensors were computed with.

    One `torch.Generator().manual_seed(seed)` draws `randn(shape)` for every key in order; the draw
    is then scaled by the reference README's rule. Keys in `sincos_keys` (shape (1, N, D)) get the
    fixed sin-cos table instead, but still consume their random draw so later keys match.
    """
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, shape in keys_and_shapes:
        t = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
        if key in sincos_keys:
            _, num_tokens, dim = shape
            state_dict[key] = sincos_pos_embed_2d(dim, math.isqrt(num_tokens))
        else:
            state_dict[key] = _seeded_value(key, t)
    return state_dict


def bfl_encoder_keys(
    block_out_channels: Sequence[int] = (128, 256, 512, 512),
    layers_per_block: int = 2,
    in_channels: int = 3,
    latent_channels: int = 16,
) -> list[tuple[str, list[int]]]:
    """Ordered `(key, shape)` pairs of a VAE encoder in the BFL/LDM layout, as FLUX's `AutoEncoder.encoder` names
    them and `asuka_decoder.ckpt` holds them (under `encoder.`); the defaults are FLUX.1's VAE encoder.

    Written out from that layout, independently of any converter: `conv_in`, per level `down.{i}.block.{j}` ResNets
    (`nin_shortcut` where the width changes) and `down.{i}.downsample.conv` but on the last, the mid block
    (`block_1`, `attn_1` with 1x1-conv `q`/`k`/`v`/`proj_out`, `block_2`), `norm_out`, `conv_out` (mean and logvar).
    """
    keys: list[tuple[str, list[int]]] = []

    def conv(name: str, out: int, inp: int, size: int) -> None:
        keys.extend([(f"{name}.weight", [out, inp, size, size]), (f"{name}.bias", [out])])

    def norm(name: str, channels: int) -> None:
        keys.extend([(f"{name}.weight", [channels]), (f"{name}.bias", [channels])])

    def resnet(name: str, inp: int, out: int) -> None:
        norm(f"{name}.norm1", inp)
        conv(f"{name}.conv1", out, inp, 3)
        norm(f"{name}.norm2", out)
        conv(f"{name}.conv2", out, out, 3)
        if inp != out:
            conv(f"{name}.nin_shortcut", out, inp, 1)

    channels = block_out_channels[0]
    conv("conv_in", channels, in_channels, 3)
    for i, width in enumerate(block_out_channels):
        for j in range(layers_per_block):
            resnet(f"down.{i}.block.{j}", channels, width)
            channels = width
        if i < len(block_out_channels) - 1:
            conv(f"down.{i}.downsample.conv", width, width, 3)
    resnet("mid.block_1", channels, channels)
    norm("mid.attn_1.norm", channels)
    for name in ("q", "k", "v", "proj_out"):
        conv(f"mid.attn_1.{name}", channels, channels, 1)
    resnet("mid.block_2", channels, channels)
    norm("norm_out", channels)
    conv("conv_out", 2 * latent_channels, channels, 3)
    return [(f"encoder.{key}", shape) for key, shape in keys]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """`|actual - expected| / |expected|` (Frobenius norms, in float64) of two tensors of the same shape."""
    if actual.shape != expected.shape:
        raise ValueError(f"shape {tuple(actual.shape)} differs from the expected {tuple(expected.shape)}")
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def save_asuka_flux_release(
    folder: Path,
    mae: dict[str, torch.Tensor],
    token_aligner: dict[str, torch.Tensor],
    pooled_aligner: dict[str, torch.Tensor],
    decoder: dict[str, torch.Tensor],
    decoder_checkpoint_extra: dict[str, torch.Tensor],
    pooled_null: torch.Tensor,
    token_null: torch.Tensor,
) -> None:
    """The six files the ASUKA-FLUX converter reads, in the release's formats (pickles, as the release ships).

    `decoder` holds the decoder's keys without the `decoder.` prefix; `decoder_checkpoint_extra` the training
    wrapper's other state the release's `asuka_decoder.ckpt` carries next to them (the VAE encoder, the loss).
    """
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": mae, "epoch": 300}, folder / "mae_300.pth")
    torch.save(token_aligner, folder / "asuka_alignment_t5.pt")
    torch.save(pooled_aligner, folder / "asuka_alignment_clip.pt")
    state_dict = {"decoder." + k: v for k, v in decoder.items()} | decoder_checkpoint_extra
    torch.save({"state_dict": state_dict, "global_step": 0}, folder / "asuka_decoder.ckpt")
    torch.save(pooled_null, folder / "vec.pt")
    torch.save(token_null, folder / "txt_256.pt")


STRDIFFUSION_FIXTURES = FIXTURES / "strdiffusion"
STRDIFFUSION_KEYS = json.loads((STRDIFFUSION_FIXTURES / "checkpoint_keys.json").read_text())


def reference_state_dict(name: str, prefix: str = "") -> dict:
    """Seeded weights of one released file as the goldens used them (texture: stored SVD u/v kept)."""
    entry = STRDIFFUSION_KEYS[name]
    weights = seeded_state_dict([(k, s) for k, s, _, _ in entry["keys"]], seed=entry["weight_seed"])
    if entry["kept_not_random"]:
        golden = load_file(str(STRDIFFUSION_FIXTURES / "golden_texture_denoiser.safetensors"))
        weights.update({k: golden[f"keep.{k}"] for k in entry["kept_not_random"]})
    return {prefix + k: v for k, v in weights.items()}
