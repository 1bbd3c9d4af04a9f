"""Model statistics, the retrieval grid and `embdistill report` on two tiny real runs."""
from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from embdistill import report
from embdistill.report import plots
from embdistill.engine.persist.test_embeddings import EMBEDDINGS_FILE
from embdistill.report.modelstats import count_mflops, count_parameters, cpu_throughput

CUB100 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cub100"
REPO = Path(__file__).resolve().parents[1]


def tiny_net() -> nn.Sequential:
    # 3x8x8 input -> conv 3->4, 3x3, stride 2, pad 1 -> 4x4x4 = 64 values -> linear 64->10
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10))


# --------------------------------------------------------------------------- modelstats


def test_count_parameters_matches_hand_count() -> None:
    conv = 4 * 3 * 3 * 3 + 4  # weights (out x in x kh x kw) + biases = 112
    linear = 64 * 10 + 10  # 650
    assert count_parameters(tiny_net()) == conv + linear == 762


def test_count_mflops_is_mult_adds_of_one_image() -> None:
    # Conv: 4x4 output positions x 4 output channels, each a 3x3x3 = 27-term dot product.
    conv = (4 * 4 * 4) * (3 * 3 * 3)  # 1728 multiply-accumulates
    linear = 64 * 10  # 640; biases, ReLU and flatten are not counted
    assert count_mflops(tiny_net(), 8) == pytest.approx((conv + linear) / 1e6)  # 0.002368
    # Mult-adds scale with the output area: 16x16 input -> 8x8 conv output (linear needs 256 in).
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(256, 10))
    assert count_mflops(net, 16) == pytest.approx((8 * 8 * 4 * 27 + 256 * 10) / 1e6)


def test_count_mflops_restores_training_mode() -> None:
    net = tiny_net().train()
    count_mflops(net, 8)
    assert net.training


def test_cpu_throughput_is_positive_and_leaves_threads_alone() -> None:
    threads = torch.get_num_threads()
    net = tiny_net().train()
    assert cpu_throughput(net, 8, batch_size=4, threads=1, repeats=2) > 0
    assert torch.get_num_threads() == threads and net.training


# --------------------------------------------------------------------------- retrieval grid


def _solid(path: Path, colour: tuple[int, int, int]) -> str:
    Image.new("RGB", (50, 40), colour).save(path)
    return str(path)


def test_retrieval_grid_size_and_frame_colours(tmp_path: Path) -> None:
    paths = [_solid(tmp_path / f"{i}.png", (30 * i, 0, 255 - 30 * i)) for i in range(6)]
    query_paths, query_labels = [paths[0], paths[1]], [0, 1]
    neighbour_paths = [[paths[2], paths[3], paths[4]], [paths[5], paths[2], paths[3]]]
    neighbour_labels = [[0, 1, 0], [2, 1, 1]]  # row 0: right, wrong, right; row 1: wrong, right, right
    thumb = 40
    out = plots.plot_retrieval_grid(query_paths, query_labels, neighbour_paths, neighbour_labels,
                                    tmp_path / "grid.png", class_names=["001.Black_footed_Albatross", "b", "c"], thumb=thumb)
    img = Image.open(out).convert("RGB")
    cell_w, cell_h = plots.grid_cell_size(thumb, captions=True)
    assert img.size == (4 * cell_w, 2 * cell_h)  # 1 query + 3 neighbours per row, 2 rows

    def frame(row: int, col: int) -> tuple[int, int, int]:
        """A pixel in the middle of the left frame edge of a cell."""
        x = col * cell_w + plots.GRID_MARGIN + plots.GRID_FRAME // 2
        y = row * cell_h + plots.GRID_MARGIN + plots.GRID_FRAME + thumb // 2
        return img.getpixel((x, y))

    assert frame(0, 0) == frame(1, 0) == plots.QUERY_COLOUR
    assert frame(0, 1) == frame(0, 3) == frame(1, 2) == plots.CORRECT_COLOUR
    assert frame(0, 2) == frame(1, 1) == plots.WRONG_COLOUR
    # The thumbnail itself sits inside the frame.
    centre = img.getpixel((plots.GRID_MARGIN + plots.GRID_FRAME + thumb // 2,) * 2)
    assert centre == (0, 0, 255)


def test_grid_without_names_has_no_caption_band(tmp_path: Path) -> None:
    p = _solid(tmp_path / "x.png", (10, 20, 30))
    out = plots.plot_retrieval_grid([p], [0], [[p, p]], [[0, 1]], tmp_path / "g.png", thumb=32)
    assert Image.open(out).size == (3 * plots.grid_cell_size(32)[0], plots.grid_cell_size(32)[1])


def test_choose_queries_is_seeded_and_spread_over_classes() -> None:
    labels = np.repeat(np.arange(20), 5)
    first = report.choose_queries(labels, 6, seed=0)
    assert np.array_equal(first, report.choose_queries(labels, 6, seed=0))
    assert len(set(labels[first])) == 6 and labels[first].min() == 0 and labels[first].max() == 19
    assert len(set(report.choose_queries(labels, 30).tolist())) == 30  # more queries than classes: distinct images


def test_nearest_neighbours_exclude_the_query() -> None:
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, -0.2]], dtype=np.float32)
    assert report.nearest_neighbours(emb, [0, 2], k=2).tolist() == [[1, 2], [1, 0]]


def test_plot_recall_curves_writes_png(tmp_path: Path) -> None:
    runs = {"a": {"recall@1": 0.5, "recall@2": 0.6, "recall@4": 0.7, "map@r": 0.2}, "b": {"recall@1": 0.4, "recall@2": 0.55}}
    out = plots.plot_recall_curves(runs, tmp_path / "r.png")
    assert Image.open(out).size[0] > 100


# --------------------------------------------------------------------------- report on real runs


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two real training runs of a few steps on CUB (64 px), each a complete run directory.

    ``a`` is scored on the 42 test classes; ``b`` on 3 held-out train classes, which
    covers the validation split and halves the time spent embedding images.
    """
    if not CUB100.is_dir():
        pytest.skip(f"{CUB100} is not available")
    from embdistill.config import load_config
    from embdistill.engine.train import run

    out = tmp_path_factory.mktemp("runs")
    dirs = []
    for name, dim, held_out in (("a", 64, 0), ("b", 32, 3)):
        cfg = load_config(REPO / "configs/cub100/mobilenet025.yaml", [
            "train.epochs=1", "train.batches_per_epoch=2", "data.image_size=64", "eval.batch_size=64",
            f"output_dir={out}", "data.cache_images=false", f"name={name}", f"data.root={CUB100}",
            f"model.dim={dim}", "device=cpu", f"data.validation_classes={held_out}",
        ])
        dirs.append(run(cfg, progress=False).run_dir)
    return dirs


@pytest.mark.slow
def test_report_on_two_real_runs(two_runs: list[Path], tmp_path: Path) -> None:
    md = report.write_report(two_runs, device="cpu")
    assert md == two_runs[0].parent / "report.md"
    text = md.read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| Run | Model | Params (M) | Mult-Adds (M)")
    rows = {line.split("|")[1].strip(): line for line in table[1:]}
    assert set(rows) == {"a", "b"}
    for line in rows.values():
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[2]) > 0 and float(cells[3]) > 0  # params, mult-adds
        assert all(0 <= float(c) <= 100 for c in cells[6:12])  # R@1..8, MAP@R, NMI in %
    assert "retrieval_grid.png" in text and "recall_at_k.png" in text and "loss_curve.png" in text

    with (md.parent / "report.csv").open() as f:
        reader = csv.DictReader(f)
        records = list(reader)
    assert reader.fieldnames == [
        "run", "model", "parameters", "mult_adds_millions", "embedding_dim", "image_size", "split",
        "recall@1", "recall@2", "recall@4", "recall@8", "map@r", "nmi", "train_seconds", "cpu_images_per_s", "run_dir",
    ]
    assert [r["run"] for r in records] == ["a", "b"]
    assert [int(r["embedding_dim"]) for r in records] == [64, 32]
    assert int(records[0]["parameters"]) - int(records[1]["parameters"]) == (64 - 32) * (256 + 1)  # head: 256 features
    assert all(float(r["cpu_images_per_s"]) > 0 and float(r["train_seconds"]) >= 0 for r in records)
    assert [r["split"] for r in records] == ["test", "validation"]
    assert "different splits" in text  # a warning not to compare a's and b's numbers
    assert (md.parent / "recall_at_k.png").is_file()
    for d in two_runs:
        assert Image.open(d / "retrieval_grid.png").size == (
            (1 + report.GRID_NEIGHBOURS) * plots.grid_cell_size(captions=True)[0],
            report.GRID_QUERIES * plots.grid_cell_size(captions=True)[1],
        )

    # -o elsewhere: links are relative to the report, and the cached embeddings are reused.
    mtime = (two_runs[0] / EMBEDDINGS_FILE).stat().st_mtime_ns
    other = report.write_report(two_runs, tmp_path / "elsewhere", device="cpu")
    link = Path(os.path.relpath(two_runs[0] / "retrieval_grid.png", other.parent)).as_posix()
    assert link.startswith("../") and f"({link})" in other.read_text()
    assert (two_runs[0] / EMBEDDINGS_FILE).stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_test_embeddings_cache_and_run_report(two_runs: list[Path]) -> None:
    run_dir = two_runs[0]
    emb, labels, paths = report.test_embeddings(run_dir, device="cpu")
    assert emb.shape == (2474, 64) and emb.dtype == np.float32 and len(labels) == len(paths) == 2474
    assert len(np.unique(labels)) == 42 and all(Path(p).is_absolute() for p in paths[:5])
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    _, held_out_labels, _ = report.test_embeddings(two_runs[1], device="cpu")
    assert len(np.unique(held_out_labels)) == 3
    # Embedded again by the report, the evaluation set is the trainer's: same images, order and embeddings.
    (run_dir / EMBEDDINGS_FILE).unlink()
    again, again_labels, again_paths = report.test_embeddings(run_dir, device="cpu")
    np.testing.assert_allclose(again, emb, atol=1e-5)
    assert np.array_equal(again_labels, labels) and again_paths == paths
    stats = report.write_run_report(run_dir, device="cpu")
    on_disk = json.loads((run_dir / report.STATS_FILE).read_text())
    assert on_disk == stats
    assert stats["embedding_dim"] == 64 and stats["image_size"] == 64 and stats["parameters"] > 0
    assert stats["mult_adds_millions"] > 0 and stats["cpu_images_per_s"] > 0 and 0 <= stats["nmi"] <= 1
    assert (run_dir / report.GRID_FILE).is_file()


def test_report_subcommand_parses() -> None:
    parser = argparse.ArgumentParser()
    report.add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", "runs/a", "runs/b", "-o", "out"])
    assert args.runs == [Path("runs/a"), Path("runs/b")] and args.output == Path("out") and callable(args.func)
