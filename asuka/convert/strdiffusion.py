"""Convert the authors' StrDiffusion checkpoints (texture G.pth, structure Gs.pth, discriminator D.pth)
into a `StrDiffusionPipeline` folder (safetensors, loads offline).

The official files are flat key -> tensor pickles, possibly with DataParallel `module.` prefixes. They are
read with `torch.load(..., weights_only=True)`, so a pickle that holds anything but tensors and plain
containers is refused. Unlike the authors' non-strict loader, missing, unexpected or wrong-shape keys are
errors that name the file and the key.
"""

import argparse
import re
from pathlib import Path

import torch

from asuka.models.strdiffusion import StrDiffusionDiscriminator, StrDiffusionUNet
from asuka.schedulers.ir_sde import IRSDEScheduler


PathLike = str | Path
StateDict = dict[str, torch.Tensor]


def load_official_state_dict(path: PathLike) -> StateDict:
    """Read one official `.pth` safely and strip DataParallel `module.` prefixes."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refusals surface as various exception types
        raise ValueError(
            f"{path}: not a weights-only checkpoint (torch.load(weights_only=True) refused it: {error})."
        ) from error
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ValueError(f"{path}: expected a flat mapping of parameter names to tensors (a raw state dict).")
    return strip_module_prefix(obj)


def strip_module_prefix(state_dict: StateDict) -> StateDict:
    """Drop the `module.` prefix torch.nn.DataParallel adds to every key (other keys unchanged)."""
    return {(key[len("module.") :] if key.startswith("module.") else key): value for key, value in state_dict.items()}


def _load_strict(model: torch.nn.Module, state_dict: StateDict, source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source}: keys do not match the network; missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    for key, value in state_dict.items():
        if value.shape != expected[key].shape:
            raise ValueError(
                f"{source}: key {key!r} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}."
            )
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    model.eval()


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
    model = StrDiffusionUNet(**_unet_config(state_dict, source))
    _load_strict(model, state_dict, source)
    return model


def convert_discriminator(state_dict: StateDict, source: str = "checkpoint") -> StrDiffusionDiscriminator:
    """Build the time-dependent discriminator from an official state dict."""
    if "start_conv.weight" not in state_dict or "t_embed.main.0.weight" not in state_dict:
        raise ValueError(
            f"{source}: no 'start_conv.weight'/'t_embed.main.0.weight'; not a StrDiffusion discriminator."
        )
    start = state_dict["start_conv.weight"]
    model = StrDiffusionDiscriminator(
        in_channels=start.shape[1],
        base_channels=start.shape[0] // 2,
        t_emb_dim=state_dict["t_embed.main.0.weight"].shape[1],
    )
    _load_strict(model, state_dict, source)
    return model


def convert_strdiffusion(
    texture: PathLike,
    structure: PathLike,
    discriminator: PathLike,
    num_train_timesteps: int = 100,
    **pipeline_config,
):
    """Load the three official files and assemble a `StrDiffusionPipeline` (float32, CPU, eval mode).

    `num_train_timesteps`: 100 for the PSV test setting, 400 for the Places2 models.
    `pipeline_config` overrides pipeline config entries (resampling constants, quirk flags)."""
    from asuka.pipelines.pipeline_strdiffusion import StrDiffusionPipeline

    texture_unet = convert_denoiser(load_official_state_dict(texture), str(texture))
    structure_unet = convert_denoiser(load_official_state_dict(structure), str(structure))
    if not texture_unet.config.structure_channels or structure_unet.config.structure_channels:
        raise ValueError(
            f"{texture} must be the texture denoiser (with SPADE blocks) and {structure} the structure "
            "denoiser (without); were the files swapped?"
        )
    disc = convert_discriminator(load_official_state_dict(discriminator), str(discriminator))
    return StrDiffusionPipeline(
        texture_unet=texture_unet,
        structure_unet=structure_unet,
        discriminator=disc,
        scheduler=IRSDEScheduler(num_train_timesteps=num_train_timesteps),
        **pipeline_config,
    )


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
    parser.add_argument("--out", required=True, help="output pipeline folder")
    parser.add_argument("--num-train-timesteps", type=int, default=100, help="T: 100 (PSV models) or 400 (Places2)")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload the folder to this Hub repo")
    parser.set_defaults(func=run_strdiffusion_command)


def run_strdiffusion_command(args: argparse.Namespace) -> Path:
    """Convert, save with safetensors, optionally push; returns the output folder."""
    pipe = convert_strdiffusion(
        args.texture, args.structure, args.discriminator, num_train_timesteps=args.num_train_timesteps
    )
    out = Path(args.out)
    pipe.save_pretrained(out, safe_serialization=True)
    if args.push_to_hub:
        pipe.push_to_hub(args.push_to_hub)
    print(f"Wrote {out}" + (f" and uploaded it to {args.push_to_hub}" if args.push_to_hub else ""))
    return out
