"""`python -m asuka.evaluation run|score|table`: generate, score and tabulate inpainting benchmarks.

run    --method NAME --data DIR --out DIR [--model ID] [--tiny]   generate (sharded with
       `accelerate launch`, resumable), then score and write metrics.json, table.md/.csv, grid.png
score  --pred DIR --data DIR [--out DIR] [--label NAME]           score outputs made elsewhere
table  RUN_DIR... [--out DIR]                                     merge runs into one table
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from asuka.defaults import default_device
from asuka.evaluation.data import LAYOUTS, Benchmark, discover
from asuka.evaluation.extractors import FEATURE_KINDS, load_extractors
from asuka.evaluation.report import read_record, render_markdown, write_record, write_report
from asuka.evaluation.scorer import default_ids_pca_dim, score
from asuka.methods import ModelLoadError


def _add_scoring_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="benchmark folder with image/ and mask/ (MISATO or generic)")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto", help="benchmark layout (default: detect)")
    parser.add_argument(
        "--features",
        choices=FEATURE_KINDS,
        default=None,
        help="feature networks: torchvision (released MISATO protocol, default), fid (TF-FID Inception,"
        " needs torch-fidelity) or tiny (random, offline; default with --tiny)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images per scoring batch")
    parser.add_argument(
        "--ids-pca-dim",
        type=int,
        default=None,
        help="PCA dimension before the IDS SVM (default: MISATO resolution; none for generic data; 0 = none)",
    )
    parser.add_argument("--no-grad", action="store_true", help="skip the boundary-gradient metric")
    parser.add_argument("--grid-rows", type=int, default=4, help="samples in grid.png (0: no grid)")
    parser.add_argument("--device", default=None, help="device for the feature networks (default: cuda if available)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m asuka.evaluation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="generate a benchmark's inpaintings with a method, then score them")
    run.add_argument(
        "--method", required=True, help="registered method name, e.g. asuka-sd, asuka-flux, sd, flux-fill"
    )
    run.add_argument("--model", default=None, help="Hub id or local folder (default: the method's default model)")
    run.add_argument("--out", required=True, help="output folder (outputs go to OUT/images; re-runs resume)")
    run.add_argument(
        "--tiny", action="store_true", help="tiny random pipeline and features: a smoke test, no downloads"
    )
    run.add_argument("--steps", type=int, default=None, help="denoising steps (default: the method's)")
    run.add_argument("--seed", type=int, default=42, help="seed for every image (the released evaluation used 42)")
    run.add_argument("--guidance-scale", type=float, default=None)
    run.add_argument("--condition-weight", type=float, default=None)
    run.add_argument(
        "--dtype", default="auto", help="auto (asuka.defaults: bf16 on GPU, fp32 on CPU), fp32, fp16 or bf16"
    )
    _add_scoring_options(run)

    score_cmd = commands.add_parser("score", help="score a folder of outputs made elsewhere")
    score_cmd.add_argument("--pred", required=True, help="folder of outputs named like the benchmark images")
    score_cmd.add_argument("--out", default=None, help="where to write metrics.json etc. (default: --pred)")
    score_cmd.add_argument("--label", default=None, help="row name in the table (default: the --pred folder name)")
    _add_scoring_options(score_cmd)

    table = commands.add_parser("table", help="merge the metrics.json of several runs into one table")
    table.add_argument("runs", nargs="+", help="output folders of `run` or `score`")
    table.add_argument("--out", default=None, help="write table.md, table.csv and grid.png here")
    table.add_argument("--grid-rows", type=int, default=4)
    return parser


def _score_and_report(
    args: argparse.Namespace,
    benchmark: Benchmark,
    pred_dir: Path,
    out_dir: Path,
    record: dict,
    known_errors: dict[str, str] | None = None,
) -> dict:
    features = args.features or ("tiny" if getattr(args, "tiny", False) else "torchvision")
    device = args.device or default_device()
    pca_dim = default_ids_pca_dim(benchmark) if args.ids_pca_dim is None else (args.ids_pca_dim or None)
    result = score(
        benchmark,
        pred_dir,
        load_extractors(features, device),
        args.batch_size,
        pca_dim,
        grad=not args.no_grad,
        known_errors=known_errors,
    )
    record.update(
        data=str(benchmark.root.resolve()), layout=benchmark.layout, pred_dir=str(pred_dir.resolve()), **result
    )
    write_record(out_dir, record)
    print(write_report(out_dir, [record], args.grid_rows))
    if record["errors"]:
        print(f"{len(record['errors'])} file(s) could not be used:", file=sys.stderr)
        for reason in record["errors"].values():
            print(f"  - {reason}", file=sys.stderr)
    return record


def _run_command(args: argparse.Namespace) -> None:
    import torch
    from accelerate import PartialState

    from asuka.evaluation.runner import IMAGES_DIR, GenerationSettings, generate, read_generation_errors
    from asuka.methods import get_method

    # Without CUDA, processes started by `accelerate launch --multi_gpu` (torchrun) only form a gloo
    # group when the state is told to use the CPU; otherwise each would believe it is alone.
    state = PartialState(cpu=not torch.cuda.is_available())
    benchmark = discover(args.data, args.layout)
    out_dir = Path(args.out)
    settings = GenerationSettings(
        args.method,
        args.model,
        args.tiny,
        args.steps,
        args.seed,
        args.guidance_scale,
        args.condition_weight,
        args.dtype,
    )
    generate(benchmark, out_dir, settings, state)
    state.wait_for_everyone()
    if not state.is_main_process:
        return
    spec = get_method(args.method)
    record = {
        "method": spec.name,
        "label": spec.label,
        "model": args.model or spec.default_model,
        "settings": settings.__dict__,
    }
    _score_and_report(
        args, benchmark, out_dir / IMAGES_DIR, out_dir, record, read_generation_errors(out_dir, state.num_processes)
    )


def _score_command(args: argparse.Namespace) -> None:
    pred_dir = Path(args.pred)
    if not pred_dir.is_dir():
        raise ValueError(f"--pred {pred_dir} is not a folder.")
    label = args.label or pred_dir.resolve().name
    record = {"method": label, "label": label, "model": None, "settings": None}
    _score_and_report(args, discover(args.data, args.layout), pred_dir, Path(args.out or pred_dir), record)


def _table_command(args: argparse.Namespace) -> None:
    records = [read_record(run) for run in args.runs]
    if args.out:
        print(write_report(Path(args.out), records, args.grid_rows))
    else:
        print(render_markdown(records))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; bad input or unloadable weights end with the reason and exit status 2."""
    args = _parser().parse_args(argv)
    try:
        {"run": _run_command, "score": _score_command, "table": _table_command}[args.command](args)
    except (ValueError, ModelLoadError) as error:  # bad arguments or folders, unknown method, weights not loadable
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
