"""Train the ASUKA mask-conditioned decoder (paper Sec. 3.3), starting from the base VAE decoder.

The decoder reconstructs the original image from *corrupted* latents, conditioned on the
unaugmented unmasked pixels and the mask, so that at inference it removes the colour shift and the
artefacts of the diffusion model's latents while keeping the known region faithful:

* colour augmentation: ColorJitter(0.15, 0.2, 0.1, 0.03) on the image that is encoded;
* latent augmentation on 50% of samples: the frozen denoiser's one-step x0 estimate from the noised
  clean latent at a large timestep (SD's t in [700, 999]; FLUX's σ = t / 1000), conditioned on the clean
  masked-image latent, an all-zero mask (paper Eq. 1) and the ASUKA prior of the whole image (zeros for a plain
  backbone folder); the backbone's `BackboneSpec` (from the pipeline folder given) says how to call the denoiser,
  how to noise and how its prediction gives x0 (SD: ε or v; FLUX.1-Fill: flow matching, x0 = noisy - σ v, with
  the embedded guidance `--guidance_scale`, the release's 30 by default);
* loss: L1, plus optional LPIPS (`--lpips_weight`, needs the `lpips` package and its downloaded
  weights) and an optional patch discriminator (`--discriminator_weight`), as in SD's VAE training.

The backbone is SD-1.5/2-inpainting's (4 latent channels) or FLUX.1-Fill's (16): `--pretrained_model_name_or_path`
is an ASUKA pipeline folder or light repo (`AsukaPipeline`, `AsukaFluxPipeline`), whose MAE and aligner(s) give
the prior, or a plain backbone folder (`StableDiffusionInpaintPipeline`, `FluxFillPipeline`).

    accelerate launch training/train_decoder.py --pretrained_model_name_or_path <asuka, asuka-flux or backbone> \\
        --train_data_dir images/ --resolution 512 --max_train_steps 50000
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import asuka_training
from asuka_training.steps import latent_augmentation


# The model card's text (README.md of the final folder and of a pushed repo), per backbone kind
CARD = asuka_training.CardText(
    title="ASUKA decoder",
    description="A mask-conditioned ASUKA decoder (`asuka.models.AsukaDecoder`) trained from the base VAE decoder.",
    component="asuka-decoder",
)
FLUX_CARD = asuka_training.CardText(
    title="ASUKA-FLUX decoder",
    description=(
        "A 16-channel mask-conditioned ASUKA decoder (`asuka.models.AsukaDecoder`) for the FLUX.1-Fill VAE, trained "
        "from its decoder or from a previous ASUKA decoder."
    ),
    component="asuka-decoder",
    torch_dtype="bfloat16",
)


COLOR_JITTER = {"brightness": 0.15, "contrast": 0.2, "saturation": 0.1, "hue": 0.03}


def color_jitter(pixels: torch.Tensor, jitter: nn.Module | None = None) -> torch.Tensor:
    """Independent ColorJitter(0.15, 0.2, 0.1, 0.03) per sample of a (B,3,H,W) batch in [0,1]; stays in [0,1]."""
    from torchvision.transforms import v2

    jitter = jitter or v2.ColorJitter(**COLOR_JITTER)
    return torch.stack([jitter(sample) for sample in pixels.float()]).clamp(0, 1).to(pixels.dtype)


def build_decoder_parser():
    parser = asuka_training.build_parser("Train the ASUKA mask-conditioned decoder from the base VAE decoder.")
    add = parser.add_argument  # one call per flag: their alike shapes are declarations, not shared logic
    asuka_training.add_start_from(
        parser, "decoder", "Decoder to continue from (default: a fresh AsukaDecoder.from_vae of the base VAE)."
    )
    add("--latent_aug_prob", type=float, default=0.5, help="Share of samples whose latent is the x0 estimate.")
    add("--latent_aug_timestep_min", type=int, default=700, help="Smallest timestep of the latent augmentation.")
    add("--latent_aug_timestep_max", type=int, default=999, help="Largest timestep of the latent augmentation.")
    add(
        "--guidance_scale",
        type=float,
        default=None,
        help="Embedded guidance scale of the latent augmentation's denoiser calls, for a backbone that embeds one "
        "(default: the backbone's, FLUX.1-Fill's 30 as in the release; SD's UNet embeds none).",
    )
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
    add(
        "--save_pipeline",
        action="store_true",
        help="Also write the complete ASUKA pipeline (AsukaPipeline, AsukaFluxPipeline) to <output_dir>/pipeline.",
    )
    parser.set_defaults(learning_rate=8e-5, lr_scheduler="cosine")
    return parser


def main(argv: Sequence[str] | None = None) -> asuka_training.TrainingResult:
    from asuka.models import AsukaAligner, AsukaDecoder, AsukaMAE, PatchDiscriminator
    from asuka.pipelines.decode import vae_scale_factor_of

    args = asuka_training.parse_args(build_decoder_parser(), argv)
    if not 0 <= args.latent_aug_timestep_min <= args.latent_aug_timestep_max:
        raise ValueError("--latent_aug_timestep_min/max must satisfy 0 <= min <= max.")
    if not 0 <= args.latent_aug_prob <= 1:
        raise ValueError(f"--latent_aug_prob must be in [0, 1] (a share of the batch), got {args.latent_aug_prob}.")
    if args.guidance_scale is not None and args.guidance_scale < 0:
        raise ValueError(f"--guidance_scale must be >= 0, got {args.guidance_scale}.")
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
    vae, denoiser, spec, folder = backbone.vae, backbone.denoiser, backbone.spec, backbone.folder
    patch = vae_scale_factor_of(vae.config) * spec.latent_packing
    if args.resolution % patch:
        raise ValueError(
            f"--resolution must be a multiple of {patch} for the {spec.name} backbone (its VAE's factor times the "
            f"latent patch its {spec.denoiser} packs), got {args.resolution}."
        )
    if args.guidance_scale is not None and not denoiser.config.get("guidance_embeds", False):
        raise ValueError(
            f"--guidance_scale applies to a denoiser that embeds a guidance scale (FLUX.1-Fill's); the {spec.name} "
            f"backbone's {spec.denoiser} embeds none."
        )
    noise_scheduler = spec.objective.training_scheduler(backbone.scheduler.config)
    if args.latent_aug_timestep_max >= noise_scheduler.config.num_train_timesteps:
        raise ValueError(
            f"--latent_aug_timestep_max must be < {noise_scheduler.config.num_train_timesteps} "
            "(the scheduler's train timesteps)."
        )
    # the MAE and aligner(s) of an ASUKA pipeline folder or light repo give the prior (one aligner for SD; the token
    # and pooled aligners where the backbone takes a pooled vector, FLUX.1-Fill)
    aligner_names = ("aligner",) if spec.pooled_width is None else ("token_aligner", "pooled_aligner")
    has_prior = all(Path(folder, name, "config.json").is_file() for name in ("mae", *aligner_names))
    if args.save_pipeline and not has_prior:
        raise ValueError(
            f"--save_pipeline needs an ASUKA pipeline ({spec.pipeline_class} folder or light repo, with mae/ and "
            f"{'/, '.join(aligner_names)}/) as --pretrained_model_name_or_path; {path} has none."
        )
    mae = AsukaMAE.from_pretrained(folder, subfolder="mae") if has_prior else None
    aligners = [AsukaAligner.from_pretrained(folder, subfolder=name) for name in aligner_names] if has_prior else []
    aligner = asuka_training.AlignerPair(*aligners) if len(aligners) == 2 else next(iter(aligners), None)
    if args.decoder_model_name_or_path:
        decoder = asuka_training.load_component(
            AsukaDecoder, args.decoder_model_name_or_path, "decoder", args.revision
        )
    else:
        decoder = AsukaDecoder.from_vae(vae)
    if decoder.config.latent_channels != vae.config.latent_channels:
        raise ValueError(
            f"--decoder_model_name_or_path: the decoder takes {decoder.config.latent_channels} latent channels, the "
            f"{spec.name} VAE has {vae.config.latent_channels}; start from a decoder of this VAE."
        )
    weight_dtype = asuka_training.freeze(accelerator, vae, denoiser, mae)
    if aligner is not None:  # frozen in float32, as it was trained (asuka_training.aligned_conditioning's input)
        aligner.requires_grad_(False).eval().to(accelerator.device)
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
    denoiser = asuka_training.prepare_frozen(accelerator, denoiser)  # sharded under FSDP
    discriminator, disc_optimizer = setup.extras.get("discriminator", (None, None))
    perceptual = (
        lpips.LPIPS(net="vgg").to(accelerator.device).eval().requires_grad_(False) if args.lpips_weight > 0 else None
    )
    scaling, shift = vae.config.scaling_factor, getattr(vae.config, "shift_factor", None) or 0.0

    def conditioning(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Denoiser conditioning of the latent augmentation, as the spec's denoise call takes it: the aligned MAE prior
        of the whole image (nothing masked, as the zero mask says), or zeros for a plain backbone folder."""
        if aligner is None:
            return spec.zero_conditioning(denoiser.config, 1, pixels.shape[0], pixels.device, weight_dtype)
        prior = mae.prior(pixels, torch.zeros_like(pixels[:, :1]))
        return asuka_training.aligned_conditioning(spec, aligner, prior, weight_dtype)

    def corrupted_latents(pixels: torch.Tensor) -> torch.Tensor:
        """Unscaled latents of the colour-jittered image, half of them replaced by the denoiser's x0 estimate."""
        with torch.no_grad():
            encoded = pixels if args.no_color_jitter else color_jitter(pixels)
            latents = (vae.encode(encoded * 2 - 1).latent_dist.sample() - shift) * scaling
            if args.latent_aug_prob > 0:
                latents, _ = latent_augmentation(
                    latents,
                    denoiser,
                    noise_scheduler,
                    conditioning(pixels),
                    (args.latent_aug_timestep_min, args.latent_aug_timestep_max),
                    args.latent_aug_prob,
                    backbone=spec,
                    guidance=args.guidance_scale,
                )
        return (latents / scaling + shift).float()

    def train_step(batch: dict[str, torch.Tensor], global_step: int) -> dict[str, torch.Tensor]:
        pixels = batch["pixel_values"].to(accelerator.device, weight_dtype)
        mask = batch["mask"].to(accelerator.device, weight_dtype)
        latents = corrupted_latents(pixels)
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
        if not (accelerator.is_main_process or asuka_training.shards_frozen_models(accelerator)):
            return []  # a sharded denoiser runs on every process; `log_validation` keeps the main process's rows
        model = asuka_training.unwrapped_copy(accelerator, decoder_model)
        pixels = validation["pixel_values"].to(accelerator.device, weight_dtype)
        mask = validation["mask"].to(accelerator.device, weight_dtype)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(args.seed or 0)  # the same corruption at every validation
        latents = corrupted_latents(pixels)
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
        """The folder's ASUKA pipeline with the trained decoder (and a fresh copy of its loaded scheduler)."""
        from asuka import pipelines
        from asuka.models import AsukaVAEEncoder

        parts = {"aligner": aligner} if len(aligners) == 1 else dict(aligner.items())
        if Path(folder, "masked_image_encoder", "config.json").is_file():  # the release's, where it has one
            parts["masked_image_encoder"] = AsukaVAEEncoder.from_pretrained(folder, subfolder="masked_image_encoder")
        return getattr(pipelines, spec.pipeline_class)(
            vae=vae,
            scheduler=type(backbone.scheduler).from_config(backbone.scheduler.config),
            mae=mae,
            decoder=AsukaDecoder.from_pretrained(args.output_dir),
            **parts,
            **{spec.denoiser: asuka_training.frozen_denoiser_for_saving(args, accelerator, backbone)},
        )

    components = {"": decoder_model, **({"discriminator": discriminator} if discriminator is not None else {})}
    card = dataclasses.replace(CARD if spec.pooled_width is None else FLUX_CARD, backbone=spec)
    return asuka_training.finish(
        setup, result, components, trained_pipeline if args.save_pipeline else None, card, grid
    )


if __name__ == "__main__":
    main()
