"""Convert the authors' ASUKA-FLUX release (`yikaiwang/ASUKA-FLUX.1-Fill`) to a light Hub repo.

`python -m asuka.convert asuka-flux --release DIR_OR_REPO --out DIR [--backbone-revision SHA] [--push-to-hub REPO]`

`--out` is a light repo (`asuka.pipelines.hub_light`, docs/hub.md): the ASUKA component folders below, the
pipeline code, and pointers to FLUX.1-Fill-dev's `transformer`, `vae` and `scheduler`, so it loads with
`DiffusionPipeline.from_pretrained(out, trust_remote_code=True)`; its model card names the release.

Release files and what becomes of them:

| file                       | content                                   | component                          |
|----------------------------|-------------------------------------------|------------------------------------|
| `mae_300.pth`              | `{"model": state_dict}`                   | `mae/` (`AsukaMAE`)                |
| `asuka_alignment_t5.pt`    | state dict of the 4096-wide aligner       | `token_aligner/` (`AsukaAligner`)  |
| `txt_256.pt`               | (1, 256, 4096) token null embedding       | `token_aligner/` (its null)        |
| `asuka_alignment_clip.pt`  | state dict of the 768-wide aligner        | `pooled_aligner/` (`AsukaAligner`) |
| `vec.pt`                   | (1, 768) pooled null embedding            | `pooled_aligner/` (its null)       |
| `asuka_decoder.ckpt`       | `{"state_dict": {"decoder.*": ..., ...}}` | `decoder/` (`AsukaDecoder`)        |
| `asuka_decoder.ckpt`       | its `encoder.*` (a FLUX VAE encoder)      | `masked_image_encoder/` (below)    |

The authors' inference encodes the masked image with the `encoder.*` weights of the decoder checkpoint. The
converter fingerprints them (`asuka_flux_keys.encoder_fingerprint`) and compares them with the encoder of the
backbone's VAE where it can read that without the network (`--backbone` a local folder, or the Hub cache):
equal, nothing more is stored and the pipeline encodes with the backbone's VAE; different, or not verifiable,
they are stored as `masked_image_encoder/` (`AsukaVAEEncoder`), which the pipeline then encodes the masked
image with. The case is printed and recorded in `conversion.json` (`masked_image_encoder`).

Keys the forward pass never uses are dropped by the key mapping (`asuka.convert.asuka_flux_keys`, which
documents why): each aligner block's `modulation.lin`, which the reference builds but never calls, the
decoder's `up_layers.*`, and the training-wrapper state of the decoder checkpoint (`quant_conv.*`, `loss.*`,
...). The release's `txt.pt` (the empty-prompt T5 embedding, 512 tokens) is not used by ASUKA and not read.

Files are read and loaded with `asuka.convert.safe_loading` (weights-only pickles, tensors only, strict
loading) and written with `asuka.convert.output` (atomically: a half-written output never looks like a
converted folder).
"""

import argparse
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from asuka.convert.asuka_flux_keys import (
    ASUKA_FLUX_DECODER_CONFIG,
    ASUKA_FLUX_MAE_CONFIG,
    aligner_config,
    convert_aligner_state_dict,
    convert_decoder_state_dict,
    convert_encoder_state_dict,
    convert_mae_state_dict,
    encoder_fingerprint,
)
from asuka.convert.output import (
    add_output_arguments,
    check_output_folder,
    file_sha256,
    push_folder,
    unshare,
    write_atomically,
)
from asuka.convert.safe_loading import build_strict, load_checkpoint, tensor_state_dict
from asuka.defaults import ASUKA_FLUX_RELEASE_REPO, FLUX_FILL_REPO
from asuka.models import AsukaAligner, AsukaDecoder, AsukaMAE, AsukaVAEEncoder


MAE_FILE = "mae_300.pth"
TOKEN_ALIGNER_FILE = "asuka_alignment_t5.pt"
POOLED_ALIGNER_FILE = "asuka_alignment_clip.pt"
DECODER_FILE = "asuka_decoder.ckpt"
POOLED_NULL_FILE = "vec.pt"
TOKEN_NULL_FILE = "txt_256.pt"
RELEASE_FILES = (MAE_FILE, TOKEN_ALIGNER_FILE, POOLED_ALIGNER_FILE, DECODER_FILE, POOLED_NULL_FILE, TOKEN_NULL_FILE)

# Sub-folders of a converted folder, in writing order. `AsukaFluxPipeline` reads the same names (it names them
# itself: pipeline modules ship as Hub remote code and import no `asuka.*`).
COMPONENT_FOLDERS = ("mae", "token_aligner", "pooled_aligner", "decoder")
# The optional sub-folder with the release's VAE encoder, written unless it equals the backbone VAE's encoder.
ENCODER_FOLDER = "masked_image_encoder"

# The release's interpolation towards the null embeddings (the authors' `--condition_weight`).
RELEASE_CONDITION_WEIGHT = 0.5


# ---------------------------------------------------------------------------------------- reading


def resolve_release(release: str | os.PathLike, token: str | None = None, cache_dir: str | None = None) -> Path:
    """A local release folder, or the snapshot of the needed files of a Hub repo (`owner/name`)."""
    path = Path(release)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(
            f"--release {release} is a file; accepted: the folder holding {', '.join(RELEASE_FILES)}, "
            "or a Hub repo id."
        )
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", str(release)):
        raise ValueError(f"--release {release!r} is neither a folder nor a Hub repo id (owner/name).")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(release), allow_patterns=list(RELEASE_FILES), token=token, cache_dir=cache_dir))


def load_null_embedding(folder: Path, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A null-embedding file: one tensor of exactly `shape`."""
    value = load_checkpoint(folder / name)
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name}: expected a single tensor of shape {shape}, got {type(value).__name__}.")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name}: wrong shape {tuple(value.shape)}, expected {tuple(shape)}.")
    return value


# ---------------------------------------------------------------------------------------- building


def _with_file(name: str, error: ValueError) -> ValueError:
    message = str(error)
    return ValueError(message if message.startswith(name) else f"{name}: {message}")


def build_components(
    folder: Path, condition_weight: float = RELEASE_CONDITION_WEIGHT, encoder_config: Mapping | None = None
) -> dict[str, torch.nn.Module]:
    """Read, map and check every release file; returns `mae`, `token_aligner`, `pooled_aligner`, `decoder` and
    `masked_image_encoder` (the decoder checkpoint's `encoder.*` as an `AsukaVAEEncoder(**encoder_config)`,
    default FLUX.1's VAE encoder)."""
    missing = [name for name in RELEASE_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"Missing release file(s) {missing} in {folder}; the release needs {', '.join(RELEASE_FILES)}."
        )
    # Each `convert_*_state_dict` checks its result against the model it builds, so `build_strict` does not again.
    components: dict[str, torch.nn.Module] = {}

    mae_sd = tensor_state_dict(load_checkpoint(folder / MAE_FILE), MAE_FILE, "model")
    try:
        converted = convert_mae_state_dict(mae_sd, ASUKA_FLUX_MAE_CONFIG)
        components["mae"] = build_strict(AsukaMAE, ASUKA_FLUX_MAE_CONFIG, converted, checked=True)
    except ValueError as error:
        raise _with_file(MAE_FILE, error) from None
    num_tokens = components["mae"].num_patches

    for component, file, null_file, null_kind in (
        ("token_aligner", TOKEN_ALIGNER_FILE, TOKEN_NULL_FILE, "tokens"),
        ("pooled_aligner", POOLED_ALIGNER_FILE, POOLED_NULL_FILE, "pooled"),
    ):
        aligner_sd = tensor_state_dict(load_checkpoint(folder / file), file)
        try:
            config = aligner_config(aligner_sd)
            config.update(num_tokens=num_tokens, null_embedding=null_kind, condition_weight=condition_weight)
        except ValueError as error:
            raise _with_file(file, error) from None
        null_shape = (1, num_tokens, config["hidden_dim"]) if null_kind == "tokens" else (1, config["hidden_dim"])
        null = load_null_embedding(folder, null_file, null_shape).to(aligner_sd["0.weight"].dtype)
        try:
            converted = convert_aligner_state_dict(aligner_sd, null_embedding=null)
            components[component] = build_strict(AsukaAligner, config, converted, checked=True)
        except ValueError as error:
            raise _with_file(file, error) from None

    decoder_sd = tensor_state_dict(load_checkpoint(folder / DECODER_FILE), DECODER_FILE, "state_dict")
    try:
        converted = convert_decoder_state_dict(decoder_sd, ASUKA_FLUX_DECODER_CONFIG)
        components["decoder"] = build_strict(AsukaDecoder, ASUKA_FLUX_DECODER_CONFIG, converted, checked=True)
        converted = convert_encoder_state_dict(decoder_sd, encoder_config)
        components[ENCODER_FOLDER] = build_strict(AsukaVAEEncoder, encoder_config or {}, converted, checked=True)
    except ValueError as error:
        raise _with_file(DECODER_FILE, error) from None
    return components


# ---------------------------------------------------------------------------------------- the masked-image encoder


def read_backbone_vae(backbone: str, revision: str | None = None) -> tuple[AutoencoderKL | None, str]:
    """The backbone's VAE if it can be read without the network (a local folder, or the Hub cache with
    `local_files_only=True`), else None; and why not ("" when read)."""
    try:
        vae = AutoencoderKL.from_pretrained(backbone, subfolder="vae", revision=revision, local_files_only=True)
    except (OSError, ValueError) as error:
        return None, str(error).strip().split("\n")[0] or type(error).__name__
    return vae, ""


def check_masked_image_encoder(
    release_encoder: AsukaVAEEncoder, backbone_vae: AutoencoderKL | None, backbone: str, unread_reason: str = ""
) -> dict[str, Any]:
    """What becomes of the release's encoder, for `conversion.json`: its fingerprint, the backbone VAE encoder's
    (None when unread), the `case` ("equal", "different" or "unverified"), whether it is `stored`, and a `summary`.
    """
    fingerprint = encoder_fingerprint(release_encoder.encoder.state_dict())
    backbone_fingerprint = None if backbone_vae is None else encoder_fingerprint(backbone_vae.encoder.state_dict())
    if backbone_vae is None:
        case = "unverified"
        summary = (
            f"could not read the VAE of {backbone} without the network ({unread_reason}), so the release's encoder "
            f"is stored as {ENCODER_FOLDER}/ and encodes the masked image (pass --backbone with a local FLUX.1-Fill "
            "folder, or download it first, to compare)"
        )
    elif fingerprint == backbone_fingerprint:
        case, summary = "equal", f"the release's encoder equals the VAE encoder of {backbone}; nothing more is stored"
    else:
        case = "different"
        summary = (
            f"the release's encoder differs from the VAE encoder of {backbone}, so it is stored as {ENCODER_FOLDER}/ "
            "and encodes the masked image, as the authors' inference does"
        )
    return {
        "fingerprint": fingerprint,
        "backbone_fingerprint": backbone_fingerprint,
        "case": case,
        "stored": case != "equal",
        "summary": f"Masked-image encoder: {summary}.",
    }


# ---------------------------------------------------------------------------------------- writing


# The model card's component table, one row a line (kept out of the f-string to keep its lines short).
_COMPONENT_TABLE = "\n".join(
    (
        "| folder | class | role |",
        "|---|---|---|",
        "| `mae/` | `asuka.models.AsukaMAE` "
        "| inpainting MAE; its prior replaces the text; it reads images as the release does (`reference`) |",
        "| `token_aligner/` | `asuka.models.AsukaAligner` "
        "| prior -> 256x4096 tokens (in place of T5), with the null embedding `txt_256.pt` |",
        "| `pooled_aligner/` | `asuka.models.AsukaAligner` "
        "| prior -> 768 pooled vector (in place of CLIP), with the null embedding `vec.pt` |",
        "| `decoder/` | `asuka.models.AsukaDecoder` | mask-conditioned 16-channel KL decoder |",
    )
)
_ENCODER_ROW = (
    f"\n| `{ENCODER_FOLDER}/` | `asuka.models.AsukaVAEEncoder` "
    "| the VAE encoder of `asuka_decoder.ckpt`, which encodes the masked image |"
)


def model_card(
    repo_id: str,
    source: str,
    hashes: Mapping[str, str],
    condition_weight: float,
    backbone: str = FLUX_FILL_REPO,
    backbone_revision: str | None = None,
    encoder_check: Mapping[str, Any] | None = None,
) -> str:
    """README.md of a converted light repo: the backbone and its licence, the paper, the release, usage.

    `encoder_check` (from `check_masked_image_encoder`) adds the masked-image encoder's row and summary.
    """
    from asuka.pipelines.model_card import light_model_card

    files = "\n".join(f"| `{name}` | `{digest}` |" for name, digest in hashes.items())
    encoder_row = _ENCODER_ROW if encoder_check and encoder_check["stored"] else ""
    encoder_note = f"\n\n{encoder_check['summary']}" if encoder_check else ""
    provenance = f"""Converted with the `asuka` package (`python -m asuka.convert asuka-flux`) from the authors'
release [`{ASUKA_FLUX_RELEASE_REPO}`](https://huggingface.co/{ASUKA_FLUX_RELEASE_REPO}) (source: `{source}`):

{_COMPONENT_TABLE}{encoder_row}{encoder_note}

The aligners interpolate towards the null embeddings with `condition_weight={condition_weight}` by default.
Use of these weights follows the terms of the original release.

| release file | sha256 |
|---|---|
{files}"""
    return light_model_card(
        repo_id=repo_id,
        pipeline_class_name="AsukaFluxPipeline",
        title="ASUKA for FLUX.1-Fill-dev (diffusers, light repo)",
        description="The authors' ASUKA-FLUX weights: FLUX.1-Fill-dev inpainting conditioned on the visible image "
        "instead of a text prompt, without hallucinated objects or colour shifts.",
        backbone_repo=backbone,
        backbone_revision=backbone_revision,
        provenance=provenance,
        torch_dtype="bfloat16",
        tags=("flux", "inpainting"),
    )


def write_components(
    components: Mapping[str, torch.nn.Module],
    out: Path,
    card: str,
    metadata: Mapping,
    overwrite: bool = False,
    backbone: str = FLUX_FILL_REPO,
    backbone_revision: str | None = None,
) -> Path:
    """Write the light repo of the ASUKA components (`COMPONENT_FOLDERS`, and `ENCODER_FOLDER` unless absent or
    None) pointing to `backbone`, atomically."""
    # The repo carries the pipeline's code, so this converter reaches into the pipelines (only here).
    from asuka.pipelines.hub_export import write_light_repo
    from asuka.pipelines.pipeline_asuka_flux import AsukaFluxPipeline

    def write(folder: Path) -> None:
        parts = {name: components[name] for name in COMPONENT_FOLDERS}
        parts[ENCODER_FOLDER] = components.get(ENCODER_FOLDER)
        for model in parts.values():
            if model is not None:
                unshare(model)
        write_light_repo(
            folder,
            AsukaFluxPipeline,
            parts,
            AsukaFluxPipeline.backbone_spec.component_classes(),  # never its text encoders
            backbone,
            backbone_revision=backbone_revision,
            model_card=card,
        )
        (folder / "conversion.json").write_text(json.dumps(metadata, indent=2) + "\n")

    return write_atomically(out, write, overwrite)


def convert_asuka_flux(
    release: str | os.PathLike,
    out: str | os.PathLike,
    push_to_hub: str | None = None,
    overwrite: bool = False,
    condition_weight: float = RELEASE_CONDITION_WEIGHT,
    token: str | None = None,
    private: bool = False,
    backbone: str = FLUX_FILL_REPO,
    backbone_revision: str | None = None,
) -> Path:
    """Convert an ASUKA-FLUX release (folder or Hub repo) into the light repo `out`; optionally upload it.

    `backbone` / `backbone_revision`: the FLUX.1-Fill repo (and the commit to pin) the light repo points to; its
    VAE, when readable without the network, decides whether the release's encoder is stored (module docstring).
    Returns the output folder. Every problem with the release raises `ValueError` naming the file
    (and key); nothing is left at `out` then.
    """
    check_output_folder(out, overwrite)  # before any heavy work
    folder = resolve_release(release, token=token)
    backbone_vae, unread_reason = read_backbone_vae(backbone, backbone_revision)
    encoder_config = None if backbone_vae is None else AsukaVAEEncoder.config_from_vae(backbone_vae.config)
    components = build_components(folder, condition_weight=condition_weight, encoder_config=encoder_config)
    encoder_check = check_masked_image_encoder(components[ENCODER_FOLDER], backbone_vae, backbone, unread_reason)
    if not encoder_check["stored"]:
        components[ENCODER_FOLDER] = None
    hashes = {name: file_sha256(folder / name) for name in RELEASE_FILES}
    metadata = {
        "format": "asuka-flux",
        "source": str(release),
        "base_model": backbone,
        "base_model_revision": backbone_revision,
        "condition_weight": condition_weight,
        "release_files_sha256": hashes,
        ENCODER_FOLDER: encoder_check,
    }
    card = model_card(
        push_to_hub or Path(out).name,
        str(release),
        hashes,
        condition_weight,
        backbone,
        backbone_revision,
        encoder_check=encoder_check,
    )
    out = write_components(components, Path(out), card, metadata, overwrite, backbone, backbone_revision)
    if push_to_hub:
        push_folder(
            out, push_to_hub, token=token, private=private, commit_message="Add converted ASUKA-FLUX (light repo)"
        )
    return out


# ---------------------------------------------------------------------------------------- CLI


def add_asuka_flux_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `asuka-flux` on the `python -m asuka.convert` sub-command parser."""
    parser = subparsers.add_parser(
        "asuka-flux",
        help=f"ASUKA for FLUX.1-Fill ({ASUKA_FLUX_RELEASE_REPO}) -> a light diffusers repo",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--release", required=True, help=f"release folder or Hub repo (e.g. {ASUKA_FLUX_RELEASE_REPO})"
    )
    add_output_arguments(parser, "folder")
    parser.add_argument("--private", action="store_true", help="create the --push-to-hub repo as private")
    parser.add_argument(
        "--backbone",
        default=FLUX_FILL_REPO,
        help=f"the FLUX.1-Fill repo or folder the output points to (default {FLUX_FILL_REPO}); its VAE, read from "
        "the folder or the Hub cache (never downloaded), is compared with the release's encoder",
    )
    parser.add_argument("--backbone-revision", default=None, help="the backbone commit to pin (recommended)")
    parser.add_argument(
        "--condition-weight",
        type=float,
        default=RELEASE_CONDITION_WEIGHT,
        help="default interpolation towards the null embeddings stored in the aligners (release: 0.5)",
    )
    parser.set_defaults(func=_run_asuka_flux)


def _run_asuka_flux(args: argparse.Namespace) -> None:
    out = convert_asuka_flux(
        args.release,
        args.out,
        push_to_hub=args.push_to_hub,
        overwrite=args.overwrite,
        condition_weight=args.condition_weight,
        private=args.private,
        backbone=args.backbone,
        backbone_revision=args.backbone_revision,
    )
    print(f"Wrote {out}" + (f" and uploaded it to {args.push_to_hub}" if args.push_to_hub else ""))
    print(json.loads((out / "conversion.json").read_text())[ENCODER_FOLDER]["summary"])
