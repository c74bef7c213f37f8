"""Shared machinery of the asuka training scripts (diffusers-example conventions), split by concern.

`args` (flags), `data` (images via `asuka.imageio` + paper masks), `checkpoints` (resumable states in
diffusers format, `ComponentGroup`s of several models trained as one), `setup` (accelerator, optimizer, `prepare`,
`load_backbone`), `loop` (the loop and the final folder), `hub` (model card and upload), `aligner_loss` (the
aligner's loss of one batch, through the backbone's spec), `aligner_inputs` (that batch's latents and prior, encoded
on the fly or read back), `steps` (the decoder's latent corruption and the MAE's loss of one batch) and
`precomputed` (the shards `prepare_aligner_inputs.py` writes). Every script is
assembled the same way:

    args = parse_args(parser, argv, resolve=None)   # validated and normalised once; ValueError on bad flags
    accelerator = setup_accelerator(args)           # Accelerator + ProjectConfiguration + seed
    weight_dtype = freeze(accelerator, vae, unet)   # load the models; frozen ones: no grad, eval, cast
    unet = prepare_frozen(accelerator, unet)        # sharded under FSDP; save frozen_denoiser_for_saving(...)
    setup = prepare(args, accelerator, {"aligner": model}, tracker_name="train_aligner")
    result, grid = run_training(setup, train_step, validate)   # checkpoints, logs, grids
    return finish(setup, result, {"": setup.model}, make_pipeline, CardText(...), grid)  # final folder, card, push

`train_step(batch, global_step)` computes the loss, calls `setup.step(loss)` and returns scalars
to log (key "loss" is required); `validate(global_step)` returns rows of PIL images for a grid
(`inpainting_rows` for a pipeline).
A batch holds "pixel_values" (B,3,R,R) in [0,1], "mask" (B,1,R,R) with 1 = hole, "num_bad_images",
"num_bad_masks".
"""

from .aligner_inputs import (
    AlignerBatch,
    EncodedInputs,
    StoredInputs,
    aligner_batch,
    latent_memory_format,
    masked_image_encoder_of,
    sample_latents,
)
from .aligner_loss import AlignerPair, aligned_conditioning, aligner_loss
from .args import (
    add_data_arguments,
    add_start_from,
    build_parser,
    check_data_arguments,
    parse_args,
    serialisable_args,
)
from .checkpoints import (
    CHECKPOINT_PREFIX,
    ComponentGroup,
    fresh_copy,
    list_checkpoints,
    load_component,
    load_pretrained_into,
    register_diffusers_hooks,
    resolve_resume_path,
    resume_if_requested,
    save_checkpoint,
    save_diffusers_model,
    save_pretrained_parts,
    unwrapped_copy,
)
from .data import (
    ImageFolderDataset,
    ImageTransform,
    SampleMaker,
    StreamingImageDataset,
    build_dataset,
    collate,
    load_rgb,
    load_training_image,
    make_dataloader,
    validation_batch,
)
from .hub import CardText, push_folder_to_hub, write_model_card
from .loop import TrainingResult, finish, inpainting_rows, log_validation, run_training, to_pil
from .precomputed import PrecomputedDataset, input_identity
from .setup import (
    Backbone,
    TrainingSetup,
    freeze,
    frozen_denoiser_for_saving,
    load_backbone,
    load_scheduler,
    make_lr_scheduler,
    make_optimizer,
    optimizer_step,
    prepare,
    prepare_frozen,
    scaled_learning_rate,
    setup_accelerator,
    shards_frozen_models,
    weight_dtype_for,
)
from .steps import latent_augmentation, masked_patch_l2, one_step_x0


__all__ = [
    "AlignerBatch",
    "AlignerPair",
    "Backbone",
    "EncodedInputs",
    "PrecomputedDataset",
    "StoredInputs",
    "add_data_arguments",
    "add_start_from",
    "aligner_batch",
    "check_data_arguments",
    "aligned_conditioning",
    "aligner_loss",
    "CHECKPOINT_PREFIX",
    "CardText",
    "ComponentGroup",
    "fresh_copy",
    "ImageFolderDataset",
    "ImageTransform",
    "SampleMaker",
    "StreamingImageDataset",
    "TrainingResult",
    "TrainingSetup",
    "build_dataset",
    "build_parser",
    "collate",
    "finish",
    "freeze",
    "frozen_denoiser_for_saving",
    "inpainting_rows",
    "input_identity",
    "latent_augmentation",
    "latent_memory_format",
    "list_checkpoints",
    "load_component",
    "load_pretrained_into",
    "load_rgb",
    "load_backbone",
    "load_scheduler",
    "load_training_image",
    "log_validation",
    "make_dataloader",
    "make_lr_scheduler",
    "make_optimizer",
    "masked_image_encoder_of",
    "masked_patch_l2",
    "one_step_x0",
    "optimizer_step",
    "parse_args",
    "prepare",
    "prepare_frozen",
    "push_folder_to_hub",
    "register_diffusers_hooks",
    "resolve_resume_path",
    "resume_if_requested",
    "run_training",
    "sample_latents",
    "save_checkpoint",
    "save_diffusers_model",
    "save_pretrained_parts",
    "scaled_learning_rate",
    "serialisable_args",
    "setup_accelerator",
    "shards_frozen_models",
    "to_pil",
    "unwrapped_copy",
    "validation_batch",
    "weight_dtype_for",
    "write_model_card",
]
