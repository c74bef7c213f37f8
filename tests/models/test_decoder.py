"""AsukaDecoder on tiny random VAEs: identity with `vae.decode`, the blend rule, round trips, errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import Decoder
from torch.utils.flop_counter import FlopCounterMode

from asuka.models.decoder import AsukaDecoder


def tiny_vae(latent_channels: int = 4, use_post_quant_conv: bool = True, block_out_channels=(32, 64)) -> AutoencoderKL:
    """A diffusers-test-sized AutoencoderKL: SD-like (4 latent channels) or FLUX-like (16, no post_quant_conv)."""
    torch.manual_seed(0)
    levels = len(block_out_channels)
    return AutoencoderKL(
        block_out_channels=list(block_out_channels),
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        latent_channels=latent_channels,
        norm_num_groups=32,
        use_quant_conv=use_post_quant_conv,
        use_post_quant_conv=use_post_quant_conv,
    ).eval()


def inputs(vae: AutoencoderKL, batch: int = 2, latent_size: int = 8, seed: int = 1):
    """Random latents, an image in [-1, 1] at the output resolution, and a mask with a square hole."""
    generator = torch.Generator().manual_seed(seed)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    size = latent_size * scale
    z = torch.randn(batch, vae.config.latent_channels, latent_size, latent_size, generator=generator)
    image = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, size // 4 : size // 2 + 1, size // 3 : size - 3] = 1
    return z, image, mask


def randomize_condition_encoder(decoder: AsukaDecoder) -> None:
    """Gives the fresh condition encoder large enough weights that its features clearly matter."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in decoder.condition_encoder.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def public_config(model: AsukaDecoder) -> dict:
    """The config without private entries, with tuples and lists compared alike (JSON stores lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items() if not k.startswith("_")}


VAE_KINDS = {
    "sd-like": dict(latent_channels=4, use_post_quant_conv=True),
    "flux-like": dict(latent_channels=16, use_post_quant_conv=False),
    "three-levels": dict(latent_channels=4, use_post_quant_conv=True, block_out_channels=(32, 64, 64)),
}


@pytest.mark.parametrize("kind", sorted(VAE_KINDS))
def test_all_ones_mask_is_vae_decode(kind):
    vae = tiny_vae(**VAE_KINDS[kind])
    decoder = AsukaDecoder.from_vae(vae)
    randomize_condition_encoder(decoder)
    z, image, _ = inputs(vae)
    with torch.no_grad():
        expected = vae.decode(z).sample
        out = decoder(z, image, torch.ones_like(image[:, :1])).sample
    assert out.shape == expected.shape
    assert torch.allclose(out, expected, atol=1e-6, rtol=0)


def test_from_vae_copies_config_and_weights():
    vae = tiny_vae(latent_channels=16, use_post_quant_conv=False)
    decoder = AsukaDecoder.from_vae(vae)
    assert decoder.post_quant_conv is None and decoder.config.latent_channels == 16
    assert isinstance(decoder.decoder, Decoder)
    assert decoder.decoder.state_dict().keys() == vae.decoder.state_dict().keys()
    for name, tensor in vae.decoder.state_dict().items():
        assert torch.equal(decoder.decoder.state_dict()[name], tensor), name

    sd_vae = tiny_vae()
    sd_decoder = AsukaDecoder.from_vae(sd_vae)
    assert torch.equal(sd_decoder.post_quant_conv.weight, sd_vae.post_quant_conv.weight)


def test_condition_encoder_features_match_decoder_states():
    """Features, full resolution down, are [b0, b1, ..., b_{n-1}, b_{n-1}]: the shapes of the decoder's
    state before the last blend and at the entry of each up level (recorded with diffusers' own forward)."""
    vae = tiny_vae(block_out_channels=(32, 64, 64))
    z, image, mask = inputs(vae, batch=1)
    entries = []
    hooks = [
        block.register_forward_pre_hook(lambda m, args: entries.append(args[0].shape))
        for block in vae.decoder.up_blocks
    ]
    hooks.append(vae.decoder.conv_norm_out.register_forward_pre_hook(lambda m, args: entries.append(args[0].shape)))
    with torch.no_grad():
        vae.decode(z)
        features = AsukaDecoder.from_vae(vae).condition_encoder(torch.cat([image, mask], 1))
    for hook in hooks:
        hook.remove()
    assert [f.shape for f in features] == list(reversed(entries))
    assert [f.shape[1] for f in features] == [32, 64, 64, 64]


@pytest.mark.parametrize("kind", ["sd-like", "flux-like"])
def test_partial_mask_differs_from_vae_decode_only_through_the_condition(kind):
    """Reference: diffusers' own `vae.decode`, with pre-hooks that apply the README's blend rule
    (binarised area-resized mask before each up level, raw mask before conv_norm_out) using the
    condition encoder's features. AsukaDecoder must equal it, and must differ from the plain decode."""
    vae = tiny_vae(**VAE_KINDS[kind])
    decoder = AsukaDecoder.from_vae(vae)
    randomize_condition_encoder(decoder)
    z, image, mask = inputs(vae)
    with torch.no_grad():
        features = decoder.condition_encoder(torch.cat([(1 - mask) * image, mask], dim=1))
        plain = vae.decode(z).sample

    def blend_hook(feature, binarise):
        def hook(module, args):
            h = args[0]
            m = mask
            if binarise:
                m = (F.interpolate(mask, size=h.shape[-2:], mode="area") > 0).float()
            return (h * m + feature * (1 - m),) + tuple(args[1:])

        return hook

    targets = list(vae.decoder.up_blocks) + [vae.decoder.conv_norm_out]
    per_target = list(reversed(features[1:])) + [features[0]]
    hooks = [
        target.register_forward_pre_hook(blend_hook(feature, binarise=target is not vae.decoder.conv_norm_out))
        for target, feature in zip(targets, per_target)
    ]
    with torch.no_grad():
        reference = vae.decode(z).sample
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        out = decoder(z, image, mask).sample

    assert torch.allclose(out, reference, atol=1e-5, rtol=0)
    assert (out - plain).abs().max() > 1e-2


def test_hole_pixels_are_ignored_and_known_pixels_matter():
    vae = tiny_vae()
    decoder = AsukaDecoder.from_vae(vae)
    randomize_condition_encoder(decoder)
    z, image, mask = inputs(vae)
    other = torch.rand(image.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        out = decoder(z, image, mask).sample
        same_known = decoder(z, image * (1 - mask) + other * mask, mask).sample
        other_known = decoder(z, image * mask + other * (1 - mask), mask).sample
    assert torch.equal(out, same_known)
    assert (out - other_known).abs().max() > 1e-3


def test_save_load_round_trip(tmp_path):
    vae = tiny_vae(latent_channels=16, use_post_quant_conv=False)
    decoder = AsukaDecoder.from_vae(vae)
    randomize_condition_encoder(decoder)
    decoder.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = AsukaDecoder.from_pretrained(tmp_path).eval()
    assert public_config(loaded) == public_config(decoder) and loaded.post_quant_conv is None
    z, image, mask = inputs(vae)
    with torch.no_grad():
        assert torch.equal(loaded(z, image, mask).sample, decoder(z, image, mask).sample)


def test_return_dict_false_and_low_precision():
    vae = tiny_vae()
    decoder = AsukaDecoder.from_vae(vae)
    randomize_condition_encoder(decoder)
    z, image, mask = inputs(vae, batch=1)
    with torch.no_grad():
        (reference,) = decoder(z, image, mask, return_dict=False)
        decoder.to(torch.bfloat16)
        low = decoder(z, image, mask).sample  # float32 inputs are cast to the module dtype
    assert low.dtype == torch.bfloat16
    assert torch.isfinite(low).all()
    assert (low.float() - reference).abs().max() < 0.1 * reference.abs().max()


def test_gradient_checkpointing_gives_the_same_gradients():
    vae = tiny_vae()
    z, image, mask = inputs(vae, batch=1)
    grads = []
    for checkpointing in (False, True):
        decoder = AsukaDecoder.from_vae(vae).train()
        randomize_condition_encoder(decoder)
        if checkpointing:
            decoder.enable_gradient_checkpointing()
        decoder(z, image, mask).sample.square().mean().backward()
        grads.append([p.grad.clone() for p in decoder.parameters()])
    for plain, checkpointed in zip(*grads):
        assert torch.allclose(plain, checkpointed, atol=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda z, image, mask: (z, image[..., :-2, :], mask[..., :-2, :]), "latent size x 2"),
        (lambda z, image, mask: (z[:, :3], image, mask), "latents"),
        (lambda z, image, mask: (z, image[:, :1], mask), "image"),
        (lambda z, image, mask: (z, image, mask[..., :-1]), "mask"),
        (lambda z, image, mask: (z, image, mask.repeat(1, 2, 1, 1)), "mask"),
        (lambda z, image, mask: (z, image, mask[:1]), "batch"),
        (lambda z, image, mask: (z[0], image, mask), "4-D"),
        (lambda z, image, mask: (z, image, mask * 2), r"\[0, 1\]"),
        (lambda z, image, mask: (z, image, mask - 0.5), r"\[0, 1\]"),
    ],
)
def test_bad_inputs_raise_value_error(change, message):
    vae = tiny_vae()
    decoder = AsukaDecoder.from_vae(vae)
    with pytest.raises(ValueError, match=message):
        decoder(*change(*inputs(vae)))


def test_from_vae_rejects_other_modules():
    with pytest.raises(ValueError, match="AutoencoderKL"):
        AsukaDecoder.from_vae(torch.nn.Conv2d(3, 3, 1))


def test_tiling_decodes_tiles_with_their_own_crops_and_blends_them():
    vae = tiny_vae()
    decoder = AsukaDecoder.from_vae(vae)
    randomize_condition_encoder(decoder)
    z, image, mask = inputs(vae, batch=1, latent_size=16)
    with torch.no_grad():
        whole = decoder(z, image, mask).sample
        decoder.enable_tiling(tile_sample_size=64)  # larger than the 32x32 output: one pass, identical
        assert torch.equal(decoder(z, image, mask).sample, whole)

        decoder.enable_tiling(tile_sample_size=16, tile_overlap=0.25)  # 8x8 latent tiles, stride 6
        crops = []
        decoder._decode = lambda z_tile, image_tile, mask_tile, box: (
            crops.append(image_tile.shape[-2:]) or AsukaDecoder._decode(decoder, z_tile, image_tile, mask_tile, box)
        )
        tiled = decoder(z, image, mask).sample
    assert tiled.shape == whole.shape and torch.isfinite(tiled).all()
    assert len(crops) == 9 and crops[0] == (16, 16)  # 3x3 tiles, each with its 16x16 image/mask crop
    first_tile = AsukaDecoder._decode(
        decoder, z[..., :8, :8], image[..., :16, :16], mask[..., :16, :16], decoder.hole_box(mask[..., :16, :16])
    )
    assert torch.allclose(tiled[..., :4, :4], first_tile[..., :4, :4])  # away from seams: that tile's own decode
    assert (tiled - whole).abs().mean() < 0.5 * whole.abs().mean()  # close to the one-pass decode overall

    decoder.disable_tiling()
    with torch.no_grad():
        assert torch.equal(decoder(z, image, mask).sample, whole)
    with pytest.raises(ValueError, match="tile_sample_size"):
        decoder.enable_tiling(tile_sample_size=15)


def _holes(mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Holes of every kind for a (2, 1, S, S) batch: the default square, a different hole per sample (the box is
    their union), holes touching the borders, one pixel, none and the whole image."""
    size = mask.shape[-1]
    per_sample, border, pixel = torch.zeros_like(mask), torch.zeros_like(mask), torch.zeros_like(mask)
    per_sample[0, :, 2:5, 3:6] = 1
    per_sample[1, :, 9:12, 7:13] = 1
    border[0, :, : size // 3, -3:] = 1
    border[1, :, -2:, :4] = 1
    pixel[1, :, 5, 7] = 1
    return {
        "square": mask,
        "per-sample": per_sample,
        "border": border,
        "pixel": pixel,
        "none": torch.zeros_like(mask),
        "everywhere": torch.ones_like(mask),
    }


def _numpy_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask.numpy().any(axis=(0, 1)))
    if not len(rows):
        return (0, 0, 0, 0)
    return (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)


@pytest.mark.parametrize("kind", VAE_KINDS)
@pytest.mark.parametrize("hole", ["square", "per-sample", "border", "pixel", "none", "everywhere"])
def test_decoding_the_hole_box_equals_decoding_the_whole_map(kind, hole):
    """Each blend discards the decoder state outside the hole, so computing each up level's last convolution
    over the hole's box alone gives the whole-map output, for fewer FLOPs unless the box is the whole image."""
    vae = tiny_vae(**VAE_KINDS[kind])
    decoder = AsukaDecoder.from_vae(vae)
    randomize_condition_encoder(decoder)
    z, image, mask = inputs(vae)
    mask = _holes(mask)[hole]
    size = tuple(image.shape[-2:])
    box = _numpy_box(mask)
    assert AsukaDecoder.hole_box(mask) == box
    with torch.no_grad(), FlopCounterMode(display=False) as whole_count:
        whole = decoder(z, image, mask, hole_box=(0, 0, *size)).sample
    with torch.no_grad(), FlopCounterMode(display=False) as box_count:
        boxed = decoder(z, image, mask).sample
    assert (boxed - whole).abs().max() <= 1e-5
    if box == (0, 0, *size):
        assert box_count.get_total_flops() == whole_count.get_total_flops()
    else:
        assert box_count.get_total_flops() < whole_count.get_total_flops()
    with torch.no_grad():  # the same box given, and a larger one, change nothing
        assert torch.equal(decoder(z, image, mask, hole_box=box).sample, boxed)
        if hole != "none":
            larger = (max(box[0] - 3, 0), max(box[1] - 3, 0), min(box[2] + 3, size[0]), min(box[3] + 3, size[1]))
            assert (decoder(z, image, mask, hole_box=larger).sample - whole).abs().max() <= 1e-5


@pytest.mark.parametrize("checkpointing", [False, True])
def test_hole_box_training_gives_the_whole_map_gradients(checkpointing):
    vae = tiny_vae()
    z, image, mask = inputs(vae)
    grads = []
    for hole_box in ((0, 0, *image.shape[-2:]), None):
        decoder = AsukaDecoder.from_vae(vae).train()
        randomize_condition_encoder(decoder)
        if checkpointing:
            decoder.enable_gradient_checkpointing()
        decoder(z, image, mask, hole_box=hole_box).sample.square().mean().backward()
        grads.append([p.grad.clone() for p in decoder.parameters()])
    for whole, boxed in zip(*grads):
        assert torch.allclose(whole, boxed, atol=1e-6)


def test_tiled_decoding_uses_each_tiles_part_of_the_box():
    vae = tiny_vae()
    decoder = AsukaDecoder.from_vae(vae)
    randomize_condition_encoder(decoder)
    z, image, mask = inputs(vae, batch=1, latent_size=16)
    decoder.enable_tiling(tile_sample_size=16, tile_overlap=0.25)
    with torch.no_grad():
        whole = decoder(z, image, mask, hole_box=(0, 0, *image.shape[-2:])).sample
        with FlopCounterMode(display=False) as count:
            boxed = decoder(z, image, mask).sample
        with FlopCounterMode(display=False) as whole_count:
            decoder(z, image, mask, hole_box=(0, 0, *image.shape[-2:]))
    assert (boxed - whole).abs().max() <= 1e-5
    assert count.get_total_flops() < whole_count.get_total_flops()


def test_hole_box_of_meta_tensors_is_the_whole_map():
    assert AsukaDecoder.hole_box(torch.zeros(2, 1, 8, 12, device="meta")) == (0, 0, 8, 12)


@pytest.mark.parametrize("box", [(0, 0, 17, 16), (4, 0, 3, 16), (0, 0, 16), (0.0, 0, 16, 16), "all", (-1, 0, 4, 4)])
def test_bad_hole_box_raises_value_error(box):
    vae = tiny_vae()
    decoder = AsukaDecoder.from_vae(vae)
    with pytest.raises(ValueError, match="hole_box"):
        decoder(*inputs(vae), hole_box=box)
