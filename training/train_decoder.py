"""Train the ASUKA mask-conditioned decoder (paper Sec. 3.3), starting from the base VAE decoder.

The decoder reconstructs the original image from *corrupted* latents, conditioned on the
unaugmented unmasked pixels and the mask, so that at inference it removes the colour shift and the
artefacts of the diffusion model's latents while keeping the known region faithful:

* colour augmentation: ColorJitter(0.15, 0.2, 0.1, 0.03) on the image that is encoded;
* latent augmentation on 50% of samples: the frozen denoiser's one-step x0 estimate from the noised
  clean latent at a large timestep, conditioned on the clean masked-image latent and an all-zero
  mask (paper Eq. 1); the backbone's `BackboneSpec` (from the pipeline folder given) says how to call the
  denoiser and how its prediction gives x0;
* loss: L1, plus optional LPIPS (`--lpips_weight`, needs the `lpips` package and its downloaded
  weights) and an optional patch discriminator (`--discriminator_weight`), as in SD's VAE training.

    accelerate launch training/train_decoder.py --pretrained_model_name_or_path <asuka-or-sd-inpaint folder> \\
        --train_data_dir images/ --resolution 512 --max_train_steps 50000
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import asuka_training


if TYPE_CHECKING:
    from asuka.pipelines.backbones import BackboneSpec


# The model card's text (README.md of the final folder and of a pushed repo)
CARD = asuka_training.CardText(
    title="ASUKA decoder",
    description="A mask-conditioned ASUKA decoder (`asuka.models.AsukaDecoder`) trained from the base VAE decoder.",
    component="asuka-decoder",
)


COLOR_JITTER = {"brightness": 0.15, "contrast": 0.2, "saturation": 0.1, "hue": 0.03}


def color_jitter(pixels: torch.Tensor, jitter: nn.Module | None = None) -> torch.Tensor:
    """Independent ColorJitter(0.15, 0.2, 0.1, 0.03) per sample of a (B,3,H,W) batch in [0,1]; stays in [0,1]."""
    from torchvision.transforms import v2

    jitter = jitter or v2.ColorJitter(**COLOR_JITTER)
    return torch.stack([jitter(sample) for sample in pixels.float()]).clamp(0, 1).to(pixels.dtype)


def one_step_x0(
    denoiser: nn.Module,
    scheduler,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    conditioning: dict[str, torch.Tensor],
    backbone: BackboneSpec | None = None,
) -> torch.Tensor:
    """The denoiser's x0 estimate from `latents` noised to `timesteps`, with the clean latent as the
    masked-image condition and an all-zero mask (nothing to inpaint) — paper Eq. 1. `conditioning` is the
    backbone's (`prompt_embeds`, and `pooled_prompt_embeds` where it takes one); `backbone` (default: the
    SD-1.5-inpainting spec) says how to noise, how to call the denoiser and how its prediction gives x0."""
    if backbone is None:
        from asuka.pipelines.backbones import SD15_INPAINTING  # imported here: the pipelines load lazily

        backbone = SD15_INPAINTING
    noisy = backbone.objective.add_noise(scheduler, latents, noise, timesteps)
    zero_mask = torch.zeros_like(latents[:, :1])
    prediction = backbone.denoise(denoiser, noisy, timesteps, conditioning, latents, zero_mask)
    return backbone.objective.clean_estimate(scheduler, noisy, prediction, timesteps)


def latent_augmentation(
    latents: torch.Tensor,
    denoiser: nn.Module,
    scheduler,
    conditioning: dict[str, torch.Tensor],
    timestep_range: tuple[int, int],
    probability: float = 0.5,
    generator: torch.Generator | None = None,
    backbone: BackboneSpec | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each sample's (scaled) latent by `one_step_x0` with `probability`, at a timestep drawn
    from `timestep_range` (inclusive). Returns the latents and the boolean (B,) applied-mask."""
    batch_size, device = latents.shape[0], latents.device
    applied = torch.rand(batch_size, generator=generator, device="cpu").to(device) < probability
    if not applied.any():
        return latents, applied
    low, high = timestep_range
    count = int(applied.sum())
    timesteps = torch.randint(low, high + 1, (count,), generator=generator, device="cpu").to(device)
    noise = torch.randn(latents[applied].shape, generator=generator, device="cpu").to(device, latents.dtype)
    chosen = {name: value[applied] for name, value in conditioning.items()}
    with torch.no_grad():
        estimate = one_step_x0(denoiser, scheduler, latents[applied], noise, timesteps, chosen, backbone)
    out = latents.clone()
    out[applied] = estimate.to(latents.dtype)
    return out, applied


def build_decoder_parser():
    parser = asuka_training.build_parser("Train the ASUKA mask-conditioned decoder from the base VAE decoder.")
    add = parser.add_argument  # one call per flag: their alike shapes are declarations, not shared logic
    asuka_training.add_start_from(
        parser, "decoder", "Decoder to continue from (default: a fresh AsukaDecoder.from_vae of the base VAE)."
    )
    add("--latent_aug_prob", type=float, default=0.5, help="Share of samples whose latent is the x0 estimate.")
    add("--latent_aug_timestep_min", type=int, default=700, help="Smallest timestep of the latent augmentation.")
    add("--latent_aug_timestep_max", type=int, default=999, help="Largest timestep of the latent augmentation.")
    add("--no_color_jitter", action="store_true", help="Disable the colour augmentation of the encoded image.")
    add(
        "--lpips_weight",
        type=float,
        default=0.0,
        help="Weight of the LPIPS term (0 = off; needs `pip install lpips` and its weights).",
    )
    add("--discriminator_weight", type=float, default=0.0, help="Adversarial term weight (0 = no discriminator).")
    add("--discriminator_start_step", type=int, default=0, help="Step from which the adversarial term is used.")
    add("--discriminator_learning_rate", type=float, default=None, help="Discriminator lr (default: --learning_rate).")
    add("--save_pipeline", action="store_true", help="Also write a complete AsukaPipeline to <output_dir>/pipeline.")
    parser.set_defaults(learning_rate=8e-5, lr_scheduler="cosine")
    return parser


def main(argv: Sequence[str] | None = None) -> asuka_training.TrainingResult:
    from asuka.models import AsukaAligner, AsukaDecoder, AsukaMAE, PatchDiscriminator

    args = asuka_training.parse_args(build_decoder_parser(), argv)
    if not 0 <= args.latent_aug_timestep_min <= args.latent_aug_timestep_max:
        raise ValueError("--latent_aug_timestep_min/max must satisfy 0 <= min <= max.")
    if args.lpips_weight > 0:
        try:
            import lpips
        except ImportError as error:
            raise ValueError(
                "--lpips_weight > 0 needs the `lpips` package (pip install lpips; it downloads VGG weights)."
            ) from error
    accelerator = asuka_training.setup_accelerator(args)
    path = args.pretrained_model_name_or_path
    backbone = asuka_training.load_backbone(path, args.revision, args.variant)
    vae, denoiser, spec = backbone.vae, backbone.denoiser, backbone.spec
    noise_scheduler = spec.objective.training_scheduler(backbone.scheduler.config)
    if args.latent_aug_timestep_max >= noise_scheduler.config.num_train_timesteps:
        raise ValueError(
            f"--latent_aug_timestep_max must be < {noise_scheduler.config.num_train_timesteps} "
            "(the scheduler's train timesteps)."
        )
    has_prior = Path(path, "mae", "config.json").is_file() and Path(path, "aligner", "config.json").is_file()
    if args.save_pipeline and not has_prior:
        raise ValueError(
            "--save_pipeline needs mae/ and aligner/ in --pretrained_model_name_or_path (an AsukaPipeline folder)."
        )
    mae = AsukaMAE.from_pretrained(path, subfolder="mae") if has_prior else None
    aligner = AsukaAligner.from_pretrained(path, subfolder="aligner") if has_prior else None
    if args.decoder_model_name_or_path:
        decoder = asuka_training.load_component(
            AsukaDecoder, args.decoder_model_name_or_path, "decoder", args.revision
        )
    else:
        decoder = AsukaDecoder.from_vae(vae)

    weight_dtype = asuka_training.freeze(accelerator, vae, denoiser, mae, aligner)
    decoder.requires_grad_(True)
    if args.gradient_checkpointing and decoder._supports_gradient_checkpointing:
        decoder.enable_gradient_checkpointing()

    trainables, extra_optimizers = {"decoder": decoder}, {}
    if args.discriminator_weight > 0:
        trainables["discriminator"] = PatchDiscriminator()
        extra_optimizers["discriminator"] = torch.optim.AdamW(
            trainables["discriminator"].parameters(),
            lr=args.discriminator_learning_rate or asuka_training.scaled_learning_rate(args, accelerator),
            betas=(0.5, 0.9),
            weight_decay=args.adam_weight_decay,
        )
    setup = asuka_training.prepare(
        args, accelerator, trainables, tracker_name="train_decoder", extra_optimizers=extra_optimizers
    )
    decoder_model, validation = setup.model, setup.validation
    discriminator, disc_optimizer = setup.extras.get("discriminator", (None, None))
    perceptual = (
        lpips.LPIPS(net="vgg").to(accelerator.device).eval().requires_grad_(False) if args.lpips_weight > 0 else None
    )
    scaling, shift = vae.config.scaling_factor, getattr(vae.config, "shift_factor", None) or 0.0

    def conditioning(pixels: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Denoiser conditioning for the latent augmentation: the aligned MAE prior, or zeros for a plain backbone."""
        if aligner is not None:
            return {"prompt_embeds": aligner(mae.prior(pixels, torch.zeros_like(mask))).tokens.to(weight_dtype)}
        return spec.zero_conditioning(denoiser.config, 1, pixels.shape[0], pixels.device, weight_dtype)

    def corrupted_latents(pixels: torch.Tensor, mask: torch.Tensor, augment: bool = True) -> torch.Tensor:
        """Unscaled latents of the colour-jittered image, half of them replaced by the denoiser's x0 estimate."""
        with torch.no_grad():
            encoded = color_jitter(pixels) if augment and not args.no_color_jitter else pixels
            latents = (vae.encode(encoded * 2 - 1).latent_dist.sample() - shift) * scaling
            if augment and args.latent_aug_prob > 0:
                latents, _ = latent_augmentation(
                    latents,
                    denoiser,
                    noise_scheduler,
                    conditioning(pixels, mask),
                    (args.latent_aug_timestep_min, args.latent_aug_timestep_max),
                    args.latent_aug_prob,
                    backbone=spec,
                )
        return (latents / scaling + shift).float()

    def train_step(batch: dict[str, torch.Tensor], global_step: int) -> dict[str, torch.Tensor]:
        pixels = batch["pixel_values"].to(accelerator.device, weight_dtype)
        mask = batch["mask"].to(accelerator.device, weight_dtype)
        latents = corrupted_latents(pixels, mask)
        target = (pixels * 2 - 1).float()
        output = decoder_model(latents, target, mask.float(), return_dict=False)[0]
        l1 = F.l1_loss(output.float(), target)
        loss, logs = l1, {"l1": l1.detach()}
        if perceptual is not None:
            logs["lpips"] = perceptual(output.float(), target).mean()
            loss = loss + args.lpips_weight * logs["lpips"]
        use_gan = discriminator is not None and global_step >= args.discriminator_start_step
        if use_gan:
            logs["generator_adv"] = -discriminator(output.float()).mean()  # hinge generator loss
            loss = loss + args.discriminator_weight * logs["generator_adv"]
        setup.step(loss)
        if use_gan:
            disc_optimizer.zero_grad(set_to_none=True)  # drop what the generator's adversarial term left there
            real, fake = discriminator(target), discriminator(output.detach().float())
            disc_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
            accelerator.backward(disc_loss)
            disc_optimizer.step()
            disc_optimizer.zero_grad(set_to_none=True)
            logs["discriminator"] = disc_loss.detach()
        logs.update(loss=loss, lr=setup.last_lr())
        return logs

    def validate(global_step: int) -> list[list[Image.Image]]:
        if not accelerator.is_main_process:
            return []
        model = asuka_training.unwrapped_copy(accelerator, decoder_model)
        pixels = validation["pixel_values"].to(accelerator.device, weight_dtype)
        mask = validation["mask"].to(accelerator.device, weight_dtype)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(args.seed or 0)  # the same corruption at every validation
        latents = corrupted_latents(pixels, mask)
        torch.random.set_rng_state(generator_state)
        with torch.no_grad():
            baseline = vae.decode(latents.to(weight_dtype)).sample.float()
            decoded = model(latents, (pixels * 2 - 1).float(), mask.float(), return_dict=False)[0]
        to01 = lambda x: (x.float() + 1) / 2  # noqa: E731
        return [
            list(row)
            for row in zip(
                asuka_training.to_pil(pixels * (1 - mask)),
                asuka_training.to_pil(to01(baseline)),
                asuka_training.to_pil(to01(decoded)),
                asuka_training.to_pil(pixels),
            )
        ]

    result, grid = asuka_training.run_training(setup, train_step, validate)

    def trained_pipeline():
        from asuka import pipelines

        return getattr(pipelines, spec.pipeline_class)(
            vae=vae,
            scheduler=type(backbone.scheduler).from_config(backbone.scheduler.config),
            mae=mae,
            aligner=aligner,
            decoder=AsukaDecoder.from_pretrained(args.output_dir),
            **{spec.denoiser: denoiser},
        )

    components = {"": decoder_model, **({"discriminator": discriminator} if discriminator is not None else {})}
    return asuka_training.finish(
        setup, result, components, trained_pipeline if args.save_pipeline else None, CARD, grid
    )


if __name__ == "__main__":
    main()
