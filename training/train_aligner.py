"""Train the ASUKA aligner(s) (paper Sec. 3.2) on a frozen inpainting backbone (denoiser, VAE) and MAE.

The backbone is the one of the pipeline folder given (its `model_index.json`'s pipeline class): its `BackboneSpec`
(`asuka.pipelines.backbones`) names the denoiser, how to call it and the training objective.

* SD-1.5- and SD-2-inpainting (an `AsukaPipeline` or `StableDiffusionInpaintPipeline` folder): one aligner maps
  the MAE prior to the UNet's context tokens, with the DDPM objective (ε or v, as the scheduler config says).
* FLUX.1-Fill (an `AsukaFluxPipeline` folder, a light repo of one, or a `FluxFillPipeline` folder with
  --mae_model_name_or_path): the token aligner (in place of T5) and the pooled aligner (in place of pooled CLIP)
  learn together, each pulled towards its null embedding by its `condition_weight` as `AsukaFluxPipeline` uses
  them, with FLUX's flow-matching objective (σ from --timestep_density, optionally --timestep_shift, velocity target
  noise - x0) and the embedded guidance fixed (--guidance_scale, the release's 30) or drawn per sample
  (--guidance_range).

Only the aligner(s) learn. With probability p the prior is computed from the *unmasked* image (the "reconstructed
prior"); p decays linearly from 1.0 to 0.1 over the first 2000 steps. The loss of one batch is
`asuka_training.aligner_loss`, its inputs `asuka_training.aligner_batch`'s: encoded on the fly, or with
`--precomputed DIR` read from the VAE posteriors and MAE priors `prepare_aligner_inputs.py` stored for the same
(image, mask) pairs, the latents drawn from the posteriors the same way.

    accelerate launch training/train_aligner.py --pretrained_model_name_or_path <asuka-or-sd-inpaint folder> \\
        --mae_model_name_or_path <trained MAE> --train_data_dir images/ --resolution 512 --max_train_steps 20000

The learning rate defaults to the paper's 5e-2 (AdamW), with gradient clipping at 1.0 (--max_grad_norm); if a
full-scale run spikes, use 1e-4 (docs/training.md, "Aligner learning rate").
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

import asuka_training


# The model card's text (README.md of the final folder and of a pushed repo), per backbone kind
CARD = asuka_training.CardText(
    title="ASUKA aligner",
    description=(
        "An ASUKA aligner trained on a frozen SD-inpainting backbone and MAE prior (`asuka.models.AsukaAligner`)."
    ),
    component="asuka-aligner",
)
FLUX_CARD = asuka_training.CardText(
    title="ASUKA-FLUX aligners",
    description=(
        "The token and pooled ASUKA aligners (`token_aligner/`, `pooled_aligner/`, `asuka.models.AsukaAligner`) "
        "trained on a frozen FLUX.1-Fill backbone and MAE prior, in place of its T5 and pooled CLIP conditioning."
    ),
    component="asuka-aligner",
    torch_dtype="bfloat16",
)

# The flow-matching objective's fields that flags set (`FlowMatchingObjective`), by flag.
OBJECTIVE_FLAGS = {
    "timestep_density": "weighting_scheme",
    "logit_mean": "logit_mean",
    "logit_std": "logit_std",
    "mode_scale": "mode_scale",
    "timestep_shift": "shift",
}
# Flags that apply to a backbone with an embedded guidance scale and a pooled vector (FLUX.1-Fill) only.
FLUX_ONLY_FLAGS = (*OBJECTIVE_FLAGS, "guidance_scale", "guidance_range", "pooled_aligner_head_dim", "condition_weight")


def reconstructed_prior_probability(step: int, start: float = 1.0, end: float = 0.1, decay_steps: int = 2000) -> float:
    """p(step): linear from `start` to `end` over `decay_steps` optimizer steps, then constant."""
    if decay_steps <= 0 or step >= decay_steps:
        return float(end)
    return float(start + (end - start) * max(step, 0) / decay_steps)


def build_aligner_parser():
    parser = asuka_training.build_parser(
        "Train the ASUKA aligner(s) (MAE prior -> the denoiser's conditioning) on a frozen inpainting backbone."
    )
    add = parser.add_argument  # one call per flag: their alike shapes are declarations, not shared logic
    asuka_training.add_start_from(parser, "mae", "Trained AsukaMAE (default: <pretrained>/mae).")
    asuka_training.add_start_from(
        parser,
        "aligner",
        "Aligner(s) to start from: an AsukaAligner (SD) or a folder with token_aligner/ and pooled_aligner/ (FLUX: "
        "a converted release, a light repo, a previous run). Default: those of <pretrained> when it has them, else "
        "fresh ones.",
    )
    add("--aligner_num_blocks", type=int, default=4, help="Blocks of a fresh aligner.")
    add(
        "--aligner_head_dim",
        type=int,
        default=None,
        help="Head size of a fresh (token) aligner (default 64; FLUX's token aligner 128, as the release's).",
    )
    add("--pooled_aligner_head_dim", type=int, default=None, help="FLUX: head size of a fresh pooled aligner (64).")
    add(
        "--condition_weight",
        type=float,
        default=None,
        help="FLUX: the aligners' weight towards the conditioning, null + w * (x - null), as the pipeline applies it "
        "(default: a loaded aligner's own, 0.5 for fresh ones as in the release).",
    )
    add(
        "--timestep_density",
        type=str,
        default=None,
        help="FLUX: density of the flow-matching σ: logit_normal (default), mode or uniform.",
    )
    add("--logit_mean", type=float, default=None, help="FLUX: mean of the logit-normal density (0).")
    add("--logit_std", type=float, default=None, help="FLUX: standard deviation of the logit-normal density (1).")
    add("--mode_scale", type=float, default=None, help="FLUX: scale of the mode density (1.29).")
    add(
        "--timestep_shift",
        type=str,
        default=None,
        help="FLUX: shift of σ: none (default), static (the scheduler's shift, 3) or resolution (FLUX's "
        "resolution-dependent inference shift).",
    )
    add("--guidance_scale", type=float, default=None, help="FLUX: the embedded guidance scale (the release's 30).")
    add(
        "--guidance_range",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="FLUX: draw the embedded guidance scale per sample, uniformly in [LOW, HIGH], instead of a fixed one.",
    )
    add("--prior_prob_start", type=float, default=1.0, help="Reconstructed-prior probability p at step 0.")
    add("--prior_prob_end", type=float, default=0.1, help="p after the decay.")
    add("--prior_prob_decay_steps", type=int, default=2000, help="Steps of the linear decay of p.")
    add(
        "--save_pipeline",
        action="store_true",
        help="Also write a complete pipeline (AsukaPipeline, AsukaFluxPipeline) to <output_dir>/pipeline.",
    )
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


def _check_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The flags' own consistency (the backbone's is checked once it is loaded)."""
    if args.guidance_range is not None:
        low, high = args.guidance_range
        if not 0 <= low <= high:
            raise ValueError(f"--guidance_range LOW HIGH must satisfy 0 <= LOW <= HIGH, got {low} {high}.")
        if args.guidance_scale is not None:
            raise ValueError("Give --guidance_scale (a fixed scale) or --guidance_range (drawn per sample), not both.")
    if args.guidance_scale is not None and args.guidance_scale < 0:
        raise ValueError(f"--guidance_scale must be >= 0, got {args.guidance_scale}.")
    return {}


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
    given = [f"--{flag}" for flag in FLUX_ONLY_FLAGS if getattr(args, flag) is not None]
    if spec.pooled_width is None and given:
        raise ValueError(
            f"{given} apply to a backbone with a pooled vector, null embeddings and flow matching (FLUX.1-Fill); the "
            f"{spec.name!r} backbone takes none of them."
        )
    folder = backbone.folder
    local_without_mae = Path(folder).is_dir() and not Path(folder, "mae", "config.json").is_file()
    if args.mae_model_name_or_path is None and local_without_mae:  # a Hub repo's mae/ is looked for there
        raise ValueError(
            f"{path} has no mae/ (a plain {spec.base_pipeline_class} folder): pass --mae_model_name_or_path, an "
            "AsukaMAE folder (e.g. from `python -m asuka.convert mae` or training/train_mae.py)."
        )
    mae = asuka_training.load_component(AsukaMAE, args.mae_model_name_or_path or folder, "mae", args.revision)
    names = ("aligner",) if spec.pooled_width is None else ("token_aligner", "pooled_aligner")
    source = args.aligner_model_name_or_path
    if source is None and all(Path(folder, name, "config.json").is_file() for name in names):
        source = folder
    if source is not None and len(names) > 1 and Path(source).is_dir():
        missing = [name for name in names if not Path(source, name, "config.json").is_file()]
        if missing:
            raise ValueError(
                f"--aligner_model_name_or_path {source} has no {missing}; accepted: a folder with token_aligner/ "
                "and pooled_aligner/ (a converted ASUKA-FLUX release, a light repo, the output of a FLUX run)."
            )
    if source is not None:
        aligners = [asuka_training.load_component(AsukaAligner, source, name, args.revision) for name in names]
    else:
        aligners = _fresh_aligners(args, spec, backbone.denoiser.config, mae)
    if args.condition_weight is not None:
        for aligner in aligners:
            aligner.register_to_config(condition_weight=args.condition_weight)
    if spec.pooled_width is None:
        return backbone, mae, aligners[0]
    return backbone, mae, asuka_training.AlignerPair(*aligners)


def _fresh_aligners(args: argparse.Namespace, spec, denoiser_config, mae) -> list:
    """New aligners from the MAE's tokens and width to each conditioning the denoiser takes: the tokens (and the
    pooled vector, with the spec's null embeddings and the release's condition weight 0.5)."""
    from asuka.models import AsukaAligner

    widths = [spec.context_width(denoiser_config)]
    head_dims = [args.aligner_head_dim or (64 if spec.pooled_width is None else 128)]
    if spec.pooled_width is not None:
        widths.append(denoiser_config[spec.pooled_width])
        head_dims.append(args.pooled_aligner_head_dim or 64)
    null_kinds = spec.null_embeddings or (None,)
    return [
        AsukaAligner(
            in_dim=mae.config.decoder_embed_dim,
            hidden_dim=width,
            num_blocks=args.aligner_num_blocks,
            head_dim=head_dim,
            num_tokens=mae.num_patches,
            **({} if null is None else {"null_embedding": null, "condition_weight": 0.5}),
        )
        for width, head_dim, null in zip(widths, head_dims, null_kinds)
    ]


def _objective(args: argparse.Namespace, spec):
    """The spec's objective with the fields the flags set (`dataclasses.replace` checks them: ValueError)."""
    fields = {field: getattr(args, flag) for flag, field in OBJECTIVE_FLAGS.items() if getattr(args, flag) is not None}
    return dataclasses.replace(spec.objective, **fields) if fields else spec.objective


def _precomputed_data(args, accelerator, backbone, mae, masked_image_encoder) -> dict:
    """`prepare`'s dataset and validation batch read from --precomputed; `ValueError` for a folder prepared for
    another backbone, VAE, MAE or resolution."""
    expected = asuka_training.input_identity(backbone, mae, masked_image_encoder, args.resolution)
    dataset = asuka_training.PrecomputedDataset(args.precomputed, expected)
    dtype = str(asuka_training.weight_dtype_for(accelerator)).removeprefix("torch.")
    if dataset.manifest["dtype"] != dtype:
        accelerator.print(
            f"--precomputed {args.precomputed} stores {dataset.manifest['dtype']} inputs and this run computes in "
            f"{dtype}: the latents differ slightly from those of the run that encodes on the fly."
        )
    return {"dataset": dataset, "validation": dataset.validation_batch(args.num_validation_images)}


def _draw_guidance(args: argparse.Namespace, batch_size: int, device: torch.device) -> float | torch.Tensor | None:
    """The embedded guidance scale of a batch: --guidance_range drawn per sample, else --guidance_scale (None: the
    backbone's default)."""
    if args.guidance_range is None:
        return args.guidance_scale
    low, high = args.guidance_range
    return torch.empty(batch_size, device=device).uniform_(low, high)


def main(argv: Sequence[str] | None = None) -> asuka_training.TrainingResult:
    args = asuka_training.parse_args(build_aligner_parser(), argv, resolve=_check_flags)
    accelerator = asuka_training.setup_accelerator(args)
    backbone, mae, aligner = _load_models(args)
    vae, denoiser, spec = backbone.vae, backbone.denoiser, backbone.spec
    objective = _objective(args, spec)
    noise_scheduler = objective.training_scheduler(backbone.scheduler.config)
    masked_image_encoder = asuka_training.masked_image_encoder_of(backbone.folder)
    data = {}  # the identities are those of the loaded (float32) weights
    if args.precomputed:
        data = _precomputed_data(args, accelerator, backbone, mae, masked_image_encoder)
    weight_dtype = asuka_training.freeze(accelerator, vae, denoiser, mae, masked_image_encoder)
    aligner.requires_grad_(True)
    if args.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()  # frozen, but gradients still flow through it to the aligner

    trainable = "aligner" if spec.pooled_width is None else "aligners"
    setup = asuka_training.prepare(args, accelerator, {trainable: aligner}, tracker_name="train_aligner", **data)
    aligner_model, validation = setup.model, setup.validation
    denoiser = asuka_training.prepare_frozen(accelerator, denoiser)  # sharded under FSDP
    if args.precomputed:
        source = asuka_training.StoredInputs(accelerator.device, weight_dtype, vae)
    else:
        source = asuka_training.EncodedInputs(vae, mae, accelerator.device, weight_dtype, masked_image_encoder)

    def train_step(batch: dict[str, torch.Tensor], global_step: int) -> dict[str, torch.Tensor]:
        p = reconstructed_prior_probability(
            global_step, args.prior_prob_start, args.prior_prob_end, args.prior_prob_decay_steps
        )
        inputs = asuka_training.aligner_batch(source, batch, vae.config, p)
        loss = asuka_training.aligner_loss(
            spec,
            denoiser,
            noise_scheduler,
            aligner_model,
            inputs.prior,
            inputs.latents,
            inputs.masked_latents,
            inputs.mask,
            objective=objective,
            guidance=_draw_guidance(args, len(inputs.mask), accelerator.device),
        )
        setup.step(loss)
        return {"loss": loss, "p": torch.tensor(p), "lr": setup.last_lr()}

    def build_pipeline(trained, denoiser):
        from asuka import pipelines
        from asuka.models import AsukaDecoder

        scheduler = type(backbone.scheduler).from_config(backbone.scheduler.config)  # a fresh one, not re-read
        decoder = None
        if Path(backbone.folder, "decoder", "config.json").is_file():
            decoder = AsukaDecoder.from_pretrained(backbone.folder, subfolder="decoder")
        asuka_parts = {"aligner": trained} if spec.pooled_width is None else dict(trained.items())
        if masked_image_encoder is not None:
            asuka_parts["masked_image_encoder"] = masked_image_encoder
        return getattr(pipelines, spec.pipeline_class)(
            vae=vae, scheduler=scheduler, mae=mae, decoder=decoder, **asuka_parts, **{spec.denoiser: denoiser}
        )

    def validate(global_step: int) -> list[list[Image.Image]]:
        if not (accelerator.is_main_process or asuka_training.shards_frozen_models(accelerator)):
            return []  # a sharded denoiser runs on every process; `log_validation` keeps the main process's rows
        pipe = build_pipeline(asuka_training.unwrapped_copy(accelerator, aligner_model), denoiser)
        pipe.set_progress_bar_config(disable=True)
        seed, steps = args.seed or 0, args.validation_inference_steps
        return asuka_training.inpainting_rows(pipe, validation, seed, steps, accelerator.device, weight_dtype)

    result, grid = asuka_training.run_training(setup, train_step, validate)

    def trained_pipeline():
        trained = asuka_training.fresh_copy(accelerator.unwrap_model(aligner_model))
        asuka_training.load_pretrained_into(trained, args.output_dir)
        return build_pipeline(trained, asuka_training.frozen_denoiser_for_saving(args, accelerator, backbone))

    card = dataclasses.replace(CARD if spec.pooled_width is None else FLUX_CARD, backbone=spec)
    return asuka_training.finish(
        setup, result, {"": aligner_model}, trained_pipeline if args.save_pipeline else None, card, grid
    )


if __name__ == "__main__":
    main()
