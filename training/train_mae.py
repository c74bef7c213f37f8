"""Fine-tune the ASUKA inpainting MAE (paper Sec. 3.1) with the paper's mask mixture.

Masks are enlarged to at least 75% masked patches (MAE mode). The loss is the pixel L2 on masked
patches; every parameter is trained, including the partial-patch parts (`alpha` and the 4-channel
`decoder_patch_embed`). AdamW with betas (0.9, 0.95) and weight decay 0.05.

    accelerate launch training/train_mae.py --pretrained_model_name_or_path <folder with mae/ or an AsukaMAE> \\
        --train_data_dir images/ --object_mask_dir object_masks/ --resolution 256 --max_train_steps 100000
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

import asuka_training
from asuka.models.mae import resize_area, resize_nearest
from asuka_training.steps import masked_patch_l2


# The model card's text (README.md of the final folder and of a pushed repo)
CARD = asuka_training.CardText(
    title="ASUKA inpainting MAE",
    description="An inpainting MAE fine-tuned with the ASUKA mask mixture (`asuka.models.AsukaMAE`).",
    component="asuka-mae",
)


def build_mae_parser():
    parser = asuka_training.build_parser(
        "Fine-tune the ASUKA inpainting MAE with the paper's masks (pixel L2 on masked patches)."
    )
    parser.add_argument(
        "--mae_min_patch_ratio",
        type=float,
        default=0.75,
        help="Masks are enlarged to at least this fraction of masked patches.",
    )
    parser.set_defaults(
        resolution=256,
        learning_rate=1e-4,
        lr_scheduler="cosine",
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_weight_decay=0.05,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> asuka_training.TrainingResult:
    from asuka.models import AsukaMAE

    args = asuka_training.parse_args(build_mae_parser(), argv)
    accelerator = asuka_training.setup_accelerator(args)
    mae = asuka_training.load_component(AsukaMAE, args.pretrained_model_name_or_path, "mae", args.revision)
    mae.requires_grad_(True)  # all of it, alpha and decoder_patch_embed included
    # Training feeds the "visible" input (the prior sees visible pixels only), so the MAE it writes says so, also when
    # it starts from the release's MAE ("reference").
    mae.register_to_config(input_preprocessing="visible")
    if args.gradient_checkpointing:
        if mae._supports_gradient_checkpointing:
            mae.enable_gradient_checkpointing()
        else:
            accelerator.print("AsukaMAE does not support gradient checkpointing; ignoring --gradient_checkpointing.")

    # Masks are generated at --resolution; an MAE patch covers patch_size * resolution / image_size pixels there.
    mask_patch = max(1, round(mae.config.patch_size * args.resolution / mae.config.image_size))
    setup = asuka_training.prepare(
        args,
        accelerator,
        {"mae": mae},
        tracker_name="train_mae",
        mae_mode=True,
        patch_size=mask_patch,
        mae_min_patch_ratio=args.mae_min_patch_ratio,
    )
    mae_model, validation = setup.model, setup.validation

    def train_step(batch: dict[str, torch.Tensor], global_step: int) -> dict[str, torch.Tensor]:
        pixels, mask = batch["pixel_values"].to(accelerator.device), batch["mask"].to(accelerator.device)
        _, reconstruction = mae_model(pixels, mask, return_dict=False)
        loss = masked_patch_l2(reconstruction, pixels, mask, mae.config.patch_size)
        setup.step(loss)
        return {
            "loss": loss,
            "alpha": accelerator.unwrap_model(mae_model).alpha.detach(),
            "lr": setup.last_lr(),
        }

    def validate(global_step: int) -> list[list[Image.Image]]:
        if not accelerator.is_main_process:
            return []
        model = accelerator.unwrap_model(mae_model)
        pixels, mask = validation["pixel_values"].to(accelerator.device), validation["mask"].to(accelerator.device)
        with torch.no_grad():
            reconstruction = model.reconstruct(pixels, mask)
        size = tuple(reconstruction.shape[-2:])
        hole, original = resize_nearest(mask, size), resize_area(pixels, size)
        composite = original * (1 - hole) + reconstruction * hole
        return [
            list(row)
            for row in zip(
                asuka_training.to_pil(original * (1 - hole)),
                asuka_training.to_pil(reconstruction),
                asuka_training.to_pil(composite),
                asuka_training.to_pil(original),
            )
        ]

    result, grid = asuka_training.run_training(setup, train_step, validate)
    return asuka_training.finish(setup, result, {"": mae_model}, None, CARD, grid)


if __name__ == "__main__":
    main()
