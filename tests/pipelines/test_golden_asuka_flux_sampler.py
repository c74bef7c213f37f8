"""The whole ASUKA-FLUX inference path of `AsukaFluxPipeline` against the authors', stage by stage.

The golden (tests/fixtures/asuka_flux_sampler, see its README) records the authors' `test_asuka_flux.py` inference
with BFL's FLUX sampling on seeded weights: the MAE input and prior, the aligned conditioning, the FLUX-Fill inputs,
the schedule, every transformer call, the latents after each step and the decoded image of a 64x64 image, and at
other sizes the MAE input, the conditioning and the 50-step schedule. Here the real-size MAE and decoder are rebuilt
by the seeding rule and converted by the project's converter, the tiny BFL transformer and autoencoder by diffusers'
single-file converters, and pipeline calls are recorded with forward hooks and the step callback.
"""

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from diffusers.loaders.single_file_utils import (
    convert_flux_transformer_checkpoint_to_diffusers,
    convert_ldm_vae_checkpoint,
)
from PIL import Image
from safetensors.torch import load_file

from asuka.convert.__main__ import main as convert_cli
from asuka.models.mae import IMAGENET_MEAN, IMAGENET_STD
from asuka.pipelines.pipeline_asuka_flux import AsukaFluxPipeline, load_asuka_flux_components
from asuka.testing.configs import FLUX_SCHEDULER_CONFIG, FLUX_TRANSFORMER_CONFIG, FLUX_VAE_CONFIG
from tests.support.seeded import (
    DECODER_KEYS,
    FIXTURES,
    MAE_SINCOS_KEYS,
    load_checkpoint_keys,
    relative_error,
    save_asuka_flux_release,
    seeded_state_dict,
)


SAMPLER = FIXTURES / "asuka_flux_sampler"
WEIGHT_SEED = 8
NULL_SEED = 61
TOLERANCE = 1e-4  # relative; the reference data agree to about 1e-6
# sha256 of the rebuilt real-size state dicts (per key: name, str(list(shape)), float32 bytes), from the reference.
MAE_FINGERPRINT = "bdd0acc324efc6f18ffc207ad7d16b205514836b8f179ab14f4ec7af0ba9a69e"
DECODER_FINGERPRINT = "28557057bf1a558a70461c0dbc90b0a8c4eb3d1cadbf3d04b5b9930c63d4c5fe"
# The MAE-only cases (other sizes): fixture sub-folder and golden prefix.
CASES = ("mae160", "mae640x480", "mae208x352")
# What the reference run used: the initial noise is golden `noise.packed`.
STEPS, GUIDANCE, POSTERIOR_SEED = 4, 30.0, 1234

# The tiny FLUX-Fill transformer of the reference (BFL `Flux`, 64 wide) in diffusers' terms.
TINY_FLUX_WIDTH = 64
TINY_TRANSFORMER_CONFIG = {
    **FLUX_TRANSFORMER_CONFIG,
    "num_layers": 2,
    "num_single_layers": 2,
    "attention_head_dim": 32,
    "num_attention_heads": 2,
    "joint_attention_dim": 128,
    "pooled_projection_dim": 64,
    "axes_dims_rope": (8, 12, 12),
}
# The tiny BFL `AutoEncoder` (ch 32, ch_mult 1,1,2,2, one res block) as diffusers' `AutoencoderKL`.
TINY_VAE_CONFIG = {**FLUX_VAE_CONFIG, "block_out_channels": (32, 32, 64, 64), "layers_per_block": 1}
# diffusers' converter splits each single block's fused `linear1` (q, k, v, mlp) at FLUX.1's width.
FLUX_WIDTH = 3072
SINGLE_BLOCK_SPLIT = (".attn.to_q.", ".attn.to_k.", ".attn.to_v.", ".proj_mlp.")


# ----------------------------------------------------------------------------------------------- building


def fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """The reference's sha256 of a state dict: for each key in order its name, `str(list(shape))`, float32 bytes."""
    digest = hashlib.sha256()
    for key, value in state_dict.items():
        digest.update(key.encode())
        digest.update(str(list(value.shape)).encode())
        digest.update(value.float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def convert_tiny_flux_transformer(checkpoint: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """diffusers' `convert_flux_transformer_checkpoint_to_diffusers` for a BFL transformer `width` wide.

    The converter splits each single block's fused `linear1` at FLUX.1's hard-coded width (3072): each of its four
    parts is zero-padded to that width first, and the converted projections are cut back to `width` after.
    """
    parts = (width, width, width, 4 * width)  # q, k, v and the MLP (mlp_ratio 4, as the converter assumes)

    def pad_rows(part: torch.Tensor) -> torch.Tensor:
        rows = part.shape[0] * (FLUX_WIDTH // width - 1)
        return torch.cat([part, part.new_zeros(rows, *part.shape[1:])])

    padded = dict(checkpoint)
    for key, value in checkpoint.items():
        if key.startswith("single_blocks.") and ".linear1." in key:
            padded[key] = torch.cat([pad_rows(part) for part in value.split(parts)])
    converted = convert_flux_transformer_checkpoint_to_diffusers(padded)
    for key, value in converted.items():
        if key.startswith("single_transformer_blocks.") and any(name in key for name in SINGLE_BLOCK_SPLIT):
            converted[key] = value[: value.shape[0] * width // FLUX_WIDTH]
    return converted


def load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """`model` with exactly `state_dict` (no key missing or left over), in eval mode."""
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def small_weights() -> dict[str, dict[str, torch.Tensor]]:
    """The reference's tiny BFL transformer and autoencoder and its two narrow aligners, rebuilt by the rule."""
    table = json.loads((SAMPLER / "checkpoint_keys.json").read_text())
    return {name: seeded_state_dict(keys, seed=WEIGHT_SEED) for name, keys in table.items()}


@pytest.fixture(scope="module")
def release(tmp_path_factory, small_weights) -> tuple[Path, dict[str, str]]:
    """The release files with the real-size seeded MAE and decoder, and those two state dicts' fingerprints."""
    mae = seeded_state_dict(load_checkpoint_keys("mae_300.pth:model"), MAE_SINCOS_KEYS, seed=WEIGHT_SEED)
    decoder = seeded_state_dict(load_checkpoint_keys(DECODER_KEYS), seed=WEIGHT_SEED)
    nulls = torch.Generator().manual_seed(NULL_SEED)  # vec, then txt_256 (then txt.pt, which ASUKA never reads)
    autoencoder = small_weights["flux_ae_bfl"]
    folder = tmp_path_factory.mktemp("release")
    save_asuka_flux_release(
        folder,
        mae=mae,
        token_aligner=small_weights["asuka_alignment_t5"],
        pooled_aligner=small_weights["asuka_alignment_clip"],
        decoder=decoder,
        decoder_checkpoint_extra={
            **{key: value for key, value in autoencoder.items() if key.startswith("encoder.")},
            "loss.logvar": torch.zeros(()),
        },
        pooled_null=torch.randn(1, 64, generator=nulls),
        token_null=torch.randn(1, 256, 128, generator=nulls),
    )
    return folder, {"mae": fingerprint(mae), "decoder": fingerprint(decoder)}


@pytest.fixture(scope="module")
def pipe(release, small_weights, tmp_path_factory) -> AsukaFluxPipeline:
    """The converted ASUKA parts on the tiny FLUX-Fill backbone, with FLUX.1-Fill-dev's scheduler.

    The converter sees the backbone's VAE (`--backbone`), so it finds the release's masked-image encoder equal to it,
    as in this data, and stores none: the VAE encodes the masked image, as the reference's autoencoder does."""
    vae = AutoencoderKL(**TINY_VAE_CONFIG)
    load_strict(vae, convert_ldm_vae_checkpoint(small_weights["flux_ae_bfl"], vae.config))
    backbone = tmp_path_factory.mktemp("backbone")
    vae.save_pretrained(backbone / "vae")
    converted = tmp_path_factory.mktemp("converted") / "asuka-flux"
    argv = ["asuka-flux", "--release", str(release[0]), "--out", str(converted), "--backbone", str(backbone)]
    assert convert_cli(argv) == 0
    assert json.loads((converted / "conversion.json").read_text())["masked_image_encoder"]["case"] == "equal"
    transformer = load_strict(
        FluxTransformer2DModel(**TINY_TRANSFORMER_CONFIG),
        convert_tiny_flux_transformer(small_weights["flux_transformer_bfl"], TINY_FLUX_WIDTH),
    )
    pipeline = AsukaFluxPipeline(
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG),
        **load_asuka_flux_components(converted),
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(SAMPLER / "golden.safetensors")


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ----------------------------------------------------------------------------------------------- recording


class StageRecorder:
    """What the stages of one `AsukaFluxPipeline` call receive and return, from forward hooks and the step callback.

    `AsukaMAE.prior` is not a forward call: the MAE input is read where it enters `patch_embed`, the MAE's 256x256
    hole where it enters `decoder_patch_embed` (`cat(x, hole)`), the prior where it enters the token aligner.
    """

    def __init__(self, pipe: AsukaFluxPipeline, stop_after_first_step: bool = False):
        self.stop_after_first_step = stop_after_first_step
        self.output = None  # the call's images
        self.stages: dict[str, list[torch.Tensor]] = {}
        self.transformer_calls: list[dict[str, torch.Tensor]] = []
        self.latents: list[torch.Tensor] = []  # after each step
        self.sigmas: torch.Tensor | None = None  # the scheduler's, at the first step
        self._handles = []
        mae, token_aligner, pooled_aligner = pipe.mae, pipe.token_aligner, pipe.pooled_aligner
        self._before(mae.patch_embed, "mae.input", lambda args: args[0])
        self._before(mae.decoder_patch_embed, "mae.mask", lambda args: args[0][:, -1:])
        self._before(token_aligner, "mae.prior", lambda args: args[0])
        self._after(token_aligner.norm_out, "cond.tokens_raw", lambda out: out)
        self._after(pooled_aligner.norm_out, "cond.pooled_raw", lambda out: out.mean(dim=1))
        self._after(token_aligner, "cond.tokens", lambda out: out.tokens)
        self._after(pooled_aligner, "cond.pooled", lambda out: out.pooled)
        self._after(pipe.vae.encoder, "vae.moments", lambda out: out)  # no quant conv: mean and logvar
        self._before(pipe.decoder, "decoder.z_unscaled", lambda args: args[0])
        self._before(pipe.decoder, "decoder.image", lambda args: args[1])
        self._before(pipe.decoder, "decoder.mask", lambda args: args[2])
        self._after(pipe.decoder, "decoder.out", lambda out: out[0])
        self._handles.append(pipe.transformer.register_forward_pre_hook(self._transformer_inputs, with_kwargs=True))
        self._after(pipe.transformer, "transformer.pred", lambda out: out[0])

    def _keep(self, name: str, value: torch.Tensor) -> None:
        self.stages.setdefault(name, []).append(value.detach().clone())

    def _before(self, module: torch.nn.Module, name: str, pick: Callable) -> None:
        self._handles.append(module.register_forward_pre_hook(lambda _, args: self._keep(name, pick(args))))

    def _after(self, module: torch.nn.Module, name: str, pick: Callable) -> None:
        self._handles.append(module.register_forward_hook(lambda _, args, out: self._keep(name, pick(out))))

    def _transformer_inputs(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.transformer_calls.append({k: v.detach().clone() for k, v in kwargs.items() if torch.is_tensor(v)})

    def callback(self, pipe: AsukaFluxPipeline, step: int, timestep: torch.Tensor, tensors: dict) -> dict:
        """The step callback: keeps the latents (and the schedule at the first step); may stop the loop there."""
        self.latents.append(tensors["latents"].clone())
        if step == 0:
            self.sigmas = pipe.scheduler.sigmas.clone()
            pipe._interrupt = self.stop_after_first_step
        return {}

    def once(self, name: str) -> torch.Tensor:
        """The one value recorded for `name` (a stage that ran more than once is an error)."""
        values = self.stages.get(name, [])
        assert len(values) == 1, f"{name} recorded {len(values)} times, expected once"
        return values[0]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def recorded_call(
    pipe: AsukaFluxPipeline, image: np.ndarray, mask: np.ndarray, stop_after_first_step: bool = False, **kwargs
) -> StageRecorder:
    """One recorded pipeline call (`kwargs` go to the pipeline), interrupted after the first step if asked."""
    recorder = StageRecorder(pipe, stop_after_first_step)
    try:
        recorder.output = pipe(image, mask, callback_on_step_end=recorder.callback, **kwargs).images
    finally:
        recorder.remove()
    return recorder


def reference_call_arguments(golden: dict[str, torch.Tensor]) -> dict:
    """The reference run's inputs and settings (the images as uint8 arrays, as the reference reads its PNGs)."""
    return {
        "image": read_png(SAMPLER / "image.png"),
        "mask": read_png(SAMPLER / "mask.png"),
        "num_inference_steps": STEPS,
        "guidance_scale": GUIDANCE,
        "latents": golden["noise.packed"],
        "generator": torch.Generator().manual_seed(POSTERIOR_SEED),
        "output_type": "pil",
    }


@pytest.fixture(scope="module")
def run(pipe, golden) -> StageRecorder:
    """The reference run: the whole image as the decoder reconstructs it (nothing pasted back)."""
    return recorded_call(pipe, keep_unmasked=False, **reference_call_arguments(golden))


def assert_close(stage: str, actual: torch.Tensor, expected: torch.Tensor, tolerance: float = TOLERANCE) -> None:
    error = relative_error(actual, expected)
    assert error <= tolerance, f"{stage}: relative error {error:.2e} > {tolerance:.0e}"


def reference_mae_input(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's MAE input and hole at 256x256, rebuilt losslessly from its 8-bit OpenCV resize: normalised
    in float64 as `prepare_data` does, zeroed in the hole, then float32."""
    resized = read_png(folder / "mae_input.png") / 255.0
    hole = read_png(folder / "mae_mask.png") >= 128
    normalised = (resized - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD) * ~hole[..., None]
    return torch.from_numpy(normalised).permute(2, 0, 1)[None].float(), torch.from_numpy(hole)[None, None].float()


# ----------------------------------------------------------------------------------------------- the 64x64 run


def test_seeded_real_size_weights_are_the_references(release):
    assert release[1] == {"mae": MAE_FINGERPRINT, "decoder": DECODER_FINGERPRINT}


def test_mae_input_and_prior(run, golden):
    expected_input, expected_hole = reference_mae_input(SAMPLER)
    assert_close("mae.input", run.once("mae.input"), expected_input)
    assert torch.equal(run.once("mae.mask"), expected_hole)
    assert_close("mae.prior", run.once("mae.prior"), golden["mae.prior"])


def test_aligned_conditioning(run, golden):
    for stage in ("cond.tokens_raw", "cond.pooled_raw", "cond.tokens", "cond.pooled"):
        assert_close(stage, run.once(stage), golden[stage])


def test_fill_inputs_ids_and_schedule(run, golden):
    mean, logvar = run.once("vae.moments").chunk(2, dim=1)
    assert_close("vae.posterior_mean", mean, golden["vae.posterior_mean"])
    assert_close("vae.posterior_logvar", logvar, golden["vae.posterior_logvar"])
    assert len(run.transformer_calls) == STEPS
    for call in run.transformer_calls:  # the masked-image latents and packed mask, the same at every step
        assert_close("fill.img_cond", call["hidden_states"][..., 64:], golden["fill.img_cond"])
        assert torch.equal(call["img_ids"], golden["ids.img"][0])
        assert torch.equal(call["txt_ids"], golden["ids.txt"][0])
    assert_close("schedule.timesteps", run.sigmas, golden["schedule.timesteps"])


def test_every_transformer_call(run, golden):
    predictions = run.stages["transformer.pred"]
    assert len(predictions) == len(run.transformer_calls) == STEPS
    for i, (call, prediction) in enumerate(zip(run.transformer_calls, predictions)):
        assert_close(f"step{i}.model_img", call["hidden_states"], golden[f"step{i}.model_img"])
        assert_close(f"step{i}.t_vec", call["timestep"], golden[f"step{i}.t_vec"])
        assert torch.equal(call["guidance"], golden[f"step{i}.guidance_vec"])
        assert_close(f"step{i}.y", call["pooled_projections"], golden["cond.pooled"])
        assert_close(f"step{i}.txt", call["encoder_hidden_states"], golden["cond.tokens"])
        assert_close(f"step{i}.pred", prediction, golden[f"step{i}.pred"])


def test_latents_after_every_step(run, golden):
    expected = [golden[f"step{i}.model_img"][..., :64] for i in range(1, STEPS)] + [golden["latents.final_packed"]]
    assert len(run.latents) == STEPS
    for i, (latents, reference) in enumerate(zip(run.latents, expected)):
        assert_close(f"latents after step {i}", latents, reference)


def test_decoder_and_decoded_image(run, golden):
    assert_close("decoder.z_unscaled", run.once("decoder.z_unscaled"), golden["decoder.z_unscaled"])
    assert_close("inputs.orig_img", run.once("decoder.image"), golden["inputs.orig_img"])
    hole = torch.from_numpy(read_png(SAMPLER / "mask.png") == 255)[None, None].float()
    assert torch.equal(run.once("decoder.mask"), hole)
    assert_close("decoder.out", run.once("decoder.out"), golden["decoder.out"])
    # The reference truncates to 8 bits (`astype(uint8)`), the pipeline rounds: at most 1 LSB apart.
    image = np.asarray(run.output[0]).astype(int)
    assert np.abs(image - read_png(SAMPLER / "reference_output.png")).max() <= 1


def test_keep_unmasked_pastes_the_input_back_exactly(pipe, golden, run):
    pasted = recorded_call(pipe, keep_unmasked=True, **reference_call_arguments(golden))
    image, hole = read_png(SAMPLER / "image.png"), read_png(SAMPLER / "mask.png") == 255
    output, whole = np.asarray(pasted.output[0]), np.asarray(run.output[0])
    assert np.array_equal(output[~hole], image[~hole])
    assert np.array_equal(output[hole], whole[hole])


# ----------------------------------------------------------------------------------------------- other sizes


@pytest.fixture(scope="module")
def first_steps(pipe) -> dict[str, StageRecorder]:
    """For the 64x64 image and each MAE case: a 50-step call with the pipeline's defaults, stopped after step 1."""
    runs = {}
    for name, folder in (("schedule", SAMPLER), *((case, SAMPLER / case) for case in CASES)):
        runs[name] = recorded_call(
            pipe,
            read_png(folder / "image.png"),
            read_png(folder / "mask.png"),
            num_inference_steps=50,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
            stop_after_first_step=True,
        )
    return runs


@pytest.mark.parametrize("name", ("schedule", *CASES))
def test_schedule_of_50_steps(first_steps, golden, name):
    recorded = first_steps[name]
    assert len(recorded.latents) == 1  # stopped after the first step
    assert_close(f"{name}.timesteps50", recorded.sigmas, golden[f"{name}.timesteps50"])


@pytest.mark.parametrize("case", CASES)
def test_reference_preprocessing_at_other_sizes(first_steps, golden, case):
    """The converter's MAE input order ("reference") makes the reference's MAE input from the uint8 image, the hole
    present while it is resized, to the byte (OpenCV's 8-bit arithmetic when shrinking and enlarging), and so its
    conditioning."""
    recorded = first_steps[case]
    expected_input, expected_hole = reference_mae_input(SAMPLER / case)
    assert torch.equal(recorded.once("mae.mask"), expected_hole)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    eight_bit_steps = float(((recorded.once("mae.input") - expected_input) * std * 255).abs().max())
    assert eight_bit_steps <= 1e-3, f"{case}.input: {eight_bit_steps:.3f} 8-bit steps from the reference's"
    for stage in ("tokens", "pooled"):
        assert_close(f"{case}.{stage}", recorded.once(f"cond.{stage}"), golden[f"{case}.{stage}"])


@pytest.mark.parametrize("case", CASES)
def test_visible_preprocessing_of_a_float_image_blanked_in_the_hole(pipe, golden, case):
    """`mae_input_preprocessing="visible"` (blank, then resize) on a float32 image whose hole is already 0 is the
    reference's `prepare_data` on that image: no 8-bit rounding, so float32 agreement."""
    image = read_png(SAMPLER / case / "image.png").astype(np.float32) / 255
    mask = read_png(SAMPLER / case / "mask.png")
    image[mask == 255] = 0
    recorded = recorded_call(
        pipe,
        image,
        mask,
        stop_after_first_step=True,
        num_inference_steps=1,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        mae_input_preprocessing="visible",
    )
    for stage in ("tokens", "pooled"):
        assert_close(
            f"{case}.f32_zeroed.{stage}", recorded.once(f"cond.{stage}"), golden[f"{case}.f32_zeroed.{stage}"]
        )
