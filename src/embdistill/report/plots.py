"""Pictures of a run a person would rather look at than read."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from embdistill.engine.persist.runlog import read_log  # noqa: E402
from embdistill.data.imagefiles import display_name, thumbnail  # noqa: E402


def plot_training_curves(run_dir: Path, out: Path | None = None) -> Path:
    """Metric loss and every distillation term per step (one panel each), from ``metrics.jsonl``."""
    steps = [r for r in read_log(run_dir) if r["kind"] == "step"]
    out = out or run_dir / "loss_curve.png"
    terms = [k for k in steps[0] if k not in ("kind", "epoch", "step", "lr", "images_per_s")] if steps else []
    fig, axes = plt.subplots(1, max(1, len(terms)), figsize=(4 * max(1, len(terms)), 3.2), squeeze=False)
    for ax, term in zip(axes[0], terms):
        ax.plot([r["step"] for r in steps], [float(r[term]) for r in steps], lw=1.2)
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- Recall@K


def plot_recall_curves(runs: dict[str, dict[str, float]], out: Path) -> Path:
    """Recall@K against K (log2 axis), one line per run, so runs compare at every K at once.

    ``runs`` maps a run name to its metrics; every ``"recall@K"`` key is plotted.
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    all_ks: set[int] = set()
    for name, metrics in runs.items():
        points = sorted((int(k.split("@", 1)[1]), float(v)) for k, v in metrics.items() if k.startswith("recall@"))
        if not points:
            continue
        ks, values = zip(*points)
        all_ks.update(ks)
        ax.plot(ks, [100 * v for v in values], marker="o", lw=1.5, label=name)
    ax.set_xscale("log", base=2)
    if all_ks:
        ax.set_xticks(sorted(all_ks), [str(k) for k in sorted(all_ks)])
        ax.legend(fontsize=8)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- retrieval grid
# The one grid drawer: `embdistill report` (rows of test queries) and `embdistill search`
# (one query and its hits) both draw with draw_grid.

GRID_FRAME = 5  # px of coloured frame around every thumbnail
GRID_MARGIN = 3  # px of white around every framed thumbnail
GRID_CAPTION = 14  # px of caption band per caption line under each cell
QUERY_COLOUR = (128, 128, 128)
CORRECT_COLOUR = (0, 160, 0)
WRONG_COLOUR = (210, 0, 0)
NEUTRAL_COLOUR = (70, 110, 180)  # a neighbour of a query whose class is unknown
_BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class GridCell:
    """One thumbnail of a grid: the image, its frame colour and its caption lines."""

    path: str | Path
    frame: tuple[int, int, int]
    caption: tuple[str, ...] = ()


def grid_cell_size(thumb: int = 96, captions: bool | int = False) -> tuple[int, int]:
    """(width, height) in px of one cell of :func:`draw_grid`; ``captions`` is the number of caption lines (True = 1)."""
    side = thumb + 2 * GRID_FRAME + 2 * GRID_MARGIN
    return side, side + int(captions) * GRID_CAPTION


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: the bitmap font
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".."


def draw_grid(rows: Sequence[Sequence[GridCell]], out: Path, thumb: int = 96) -> Path:
    """Rows of framed, captioned, centre-cropped thumbnails, pixel-exact (PIL), saved as ``out``.

    Every cell is :func:`grid_cell_size` (with as many caption lines as the longest
    caption); the canvas is as wide as the longest row.
    """
    if not rows or not any(rows):
        raise ValueError("draw_grid needs at least one cell")
    lines = max(len(cell.caption) for row in rows for cell in row)
    cell_w, cell_h = grid_cell_size(thumb, lines)
    canvas = Image.new("RGB", (max(len(row) for row in rows) * cell_w, len(rows) * cell_h), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(GRID_CAPTION - 3)
    framed = thumb + 2 * GRID_FRAME
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            x0, y0 = c * cell_w + GRID_MARGIN, r * cell_h + GRID_MARGIN
            draw.rectangle([x0, y0, x0 + framed - 1, y0 + framed - 1], fill=cell.frame)
            canvas.paste(thumbnail(cell.path, thumb), (x0 + GRID_FRAME, y0 + GRID_FRAME))
            for n, text in enumerate(cell.caption):
                y = y0 + framed + GRID_MARGIN - 1 + n * GRID_CAPTION
                draw.text((x0, y), _fit_text(draw, text, font, framed), fill=(0, 0, 0), font=font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def plot_retrieval_grid(
    query_paths: Sequence[str | Path],
    query_labels: Sequence[int] | np.ndarray,
    neighbour_paths: Sequence[Sequence[str | Path]],
    neighbour_labels: Sequence[Sequence[int]] | np.ndarray,
    out: Path,
    class_names: Sequence[str] | None = None,
    thumb: int = 96,
) -> Path:
    """One row per query: the query (grey frame), then its neighbours in rank order,
    framed green when they share the query's label and red when not.

    Pixel-exact (drawn with PIL): ``rows x (1 + k)`` cells of :func:`grid_cell_size`,
    with the species name under each image when ``class_names`` is given.
    """
    rows = len(query_paths)
    if rows == 0 or len(query_labels) != rows or len(neighbour_paths) != rows or len(neighbour_labels) != rows:
        raise ValueError("plot_retrieval_grid needs one label, one neighbour row and one label row per query")
    k = len(neighbour_paths[0])
    if any(len(p) != k or len(lab) != k for p, lab in zip(neighbour_paths, neighbour_labels)):
        raise ValueError("every query needs the same number of neighbours and neighbour labels")

    def cell(path: str | Path, label: int, colour: tuple[int, int, int]) -> GridCell:
        return GridCell(path, colour, (display_name(class_names[label]),) if class_names is not None else ())

    grid = []
    for r in range(rows):
        query_label = int(query_labels[r])
        grid.append([cell(query_paths[r], query_label, QUERY_COLOUR)] + [
            cell(p, int(lab), CORRECT_COLOUR if int(lab) == query_label else WRONG_COLOUR)
            for p, lab in zip(neighbour_paths[r], neighbour_labels[r])
        ])
    return draw_grid(grid, out, thumb)
