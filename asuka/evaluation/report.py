"""Run records (metrics.json), result tables (Markdown + CSV) and the sample grid.

A table has methods as rows and metrics as columns, one sub-table per domain ("all" first, then
MISATO's outdoor / indoor / building / background). `merge` joins the records of several runs.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from asuka.evaluation.data import SampleError, discover, load_prediction, load_sample
from asuka.evaluation.scorer import METRICS, find_prediction, is_number


METRICS_FILE = "metrics.json"
COLUMN_TITLES = {
    "fid": "FID ↓",
    "u_ids": "U-IDS ↑",
    "p_ids": "P-IDS ↑",
    "psnr": "PSNR ↑",
    "ssim": "SSIM ↑",
    "lpips": "LPIPS ↓",
    "grad": "Grad ↓",
}


def write_record(out_dir: Path, record: dict) -> None:
    """metrics.json (everything but the per-image rows) and per_image.csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {key: value for key, value in record.items() if key != "per_image"}
    (out_dir / METRICS_FILE).write_text(json.dumps(summary, indent=2))
    with open(out_dir / "per_image.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["name", "domain", *METRICS[3:]])
        writer.writeheader()
        writer.writerows(record["per_image"])


def read_record(run_dir: str | Path) -> dict:
    """The metrics.json of a `run` or `score` output folder."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ValueError(f"{run_dir} has no {METRICS_FILE}; accepted: an output folder of `run` or `score`.")
    return json.loads(path.read_text())


def _domains(records: list[dict]) -> list[str]:
    return list(dict.fromkeys(domain for record in records for domain in record["metrics"]))


def _fmt(value: float | None) -> str:
    return f"{value:.3f}" if is_number(value) else "–"


def render_markdown(records: list[dict]) -> str:
    """One Markdown table per domain: methods as rows, metrics as columns (3 decimals like the paper)."""
    lines = []
    for domain in _domains(records):
        lines += [f"### {'All images' if domain == 'all' else domain.capitalize()}", ""]
        lines.append("| Method | Images | " + " | ".join(COLUMN_TITLES[m] for m in METRICS) + " |")
        lines.append("| --- | ---: |" + " ---: |" * len(METRICS))
        for record in records:
            if domain in record["metrics"]:
                values = record["metrics"][domain]
                cells = [record["label"], str(record["counts"][domain])] + [_fmt(values.get(m)) for m in METRICS]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def render_csv(records: list[dict]) -> str:
    """Long CSV: one row per (method, domain), one column per metric, full precision."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "label", "domain", "images", *METRICS])
    for domain in _domains(records):
        for record in records:
            if domain in record["metrics"]:
                values = record["metrics"][domain]
                row = [record["method"], record["label"], domain, record["counts"][domain]]
                writer.writerow(row + ["" if values.get(m) is None else repr(values[m]) for m in METRICS])
    return buffer.getvalue()


def _input_view(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The input as the method saw it: the hole greyed out."""
    hole = (np.asarray(mask) > 127)[..., None]
    shown = np.where(hole, (0.3 * np.asarray(image) + 0.7 * 128).astype(np.uint8), np.asarray(image))
    return Image.fromarray(shown)


def make_grid(records: list[dict], rows: int = 4, cell: int = 256) -> Image.Image | None:
    """Rows of [input with hole, each method's output, ground truth] for the first scorable samples.

    The samples come from the first record's benchmark; a sample is shown only if every method has an
    output for it. Returns None when no sample qualifies (e.g. the data folder moved).
    """
    try:
        benchmark = discover(records[0]["data"], records[0]["layout"])
    except ValueError:
        return None
    columns = ["input"] + [record["label"] for record in records] + ["ground truth"]
    picked = []
    for sample in benchmark.samples:
        if len(picked) == rows:
            break
        try:
            image, mask = load_sample(sample)
            outputs = [load_prediction(find_prediction(Path(r["pred_dir"]), sample), image.size) for r in records]
        except SampleError:
            continue
        picked.append([_input_view(image, mask), *outputs, image])
    if not picked:
        return None
    header = 24
    grid = Image.new("RGB", (cell * len(columns), header + cell * len(picked)), "white")
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(columns):
        draw.text((c * cell + 4, 6), title, fill="black")
    for r, row in enumerate(picked):
        for c, picture in enumerate(row):
            grid.paste(picture.resize((cell, cell), Image.Resampling.LANCZOS), (c * cell, header + r * cell))
    return grid


def write_report(out_dir: Path, records: list[dict], grid_rows: int = 4) -> str:
    """table.md, table.csv and grid.png for `records` in `out_dir`; returns the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(records)
    (out_dir / "table.md").write_text(markdown)
    (out_dir / "table.csv").write_text(render_csv(records))
    grid = make_grid(records, rows=grid_rows) if grid_rows > 0 else None
    if grid is not None:
        grid.save(out_dir / "grid.png")
    return markdown
