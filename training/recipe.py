"""Train ASUKA for one backbone in one command: every stage in order, each skipped once done, each resumable.

    python training/recipe.py --backbone sd DATA OUT        # or training/recipes/asuka-sd.sh DATA OUT
    python training/recipe.py --backbone flux DATA OUT --pretrained <AsukaFluxPipeline or FLUX.1-Fill folder>

The stages, with the defaults of docs/training.md (DATA is an image folder, searched recursively):

1. `object_masks` (with `--coco_annotations`): `prepare_object_masks.py`, the generator's object shapes. Without
   it the generator draws strokes and rectangles only; `--mask_dir` (the released masks) goes to every training.
2. `mae_start` (when the MAE starts from facebook's MAE): `python -m asuka.convert mae --from <--mae_from>`. The
   MAE starts from `--mae` (an AsukaMAE folder, e.g. the converted ASUKA-FLUX release's `mae/`), else from the
   `mae/` of `--pretrained` when it has one, else from `--mae_from` (default facebook/vit-mae-base).
3. `mae`: `train_mae.py` at 256 (`--mae_steps 0`: the starting MAE is used as it is).
4. `precompute` (SD by default; `--precompute`, `--no_precompute`): `prepare_aligner_inputs.py` stores the VAE
   posteriors and MAE priors of the (image, mask) pairs the aligner's schedule draws; without it the aligner
   encodes them on the fly.
5. `aligner`: `train_aligner.py` on the frozen backbone (`--precomputed`), `--save_pipeline`.
6. `decoder`: `train_decoder.py` from the aligner's pipeline, `--save_pipeline`.
7. `light`: the light Hub repo of the final pipeline in OUT/light (its trained parts, their code, a pointer to the
   backbone), pushed with `--push_to_hub`.

The training stages run under `accelerate launch` (`--launcher_args`, e.g. `--config_file
training/configs/fsdp_flux.yaml`) with `--resume_from_checkpoint latest`, so a stage killed after a checkpoint
continues from it. A stage that finished writes OUT/.recipe/<stage>.json (its command); a later run skips it
(delete the file to run it again). Before the first stage, the budget of the MAE, aligner and decoder schedules
(FLOPs counted by `benchmarks/training_budget.py` on the full-size models, GPU-hours at `--tflops`) is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


TRAINING = Path(__file__).resolve().parent
ROOT = TRAINING.parent

# per backbone: the budget's name for it, the resolutions of the aligner and decoder stages (the release trained
# ASUKA-FLUX's aligner at 512 and its decoder at 256) and the default backbone to start from
BACKBONES = {
    "sd": {"budget": "sd", "aligner_resolution": 512, "decoder_resolution": 512, "spec": "sd-1.5-inpainting"},
    "flux": {"budget": "flux", "aligner_resolution": 512, "decoder_resolution": 256, "spec": "flux.1-fill"},
}
# whether the precompute stage runs by default: it saves 57 % of an SD aligner step but 6 % of a FLUX one, whose
# stored inputs take about twice SD's disk (docs/training.md, "Precomputed aligner inputs")
PRECOMPUTE = {"sd": True, "flux": False}
FACEBOOK_MAE = "facebook/vit-mae-base"
STAGES = ("object_masks", "mae_start", "mae", "precompute", "aligner", "decoder", "light")


@dataclass
class Stage:
    """One stage: `command` (None: run in this process by `run_light`), `launched` under the accelerate launcher."""

    name: str
    output: Path
    command: list[str] | None
    launched: bool = False
    notes: list[str] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument  # one call per flag: declarations
    add("--backbone", choices=sorted(BACKBONES), required=True)
    add("data", help="Folder of training images (searched recursively).")
    add("out", help="Folder of every stage's output (OUT/<stage>/) and the recipe's records (OUT/.recipe/).")
    add("--pretrained", default=None, help="Backbone folder or Hub id (default: the backbone's Hub repo).")
    add("--mae", default=None, help="AsukaMAE folder to start the MAE stage from (e.g. a converted release's mae/).")
    add("--mae_from", default=None, help=f"facebook MAE to convert and start from (default {FACEBOOK_MAE}).")
    add("--mae_steps", type=int, default=100_000, help="MAE fine-tuning steps (0: use the starting MAE as it is).")
    add("--aligner_steps", type=int, default=20_000)
    add("--decoder_steps", type=int, default=50_000)
    add("--mae_batch_size", type=int, default=64, help="Per process, as every batch size here.")
    add("--aligner_batch_size", type=int, default=8)
    add("--decoder_batch_size", type=int, default=8)
    add("--mae_resolution", type=int, default=256)
    add("--aligner_resolution", type=int, default=None, help="Default: 512.")
    add("--decoder_resolution", type=int, default=None, help="Default: 512 for SD, 256 for FLUX.")
    precompute = parser.add_mutually_exclusive_group()
    precompute.add_argument(
        "--precompute", action="store_true", default=None, help="Run the precompute stage (default for SD)."
    )
    precompute.add_argument(
        "--no_precompute", dest="precompute", action="store_false", help="Skip it: the aligner encodes on the fly."
    )
    add("--checkpointing_steps", type=int, default=1000)
    add("--seed", type=int, default=None, help="Seed of every training stage.")
    add("--coco_annotations", default=None, help="COCO instances JSON: the object-mask stage's input.")
    add("--object_mask_dir", default=None, help="Folder of object masks made before (instead of the stage).")
    add("--mask_dir", default=None, help="Folder of released training masks, for every training stage.")
    add("--mask_dir_prob", type=float, default=None, help="Share of folder masks (default: the scripts' 1).")
    add("--num_processes", type=int, default=None, help="Processes (GPUs) per stage, for the launcher and budget.")
    add("--launcher_args", default="", help='Flags of `accelerate launch`, e.g. "--config_file CONFIG".')
    add("--stage_args", action="append", default=[], metavar="STAGE=FLAGS", help="Extra flags of one stage's script.")
    add("--tflops", type=float, default=300.0, help="Assumed sustained TFLOP/s per GPU for the budget.")
    add("--push_to_hub", action="store_true", help="Push the light repo (needs --hub_model_id).")
    add("--hub_model_id", default=None)
    add("--hub_token", default=None)
    add("--dry_run", "--dry-run", action="store_true", help="Print the budget and the stages' commands only.")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    defaults = BACKBONES[args.backbone]
    args.aligner_resolution = args.aligner_resolution or defaults["aligner_resolution"]
    args.decoder_resolution = args.decoder_resolution or defaults["decoder_resolution"]
    args.precompute = PRECOMPUTE[args.backbone] if args.precompute is None else args.precompute
    if args.pretrained is None:
        from asuka.pipelines.backbones import get_backbone

        args.pretrained = get_backbone(defaults["spec"]).repo
    if args.mae and args.mae_from:
        raise ValueError("Give --mae (an AsukaMAE folder) or --mae_from (a facebook MAE to convert), not both.")
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (the light repo's id).")
    if not Path(args.data).is_dir():
        raise ValueError(f"DATA must be a folder of training images; {args.data!r} is not a folder.")
    args.extra = {}
    for item in args.stage_args:
        stage, _, flags = item.partition("=")
        if stage not in STAGES[:-1] or not flags:
            raise ValueError(
                f"--stage_args takes STAGE=FLAGS with STAGE one of {', '.join(STAGES[:-1])}; got {item!r}."
            )
        args.extra.setdefault(stage, []).extend(shlex.split(flags))
    return args


def mask_flags(args: argparse.Namespace, object_masks: str | None) -> list[str]:
    flags = ["--object_mask_dir", object_masks] if object_masks else []
    if args.mask_dir:
        flags += ["--mask_dir", args.mask_dir]
    if args.mask_dir_prob is not None:
        flags += ["--mask_dir_prob", str(args.mask_dir_prob)]
    return flags


def data_flags(args: argparse.Namespace, masks: list[str]) -> list[str]:
    """The flags that make the training samples: data, masks, seed."""
    return ["--train_data_dir", args.data, *masks, *(["--seed", str(args.seed)] if args.seed is not None else [])]


def training_flags(args, output: Path, steps: int, batch: int, resolution: int, data: list[str]) -> list[str]:
    """The flags every training stage takes: the samples (`data`), schedule, checkpoints (resumed from the latest)."""
    return [
        *data,
        "--output_dir",
        str(output),
        "--max_train_steps",
        str(steps),
        "--train_batch_size",
        str(batch),
        "--resolution",
        str(resolution),
        "--checkpointing_steps",
        str(args.checkpointing_steps),
        "--resume_from_checkpoint",
        "latest",
    ]


def precompute_epochs(args: argparse.Namespace) -> int:
    """The epochs of (image, mask) pairs the aligner's schedule draws from DATA's images."""
    from asuka.imageio import is_image_file

    images = sum(1 for p in Path(args.data).rglob("*") if is_image_file(p) and p.is_file())
    samples = args.aligner_steps * args.aligner_batch_size * (args.num_processes or 1)
    return max(1, -(-samples // max(images, 1)))


def mae_start(args: argparse.Namespace) -> tuple[str | None, str]:
    """(the facebook MAE to convert or None, the MAE the MAE stage starts from)."""
    if args.mae:
        return None, args.mae
    if not args.mae_from and Path(args.pretrained, "mae", "config.json").is_file():
        return None, args.pretrained
    return args.mae_from or FACEBOOK_MAE, str(Path(args.out) / "mae_start")


def plan(args: argparse.Namespace) -> list[Stage]:
    """The stages in order, with their commands."""
    out, python = Path(args.out), sys.executable
    stages = []
    object_masks = args.object_mask_dir
    if args.coco_annotations:
        object_masks = str(out / "object_masks")
        command = [python, str(TRAINING / "prepare_object_masks.py"), "--annotations", args.coco_annotations]
        stages.append(Stage("object_masks", Path(object_masks), [*command, "--output_dir", object_masks]))
    data = data_flags(args, mask_flags(args, object_masks))
    source, mae = mae_start(args)
    if source is not None:
        command = [python, "-m", "asuka.convert", "mae", "--from", source, "--out", mae]
        stages.append(Stage("mae_start", Path(mae), [*command, "--image-size", str(args.mae_resolution)]))
    if args.mae_steps > 0:
        output = out / "mae"
        flags = training_flags(args, output, args.mae_steps, args.mae_batch_size, args.mae_resolution, data)
        command = [str(TRAINING / "train_mae.py"), "--pretrained_model_name_or_path", mae, *flags]
        stages.append(Stage("mae", output, command, launched=True))
        mae = str(output)
    backbone = ["--pretrained_model_name_or_path", args.pretrained, "--mae_model_name_or_path", mae]
    aligner_data = data
    if args.precompute:
        inputs = out / "precompute"
        command = [str(TRAINING / "prepare_aligner_inputs.py"), *backbone, *data, "--output_dir", str(inputs)]
        command += ["--resolution", str(args.aligner_resolution), "--num_epochs", str(precompute_epochs(args))]
        stages.append(Stage("precompute", inputs, command, launched=True))
        aligner_data = ["--precomputed", str(inputs), *data[2:]]  # the samples' flags, without the data folder
    aligner = out / "aligner"
    flags = training_flags(
        args, aligner, args.aligner_steps, args.aligner_batch_size, args.aligner_resolution, aligner_data
    )
    command = [str(TRAINING / "train_aligner.py"), *backbone, *flags, "--save_pipeline"]
    stages.append(Stage("aligner", aligner, command, launched=True))
    decoder = out / "decoder"
    flags = training_flags(args, decoder, args.decoder_steps, args.decoder_batch_size, args.decoder_resolution, data)
    command = [str(TRAINING / "train_decoder.py"), "--pretrained_model_name_or_path", str(aligner / "pipeline")]
    stages.append(Stage("decoder", decoder, [*command, *flags, "--save_pipeline"], launched=True))
    stages.append(Stage("light", out / "light", None))
    for stage in stages:
        if stage.command is not None:
            stage.command += args.extra.get(stage.name, [])
    return stages


def launcher(args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-m", "accelerate.commands.launch", *shlex.split(args.launcher_args)]
    if args.num_processes:
        command += ["--num_processes", str(args.num_processes)]
    return command


def marker(args: argparse.Namespace, stage: Stage) -> Path:
    return Path(args.out) / ".recipe" / f"{stage.name}.json"


def write_json_atomically(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(data, f, indent=1)
    os.replace(f.name, path)


def budget(args: argparse.Namespace) -> str:
    """The MAE, aligner and decoder schedules' budget (`python -m benchmarks.training_budget`), counted once per
    schedule and kept in OUT/.recipe/budget.json."""
    processes = args.num_processes or 1
    schedules = {
        "aligner": [args.aligner_steps, args.aligner_batch_size * processes, args.aligner_resolution],
        "decoder": [args.decoder_steps, args.decoder_batch_size * processes, args.decoder_resolution],
    }
    if args.mae_steps > 0:
        schedules["mae"] = [args.mae_steps, args.mae_batch_size * processes, args.mae_resolution]
    key = {"backbone": BACKBONES[args.backbone]["budget"], "schedules": schedules, "tflops": args.tflops}
    cache = Path(args.out) / ".recipe" / "budget.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached["key"] == key:
            return cached["table"]
    command = [sys.executable, "-m", "benchmarks.training_budget", "--backbone", key["backbone"]]
    command += ["--tflops", str(args.tflops), "--no-memory"]
    for name, (steps, batch, size) in schedules.items():
        command += ["--schedule", f"{name}={steps},{batch},{size}"]
    table = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    write_json_atomically(cache, {"key": key, "table": table})
    return table


def run_light(args: argparse.Namespace, stage: Stage) -> None:
    """Write the light repo of the decoder stage's pipeline into `stage.output`, and push it with --push_to_hub."""
    import shutil

    import asuka_training
    from asuka import pipelines
    from asuka.pipelines.model_card import light_model_card

    folder = Path(args.out) / "decoder" / "pipeline"
    pipeline_class = json.loads((folder / "model_index.json").read_text())["_class_name"]
    pipe = getattr(pipelines, pipeline_class).from_pretrained(folder)
    repo_id = args.hub_model_id or Path(args.out).resolve().name
    provenance = (
        f"Trained with the `asuka` toolkit's recipe (`training/recipe.py --backbone {args.backbone}`) from "
        f"`{args.pretrained}`: MAE, aligner and decoder stages, with the mask mixture of ASUKA Sec. 3.1."
    )
    card = light_model_card(
        repo_id,
        pipeline_class,
        "ASUKA",
        f"ASUKA's MAE prior, aligner and mask-conditioned decoder for `{args.pretrained}`.",
        args.pretrained,
        None,
        provenance,
    )
    partial = stage.output.with_name(f".partial-{stage.output.name}")
    shutil.rmtree(partial, ignore_errors=True)
    pipe.save_pretrained(partial, light=True, backbone=args.pretrained, model_card=card)
    shutil.rmtree(stage.output, ignore_errors=True)
    os.replace(partial, stage.output)
    if args.push_to_hub:
        hub = argparse.Namespace(
            hub_token=args.hub_token, hub_model_id=repo_id, hub_private=False, output_dir=args.out
        )
        print(f"pushed {stage.output} to {asuka_training.push_folder_to_hub(hub, str(stage.output))}", flush=True)


def main(argv: Sequence[str] | None = None) -> list[str]:
    """Run the recipe; returns the names of the stages it ran (not those it skipped)."""
    args = parse_args(argv)
    stages = plan(args)
    print(f"ASUKA recipe for {args.backbone}: {', '.join(stage.name for stage in stages)}", flush=True)
    print("Expected budget (full-size backbone, FLOPs counted on the meta device):", flush=True)
    print(budget(args), flush=True)
    ran = []
    for stage in stages:
        command = None if stage.command is None else (launcher(args) if stage.launched else []) + stage.command
        done = marker(args, stage)
        if done.is_file():
            print(f"[{stage.name}] done before ({done}): skipped", flush=True)
            continue
        print(f"[{stage.name}] {shlex.join(command) if command else 'write the light repo'}", flush=True)
        if args.dry_run:
            continue
        if command is None:
            run_light(args, stage)
        elif subprocess.run(command, cwd=ROOT).returncode != 0:
            raise SystemExit(
                f"[{stage.name}] failed (see its output above); run the recipe again to resume it from its latest "
                f"checkpoint in {stage.output}."
            )
        write_json_atomically(done, {"stage": stage.name, "output": str(stage.output), "command": command})
        ran.append(stage.name)
    return ran


if __name__ == "__main__":
    main()
