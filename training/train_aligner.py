"""Train the ASUKA aligner (paper Sec. 3.2) on a frozen inpainting backbone (denoiser, VAE) and MAE.

The backbone is the one of the pipeline folder given (its `model_index.json`'s pipeline class): its `BackboneSpec`
(`asuka.pipelines.backbones`) names the denoiser, how to call it and the training objective; SD-1.5- and
SD-2-inpainting train today, a backbone whose spec has no objective yet (FLUX.1-Fill) is refused.

The aligner maps the MAE prior to the denoiser's conditioning tokens. Only the aligner learns,
with the standard diffusion objective. With probability p the prior is computed from the *unmasked*
image (the "reconstructed prior"); p decays linearly from 1.0 to 0.1 over the first 2000 steps.
`--precomputed DIR` trains from the VAE posteriors and MAE priors `prepare_aligner_inputs.py` stored for the same
(image, mask) pairs instead of encoding them in every step; the latents are drawn from the posteriors the same way.

    accelerate launch training/train_aligner.py --pretrained_model_name_or_path <asuka-or-sd-inpaint folder> \\
        --mae_model_name_or_path <trained MAE> --train_data_dir images/ --resolution 512 --max_train_steps 20000

Learning rate: the paper prints 5e-2 (AdamW). Checked on tiny CPU runs (60 steps, batch 4): on the
tiny test pipeline 5e-2, 1e-3 and 1e-4 all stay finite with the same flat loss (~1.1; the random tiny
UNet barely listens to its conditioning), and on a conditioning-sensitive tiny UNet (cross-attention
output x300) the mean loss of the last 10 steps fell from 3.04 at step 1 to 1.37 (5e-2), 1.52 (1e-2)
and 1.64 (1e-3): no divergence, and 5e-2 learns fastest. The default therefore stays at the paper's
5e-2, with gradient clipping at 1.0 (--max_grad_norm); if a full-scale run spikes, use 1e-4.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

import asuka_training


# The model card's text (README.md of the final folder and of a pushed repo)
CARD = asuka_training.CardText(
    title="ASUKA aligner",
    description=(
        "An ASUKA aligner trained on a frozen SD-inpainting backbone and MAE prior (`asuka.models.AsukaAligner`)."
    ),
    component="asuka-aligner",
)


def reconstructed_prior_probability(step: int, start: float = 1.0, end: float = 0.1, decay_steps: int = 2000) -> float:
    """p(step): linear from `start` to `end` over `decay_steps` optimizer steps, then constant."""
    if decay_steps <= 0 or step >= decay_steps:
        return float(end)
    return float(start + (end - start) * max(step, 0) / decay_steps)


def build_aligner_parser():
    parser = asuka_training.build_parser(
        "Train the ASUKA aligner (MAE prior -> UNet conditioning) on a frozen SD-inpainting backbone."
    )
    add = parser.add_argument
    asuka_training.add_start_from(parser, "mae", "Trained AsukaMAE (default: <pretrained>/mae).")
    asuka_training.add_start_from(
        parser, "aligner", "Aligner to start from (default: <pretrained>/aligner when it exists, else a fresh one)."
    )
    add("--aligner_num_blocks", type=int, default=4, help="Blocks of a fresh aligner.")
    add("--aligner_head_dim", type=int, default=64, help="Head size of a fresh aligner.")
    add("--prior_prob_start", type=float, default=1.0, help="Reconstructed-prior probability p at step 0.")
    add("--prior_prob_end", type=float, default=0.1, help="p after the decay.")
    add("--prior_prob_decay_steps", type=int, default=2000, help="Steps of the linear decay of p.")
    add("--save_pipeline", action="store_true", help="Also write a complete AsukaPipeline to <output_dir>/pipeline.")
    add("--validation_inference_steps", type=int, default=25, help="Denoising steps of validation samples.")
    add(
        "--precomputed",
        type=str,
        default=None,
        help="A folder written by training/prepare_aligner_inputs.py: train from its stored VAE posteriors and MAE "
        "priors (no VAE encode, no MAE call) instead of --train_data_dir/--dataset_name.",
    )
    parser.set_defaults(learning_rate=5e-2, adam_weight_decay=1e-2)
    return parser


def _load_models(args):
    from asuka.models import AsukaAligner, AsukaMAE

    path = args.pretrained_model_name_or_path
    backbone = asuka_training.load_backbone(path, args.revision, args.variant)
    spec, in_channels = backbone.spec, backbone.denoiser.config.in_channels
    if in_channels != spec.denoiser_in_channels:
        raise ValueError(
            f"{path}: the {spec.denoiser} has {in_channels} input channels; an inpainting "
            f"({spec.denoiser_in_channels}-channel) one is required."
        )
    mae = asuka_training.load_component(AsukaMAE, args.mae_model_name_or_path or path, "mae", args.revision)
    if args.aligner_model_name_or_path:
        aligner = asuka_training.load_component(
            AsukaAligner, args.aligner_model_name_or_path, "aligner", args.revision
        )
    elif Path(path, "aligner", "config.json").is_file():
        aligner = AsukaAligner.from_pretrained(path, subfolder="aligner")
    else:
        aligner = AsukaAligner(
            in_dim=mae.config.decoder_embed_dim,
            hidden_dim=spec.context_width(backbone.denoiser.config),
            num_blocks=args.aligner_num_blocks,
            head_dim=args.aligner_head_dim,
            num_tokens=mae.num_patches,
        )
    return backbone, mae, aligner


def _precomputed_data(args, accelerator, backbone, mae) -> dict:
    """`prepare`'s dataset and validation batch read from --precomputed; `ValueError` for a folder prepared for
    another backbone, VAE, MAE or resolution."""
    expected = {
        "backbone": backbone.spec.name,
        "resolution": args.resolution,
        "vae": asuka_training.model_identity(backbone.vae),
        "mae": asuka_training.model_identity(mae),
    }
    dataset = asuka_training.PrecomputedDataset(args.precomputed, expected)
    dtype = str(asuka_training.weight_dtype_for(accelerator)).removeprefix("torch.")
    if dataset.manifest["dtype"] != dtype:
        accelerator.print(
            f"--precomputed {args.precomputed} stores {dataset.manifest['dtype']} inputs and this run computes in "
            f"{dtype}: the latents differ slightly from those of the run that encodes on the fly."
        )
    return {"dataset": dataset, "validation": dataset.validation_batch(args.num_validation_images)}


def main(argv: Sequence[str] | None = None) -> asuka_training.TrainingResult:
    args = asuka_training.parse_args(build_aligner_parser(), argv)
    accelerator = asuka_training.setup_accelerator(args)
    backbone, mae, aligner = _load_models(args)
    vae, denoiser, spec = backbone.vae, backbone.denoiser, backbone.spec
    noise_scheduler = spec.objective.training_scheduler(backbone.scheduler.config)

    data = _precomputed_data(args, accelerator, backbone, mae) if args.precomputed else {}  # fingerprints: fp32
    weight_dtype = asuka_training.freeze(accelerator, vae, denoiser, mae)
    aligner.requires_grad_(True)
    if args.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()  # frozen, but gradients still flow through it to the aligner

    setup = asuka_training.prepare(args, accelerator, {"aligner": aligner}, tracker_name="train_aligner", **data)
    aligner_model, validation = setup.model, setup.validation
    if args.precomputed:
        source = asuka_training.StoredInputs(accelerator.device, weight_dtype)
    else:
        source = asuka_training.EncodedInputs(vae, mae, accelerator.device, weight_dtype)

    def train_step(batch: dict[str, torch.Tensor], global_step: int) -> dict[str, torch.Tensor]:
        p = reconstructed_prior_probability(
            global_step, args.prior_prob_start, args.prior_prob_end, args.prior_prob_decay_steps
        )
        inputs = asuka_training.aligner_batch(source, batch, vae.config, p)
        with torch.no_grad():
            mask_latents = F.interpolate(inputs.mask, size=inputs.latents.shape[-2:])
            noisy, timesteps, target = spec.objective.noised(noise_scheduler, inputs.latents)
        tokens = aligner_model(inputs.prior.float(), return_dict=False)[0]  # tuples survive accelerate's fp32 cast
        prediction = spec.denoise(
            denoiser, noisy, mask_latents, inputs.masked_latents, timesteps, tokens.to(weight_dtype)
        )
        loss = F.mse_loss(prediction.float(), target.float())
        setup.step(loss)
        return {"loss": loss, "p": torch.tensor(p), "lr": setup.last_lr()}

    def build_pipeline(aligner):
        from asuka import pipelines

        scheduler = type(backbone.scheduler).from_config(backbone.scheduler.config)  # a fresh one, not re-read
        decoder = None
        if Path(args.pretrained_model_name_or_path, "decoder", "config.json").is_file():
            from asuka.models import AsukaDecoder

            decoder = AsukaDecoder.from_pretrained(args.pretrained_model_name_or_path, subfolder="decoder")
        return getattr(pipelines, spec.pipeline_class)(
            vae=vae,
            scheduler=scheduler,
            mae=mae,
            aligner=aligner,
            decoder=decoder,
            **{spec.denoiser: denoiser},
        )

    def validate(global_step: int) -> list[list[Image.Image]]:
        if not accelerator.is_main_process:
            return []
        pipe = build_pipeline(asuka_training.unwrapped_copy(accelerator, aligner_model))
        pipe.set_progress_bar_config(disable=True)
        seed, steps = args.seed or 0, args.validation_inference_steps
        return asuka_training.inpainting_rows(pipe, validation, seed, steps, accelerator.device, weight_dtype)

    result, grid = asuka_training.run_training(setup, train_step, validate)

    def trained_pipeline():
        from asuka.models import AsukaAligner

        return build_pipeline(AsukaAligner.from_pretrained(args.output_dir))

    return asuka_training.finish(
        setup, result, {"": aligner_model}, trained_pipeline if args.save_pipeline else None, CARD, grid
    )


if __name__ == "__main__":
    main()
