"""Convert the authors' StrDiffusion checkpoints (texture G.pth, structure Gs.pth, discriminator D.pth)
into a `StrDiffusionPipeline` folder (safetensors, loads offline).

`python -m asuka.convert strdiffusion --texture G.pth --structure Gs.pth --discriminator D.pth --out DIR`

The official files are flat key -> tensor pickles, possibly with DataParallel `module.` prefixes. They are
read with `asuka.convert.safe_loading` (`torch.load(..., weights_only=True)`, so a pickle that holds anything
but tensors and plain containers is refused). Unlike the authors' non-strict loader, missing, unexpected or
wrong-shape keys are errors that name the file and the key. The folder is `StrDiffusionPipeline.save_pretrained`'s,
written atomically; its `model_index.json` pins the pipeline's settings (resampling constants, quirk flags) at their
defaults.
"""

import argparse
import re
from pathlib import Path
from typing import Any

import torch

from asuka.convert.output import add_output_arguments, check_output_folder, push_folder, unshare, write_atomically
from asuka.convert.safe_loading import build_strict, load_checkpoint, tensor_state_dict
from asuka.models.strdiffusion import StrDiffusionDiscriminator, StrDiffusionUNet
from asuka.schedulers.ir_sde import IRSDEScheduler


PathLike = str | Path
StateDict = dict[str, torch.Tensor]


def load_official_state_dict(path: PathLike) -> StateDict:
    """Read one official `.pth` safely (a flat name -> tensor mapping) and strip DataParallel `module.` prefixes."""
    return strip_module_prefix(tensor_state_dict(load_checkpoint(path), str(path)))


def strip_module_prefix(state_dict: StateDict) -> StateDict:
    """Drop the `module.` prefix torch.nn.DataParallel adds to every key (other keys unchanged)."""
    return {(key[len("module.") :] if key.startswith("module.") else key): value for key, value in state_dict.items()}


def _float32(state_dict: StateDict) -> StateDict:
    return {key: value.float() for key, value in state_dict.items()}


def _unet_config(state_dict: StateDict, source: str) -> dict:
    if "init_conv.weight" not in state_dict:
        raise ValueError(f"{source}: no 'init_conv.weight'; not a StrDiffusion denoiser checkpoint.")
    init = state_dict["init_conv.weight"]
    depth = len({int(m.group(1)) for k in state_dict if (m := re.match(r"downs\.(\d+)\.", k))})
    spade = state_dict.get("downs.0.4.norm_0.mlp_shared.0.weight")
    qkv = state_dict.get("downs.0.2.fn.fn.to_qkv.weight")
    heads = 4
    return {
        "in_channels": init.shape[1] // 2,
        "out_channels": state_dict["final_conv.weight"].shape[0],
        "base_channels": init.shape[0],
        "depth": depth,
        "structure_channels": 0 if spade is None else spade.shape[1],
        "spade_hidden_channels": 16 if spade is None else spade.shape[0],
        "attention_heads": heads,
        "attention_head_dim": 32 if qkv is None else qkv.shape[0] // (3 * heads),
    }


def convert_denoiser(state_dict: StateDict, source: str = "checkpoint") -> StrDiffusionUNet:
    """Build a texture (with SPADE) or structure denoiser from an official state dict."""
    return build_strict(StrDiffusionUNet, _unet_config(state_dict, source), _float32(state_dict), source)


def convert_discriminator(state_dict: StateDict, source: str = "checkpoint") -> StrDiffusionDiscriminator:
    """Build the time-dependent discriminator from an official state dict."""
    if "start_conv.weight" not in state_dict or "t_embed.main.0.weight" not in state_dict:
        raise ValueError(
            f"{source}: no 'start_conv.weight'/'t_embed.main.0.weight'; not a StrDiffusion discriminator."
        )
    start = state_dict["start_conv.weight"]
    config = {
        "in_channels": start.shape[1],
        "base_channels": start.shape[0] // 2,
        "t_emb_dim": state_dict["t_embed.main.0.weight"].shape[1],
    }
    return build_strict(StrDiffusionDiscriminator, config, _float32(state_dict), source)


def convert_strdiffusion(
    texture: PathLike, structure: PathLike, discriminator: PathLike, num_train_timesteps: int = 100
) -> dict[str, Any]:
    """Load the three official files into the pipeline's components (float32, CPU, eval mode).

    Returns `texture_unet`, `structure_unet`, `discriminator` and `scheduler`; `num_train_timesteps` is 100 for
    the PSV test setting, 400 for the Places2 models.
    """
    texture_unet = convert_denoiser(load_official_state_dict(texture), str(texture))
    structure_unet = convert_denoiser(load_official_state_dict(structure), str(structure))
    if not texture_unet.config.structure_channels or structure_unet.config.structure_channels:
        raise ValueError(
            f"{texture} must be the texture denoiser (with SPADE blocks) and {structure} the structure "
            "denoiser (without); were the files swapped?"
        )
    return {
        "texture_unet": texture_unet,
        "structure_unet": structure_unet,
        "discriminator": convert_discriminator(load_official_state_dict(discriminator), str(discriminator)),
        "scheduler": IRSDEScheduler(num_train_timesteps=num_train_timesteps),
    }


def save_strdiffusion(components: dict[str, Any], out: PathLike, overwrite: bool = False) -> Path:
    """Write `StrDiffusionPipeline(**components)` with `save_pretrained` (safetensors), atomically."""
    from asuka.pipelines.pipeline_strdiffusion import StrDiffusionPipeline

    def write(folder: Path) -> None:
        for component in components.values():
            if isinstance(component, torch.nn.Module):
                unshare(component)
        StrDiffusionPipeline(**components).save_pretrained(folder, safe_serialization=True)

    return write_atomically(out, write, overwrite)


def add_strdiffusion_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `strdiffusion` on the `python -m asuka.convert` sub-command parser."""
    parser = subparsers.add_parser(
        "strdiffusion",
        help="StrDiffusion (G.pth, Gs.pth, D.pth) -> StrDiffusionPipeline folder",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--texture", required=True, help="texture denoiser checkpoint (pretrain_model_G)")
    parser.add_argument("--structure", required=True, help="structure denoiser checkpoint (pretrain_model_Gs)")
    parser.add_argument("--discriminator", required=True, help="discriminator checkpoint (pretrain_model_D)")
    add_output_arguments(parser, "pipeline folder")
    parser.add_argument("--num-train-timesteps", type=int, default=100, help="T: 100 (PSV models) or 400 (Places2)")
    parser.set_defaults(func=run_strdiffusion_command)


def run_strdiffusion_command(args: argparse.Namespace) -> Path:
    """Convert, save with safetensors, optionally push; returns the output folder."""
    check_output_folder(args.out, args.overwrite)  # before any heavy work
    components = convert_strdiffusion(
        args.texture, args.structure, args.discriminator, num_train_timesteps=args.num_train_timesteps
    )
    out = save_strdiffusion(components, args.out, overwrite=args.overwrite)
    if args.push_to_hub:
        push_folder(out, args.push_to_hub, commit_message="Add converted StrDiffusion pipeline")
    print(f"Wrote {out}" + (f" and uploaded it to {args.push_to_hub}" if args.push_to_hub else ""))
    return out
