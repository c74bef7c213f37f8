"""Train one StrDiffusion network (CVPR 2024) with the authors' objectives.

`--network structure|texture|discriminator` picks the network.

All three follow the authors' training code (train/{structure,texture,discriminator} of the official
repository). Their mask convention is used inside: M = 1 on KNOWN pixels (the batch's mask is 1 = hole).
Y = image in [0, 1], G = its grayscale, E = its Canny edge map (sigma 3 as in all training loaders).
A timestep t is drawn uniformly from 2..T per sample, and x_t ~ q(x_t | x0) is a forward-marginal sample.

* **structure**: x0 = G, mu = E*M. The net predicts the noise of x_t. The loss compares the predicted
  reverse step (the mean of the reverse SDE step taken with the net's score) with the posterior mean
  E[x_{t-1} | x_t, x0] (`IRSDEScheduler.reverse_optimum_step`). It is an L1 matching loss in which the
  hole counts 10x: per sample, mean(|d| * (M + 10 (1 - M))); then the mean over the batch.
* **texture**: x0 = Y, mu = Y*M, the same loss. The SPADE guide is a structure state at level t-1:
  a forward-marginal sample with x0 = G (the full grayscale, as in training; the sampler uses G*M) and mu = E*M.
* **discriminator**: y = texture x_t (mu = Y*M), y* = its posterior mean at t-1. s* = the structure
  posterior mean at t-1 from a structure x_t (x0 = G, mu = E*M). D is pushed UP on the real pair
  (t, y*, s*), softplus(-D), and DOWN on the un-denoised pair (t, y, s*), softplus(D). A triplet term
  TripletMarginLoss(anchor = D(t, y* M + y (1 - M), s*), positive = D_real, negative = D_fake) is added.
  As in the reference, the [B] vectors of logits go straight into the triplet loss, so its distances are
  taken over the batch as one vector, not per sample. D's minibatch-stddev channel uses the config's
  group (min(B, 4)), like the authors' training. Quirk kept: training feeds D the full texture state while
  the sampler feeds state*M; `--discriminator_masked_input` feeds state*M (all three texture inputs).

    accelerate launch training/train_strdiffusion.py --network texture \\
        --pretrained_model_name_or_path <StrDiffusionPipeline folder> --train_data_dir places2/ \\
        --max_train_steps 400000 --output_dir out/texture --save_pipeline

Defaults follow the authors' yml: 256 px, batch 16, Adam lr 1e-4 with betas (0.9, 0.99), no weight
decay and no gradient clipping for the denoisers. The discriminator uses Adam lr 1e-4 with betas (0.5, 0.99).
T and max_sigma come from the pipeline's IR-SDE scheduler (the released Places2 models use T=400).
The authors halve the lr at 2M/4M/6M of 8M steps; here `--lr_scheduler` is constant unless you choose one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

import asuka_training


NETWORKS = ("structure", "texture", "discriminator")
SUBFOLDERS = {"structure": "structure_unet", "texture": "texture_unet", "discriminator": "discriminator"}
HOLE_WEIGHT = 10.0


def matching_loss(
    prediction: torch.Tensor, target: torch.Tensor, known: torch.Tensor, hole_weight: float = HOLE_WEIGHT
) -> torch.Tensor:
    """The authors' masked L1 matching loss: per sample, mean(|p - t| on known) + hole_weight * mean(|p - t| on hole),
    both means over all C*H*W elements; then the batch mean. `known` (B,1,H,W) is 1 on known pixels."""
    weight = known + hole_weight * (1 - known)
    per_sample = ((prediction - target).abs() * weight).flatten(1).mean(1)
    return per_sample.mean()


def discriminator_loss(
    d_real: torch.Tensor, d_fake: torch.Tensor, d_anchor: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """softplus(-D_real) + softplus(D_fake) (batch means) + triplet(anchor, real, fake) on the [B] logit vectors."""
    real = F.softplus(-d_real.reshape(-1)).mean()
    fake = F.softplus(d_fake.reshape(-1)).mean()
    triplet = F.triplet_margin_loss(d_anchor.reshape(-1), d_real.reshape(-1), d_fake.reshape(-1))
    return real + fake + triplet, {
        "loss_real": real.detach(),
        "loss_fake": fake.detach(),
        "loss_triplet": triplet.detach(),
    }


def sample_timesteps(batch_size: int, num_train_timesteps: int, device: torch.device) -> torch.Tensor:
    """t ~ U{2..T} per sample (the authors never train t = 1: the structure guide lives at t - 1 >= 1)."""
    if num_train_timesteps < 2:
        raise ValueError(f"StrDiffusion training needs a scheduler with T >= 2, got T={num_train_timesteps}.")
    return torch.randint(2, num_train_timesteps + 1, (batch_size,), device=device)


def build_strdiffusion_parser():
    parser = asuka_training.build_parser(
        "Train a StrDiffusion network (structure denoiser, texture denoiser or discriminator)."
    )
    add = parser.add_argument
    add("--network", type=str, required=True, choices=NETWORKS, help="Which network to train.")
    asuka_training.add_start_from(
        parser,
        "component",
        "Start from this component folder instead of the pipeline's own (structure_unet/, texture_unet/ "
        "or discriminator/).",
    )
    add(
        "--canny_sigma",
        type=float,
        default=3.0,
        help="Canny sigma of the structure maps (3 in the authors' training loaders).",
    )
    add(
        "--hole_weight", type=float, default=HOLE_WEIGHT, help="Weight of the hole in the denoisers' L1 matching loss."
    )
    add(
        "--discriminator_masked_input",
        action="store_true",
        help="Feed D the texture states times the known mask (what the sampler does) instead of the full states.",
    )
    add(
        "--save_pipeline",
        action="store_true",
        help="Also write a complete StrDiffusionPipeline to <output_dir>/pipeline.",
    )
    add(
        "--validation_inference_steps",
        type=int,
        default=None,
        help="Sampler steps of validation samples (default: all T).",
    )
    parser.set_defaults(
        resolution=256,
        train_batch_size=16,
        learning_rate=1e-4,
        adam_beta1=None,
        adam_beta2=0.99,
        adam_weight_decay=0.0,
        max_grad_norm=0.0,
    )
    return parser


def _resolve(args) -> dict[str, float]:
    """Reject what the StrDiffusion networks cannot do; the authors' Adam beta1: 0.9 for G, 0.5 for D."""
    if args.gradient_checkpointing:
        raise ValueError(
            "--gradient_checkpointing: the StrDiffusion networks do not support it; lower --train_batch_size instead."
        )
    if args.network == "discriminator" and args.train_batch_size > 4 and args.train_batch_size % 4:
        raise ValueError(
            f"--train_batch_size {args.train_batch_size}: the discriminator's minibatch-stddev group is 4, "
            "so a batch above 4 must be a multiple of 4."
        )
    if args.adam_beta1 is not None:
        return {}
    return {"adam_beta1": 0.5 if args.network == "discriminator" else 0.9}


def _load(args):
    from asuka.models import StrDiffusionDiscriminator, StrDiffusionUNet
    from asuka.schedulers.ir_sde import IRSDEScheduler

    path = args.pretrained_model_name_or_path
    if Path(path).is_dir() and not (Path(path) / "scheduler" / "scheduler_config.json").is_file():
        raise ValueError(
            f"{path!r} is not a StrDiffusionPipeline folder (no scheduler/); pass one, e.g. from save_pretrained."
        )
    scheduler = IRSDEScheduler.from_pretrained(path, subfolder="scheduler", revision=args.revision)
    cls = StrDiffusionDiscriminator if args.network == "discriminator" else StrDiffusionUNet
    subfolder = SUBFOLDERS[args.network]
    model = asuka_training.load_component(cls, args.component_model_name_or_path or path, subfolder, args.revision)
    expected = {"structure": 0, "texture": 1}.get(args.network)
    if expected is not None and bool(model.config.structure_channels) != bool(expected):
        raise ValueError(
            f"--network {args.network}: the loaded StrDiffusionUNet has structure_channels="
            f"{model.config.structure_channels}; the {args.network} denoiser needs "
            f"{'>0 (SPADE)' if expected else '0'}."
        )
    return scheduler, model


def main(argv: Sequence[str] | None = None) -> asuka_training.TrainingResult:
    from asuka.pipelines.pipeline_strdiffusion import extract_structure

    args = asuka_training.parse_args(build_strdiffusion_parser(), argv, resolve=_resolve)
    accelerator = asuka_training.setup_accelerator(args)
    scheduler, model = _load(args)
    model.requires_grad_(True)
    subfolder = SUBFOLDERS[args.network]
    total = scheduler.config.num_train_timesteps

    setup = asuka_training.prepare(
        args, accelerator, {subfolder: model}, tracker_name=f"train_strdiffusion_{args.network}"
    )
    net, validation = setup.model, setup.validation

    def forward_state(x0: torch.Tensor, mu: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return scheduler.add_noise(x0, torch.randn_like(x0), t, mu)

    def train_step(batch: dict[str, torch.Tensor], global_step: int) -> dict[str, torch.Tensor]:
        pixels = batch["pixel_values"].to(accelerator.device, torch.float32)
        known = 1 - batch["mask"].to(accelerator.device, torch.float32)
        gray, edges = (m.to(accelerator.device) for m in extract_structure(pixels, args.canny_sigma))
        t = sample_timesteps(pixels.shape[0], total, accelerator.device)
        mu_s = edges * known
        logs: dict[str, torch.Tensor] = {}
        if args.network == "discriminator":
            with torch.no_grad():
                mu = pixels * known
                state = forward_state(pixels, mu, t)
                real = scheduler.reverse_optimum_step(state, pixels, t, mu)
                structure = scheduler.reverse_optimum_step(forward_state(gray, mu_s, t), gray, t, mu_s)
                anchor = real * known + state * (1 - known)
                if args.discriminator_masked_input:
                    state, real, anchor = state * known, real * known, anchor * known
            d_real, d_fake, d_anchor = (net(t, x, structure).float() for x in (real, state, anchor))
            loss, logs = discriminator_loss(d_real, d_fake, d_anchor)
        else:
            x0 = gray if args.network == "structure" else pixels
            mu = x0 * known if args.network == "texture" else mu_s
            with torch.no_grad():
                state = forward_state(x0, mu, t)
                target = scheduler.reverse_optimum_step(state, x0, t, mu)
                guide = (forward_state(gray, mu_s, t - 1),) if args.network == "texture" else ()
            noise_pred = net(state, mu, t, *guide).float()
            prediction = scheduler.reverse_sde_step_mean(state, scheduler.score_from_noise(noise_pred, t), t, mu)
            loss = matching_loss(prediction, target, known, args.hole_weight)
        setup.step(loss)
        return {"loss": loss, "lr": setup.last_lr(), **logs}

    def build_pipeline(component):
        from asuka import StrDiffusionPipeline

        pipe = StrDiffusionPipeline.from_pretrained(
            args.pretrained_model_name_or_path, revision=args.revision, **{subfolder: component}
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def validate(global_step: int) -> list[list[Image.Image]]:
        if not accelerator.is_main_process:
            return []
        pipe = build_pipeline(asuka_training.unwrapped_copy(accelerator, net)).to(accelerator.device)
        seed, steps = args.seed or 0, args.validation_inference_steps
        return asuka_training.inpainting_rows(pipe, validation, seed, steps, accelerator.device)

    result, grid = asuka_training.run_training(setup, train_step, validate)

    def trained_pipeline():
        return build_pipeline(type(model).from_pretrained(args.output_dir))

    card = asuka_training.CardText(
        title=f"StrDiffusion {args.network} network",
        description=(
            f"The StrDiffusion (CVPR 2024) {args.network} network "
            f"(`asuka.models.{type(model).__name__}`, `{subfolder}/` of a `StrDiffusionPipeline`), "
            "trained with the authors' objectives."
        ),
        component=f"strdiffusion-{args.network}",
    )
    return asuka_training.finish(
        setup, result, {"": net}, trained_pipeline if args.save_pipeline else None, card, grid
    )


if __name__ == "__main__":
    main()
