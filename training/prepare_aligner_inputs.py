"""Precompute the aligner's inputs once: per (image, mask) pair of the training data, the frozen VAE's posteriors of
the image and of the masked image (mean and standard deviation) and the frozen MAE's two priors (of the masked and of
the whole image), in safetensors shards that `train_aligner.py --precomputed DIR` trains from without a VAE encode
or an MAE call.

The pairs are those the on-the-fly run draws: the same data and mask flags and `--seed` give the same crops, flips
and masks (`asuka_training.build_dataset`, `asuka.masks`), `--num_epochs` epochs of them (the masks differ per
epoch). Give this command the data and mask flags you would give `train_aligner.py`, and the training run
`--precomputed DIR` instead of them:

    accelerate launch training/prepare_aligner_inputs.py --pretrained_model_name_or_path <backbone folder> \\
        --mae_model_name_or_path <trained MAE> --train_data_dir images/ --object_mask_dir object_masks \\
        --resolution 512 --seed 0 --output_dir out/aligner-inputs
    accelerate launch training/train_aligner.py --pretrained_model_name_or_path <backbone folder> \\
        --mae_model_name_or_path <trained MAE> --precomputed out/aligner-inputs --resolution 512 --seed 0 ...

Each process writes its own shards (every n-th); a run that is stopped continues where it stopped when started
again with the same flags (complete shards are kept, a half-written one is redone), and a folder of other flags is
refused. The folder's layout: `asuka_training/precomputed.py`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import asuka_training
from asuka_training import precomputed
from asuka_training.aligner_inputs import mae_priors, vae_posteriors


logger = logging.getLogger("asuka.training")

# The data and mask flags that make the samples (the manifest records them; a resumed run must repeat them).
SAMPLE_FLAGS = (
    "dataset_config_name",
    "dataset_name",
    "dataset_split",
    "hole_max",
    "hole_min",
    "image_column",
    "mask_dir",
    "mask_dir_prob",
    "max_train_samples",
    "object_mask_dir",
    "random_crop",
    "random_flip",
    "resolution",
    "seed",
    "train_data_dir",
)


def build_prepare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add(
        "--pretrained_model_name_or_path",
        required=True,
        help="The backbone's pipeline folder or Hub repo (as for train_aligner.py): its VAE encodes.",
    )
    add("--revision", default=None, help="Revision of the pretrained model on the Hub.")
    add("--variant", default=None, help="Weight variant of the pretrained model, e.g. fp16.")
    asuka_training.add_start_from(parser, "mae", "The frozen AsukaMAE (default: <pretrained>/mae).")
    add("--output_dir", required=True, help="The folder of the shards (a folder of an earlier run is resumed).")
    add("--seed", type=int, default=None, help="The training run's --seed (masks, crops, flips).")
    asuka_training.add_data_arguments(parser)
    add("--num_epochs", type=int, default=1, help="Epochs of pairs to store (the masks differ per epoch).")
    add("--shard_size", type=int, default=256, help="Samples per shard file.")
    add("--batch_size", type=int, default=8, help="Samples per VAE and MAE call.")
    add("--num_validation_images", type=int, default=4, help="Samples stored for the validation grids.")
    add(
        "--mixed_precision",
        default=None,
        choices=["no", "fp16", "bf16"],
        help="dtype the VAE and MAE run and the inputs are stored in; defaults to the accelerate config. The "
        "training run's --mixed_precision should be the same to draw the same latents.",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags, checked (`ValueError` for inconsistent ones)."""
    args = build_prepare_parser().parse_args(argv)
    asuka_training.check_data_arguments(args)
    if args.streaming:
        raise ValueError(
            "--streaming: the pairs are stored by dataset index, so prepare needs a dataset with a length (an image "
            "folder, or --dataset_name without --streaming)."
        )
    for name in ("num_epochs", "shard_size", "batch_size", "num_validation_images"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}.")
    return args


@dataclass
class PrepareResult:
    """What `main()` returns: the folder, and the shards this process wrote and found complete."""

    output_dir: str
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)


class _Positions(torch.utils.data.Dataset):
    """The training data's samples at stored positions (`epoch * samples_per_epoch + index`)."""

    def __init__(self, dataset: torch.utils.data.Dataset, positions: range) -> None:
        self.dataset, self.positions = dataset, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, item: int) -> dict[str, Any]:
        epoch, index = divmod(self.positions[item], len(self.dataset))
        self.dataset.set_epoch(epoch)
        return {**self.dataset[index], "epoch": epoch, "index": index}


@torch.no_grad()
def encode_shard(
    args: argparse.Namespace,
    dataset: torch.utils.data.Dataset,
    positions: range,
    models: tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module | None],
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """The stored fields of the samples at `positions`, stacked; `models` are the frozen VAE, MAE and masked-image
    encoder (None: the VAE)."""
    vae, mae, masked_image_encoder = models
    loader = torch.utils.data.DataLoader(
        _Positions(dataset, positions),
        batch_size=args.batch_size,
        collate_fn=list,
        num_workers=args.dataloader_num_workers,
    )
    fields: dict[str, list[torch.Tensor]] = {}
    for samples in loader:
        masks = torch.stack([s["mask"] for s in samples])
        pixels, mask = torch.stack([s["pixel_values"] for s in samples]).to(device, dtype), masks.to(device, dtype)
        encoded = {**vae_posteriors(vae, pixels, mask, masked_image_encoder), **mae_priors(mae, pixels, mask)}
        encoded = {name: tensor.cpu() for name, tensor in encoded.items()}
        encoded["mask"] = precomputed.pack_mask(masks)
        for name in precomputed.COUNT_FIELDS:
            encoded[name] = torch.tensor([int(s[name]) for s in samples])
        for name, tensor in encoded.items():
            fields.setdefault(name, []).append(tensor)
    return {name: torch.cat(tensors) for name, tensors in fields.items()}


def start_folder(args: argparse.Namespace, accelerator: Any, manifest: dict[str, Any]) -> Path:
    """Create the folder with its manifest, or check that an existing one records the same; `ValueError` if not."""
    folder = Path(args.output_dir)
    if (folder / precomputed.MANIFEST).is_file():
        differences = precomputed.manifest_differences(precomputed.read_manifest(folder), manifest)
        if differences:
            raise ValueError(
                f"{folder} holds inputs prepared with other flags or models (stored != this run): "
                f"{'; '.join(differences)}. Use another --output_dir, or repeat that run's flags to resume it."
            )
    elif accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        precomputed.write_manifest(folder, manifest)
    accelerator.wait_for_everyone()
    return folder


def main(argv: Sequence[str] | None = None) -> PrepareResult:
    from accelerate import Accelerator

    from asuka.models import AsukaMAE

    args = parse_args(argv)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    backbone = asuka_training.load_backbone(
        args.pretrained_model_name_or_path, args.revision, args.variant, with_denoiser=False
    )
    vae, encoder = backbone.vae, asuka_training.masked_image_encoder_of(backbone.folder)
    mae = asuka_training.load_component(AsukaMAE, args.mae_model_name_or_path or backbone.folder, "mae", args.revision)
    identity = asuka_training.input_identity(backbone, mae, encoder, args.resolution)
    dtype = asuka_training.freeze(accelerator, vae, mae, encoder)
    dataset = asuka_training.build_dataset(args)
    samples = vars(args).copy()
    for name in ("train_data_dir", "object_mask_dir", "mask_dir"):  # a folder is the same folder from anywhere
        samples[name] = None if samples[name] is None else str(Path(samples[name]).resolve())
    count = len(dataset) * args.num_epochs
    manifest = {
        "format": precomputed.FORMAT,
        **identity,
        "dtype": str(dtype).removeprefix("torch."),
        "samples": {name: samples[name] for name in SAMPLE_FLAGS},
        "samples_per_epoch": len(dataset),
        "num_epochs": args.num_epochs,
        "count": count,
        "shard_size": args.shard_size,
        "num_shards": -(-count // args.shard_size),
        "num_validation_images": args.num_validation_images,
    }
    folder = start_folder(args, accelerator, manifest)
    result = PrepareResult(output_dir=str(folder))
    if accelerator.is_main_process and not (folder / precomputed.VALIDATION).is_file():
        validation = asuka_training.validation_batch(dataset, args.num_validation_images)
        precomputed.save_atomic({k: validation[k] for k in ("pixel_values", "mask")}, folder / precomputed.VALIDATION)
    shards = precomputed.process_shards(manifest["num_shards"], accelerator.process_index, accelerator.num_processes)
    for shard in shards:
        path = folder / precomputed.shard_name(shard)
        if path.is_file():
            result.skipped.append(shard)
            continue
        positions = precomputed.shard_positions(shard, count, args.shard_size)
        tensors = encode_shard(args, dataset, positions, (vae, mae, encoder), accelerator.device, dtype)
        precomputed.save_atomic(tensors, path)
        result.written.append(shard)
        logger.info("wrote %s (%d samples)", path, len(positions))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        size = sum((folder / precomputed.shard_name(k)).stat().st_size for k in range(manifest["num_shards"]))
        print(
            f"{folder}: {count} samples in {manifest['num_shards']} shards, {size / count:,.0f} bytes per sample "
            f"(this run wrote {len(result.written)} shard(s) on process {accelerator.process_index} of "
            f"{accelerator.num_processes}, kept {len(result.skipped)} complete one(s))",
            flush=True,
        )
    return result


if __name__ == "__main__":
    main()
