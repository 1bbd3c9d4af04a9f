"""INT8 settings for a student in its teacher's space, chosen on the known-gallery benchmark's training species.

A teacher-space student's INT8 queries search the teacher's fp32 gallery, so every error its quantization leaves
lands on the asymmetric R@1 directly. This scores the student of one ``benchmarks.known_gallery --tune`` run (58
training species: every other photo the gallery, the others the queries) exported in fp32 and in INT8 under each
named setting of :data:`benchmarks.common.int8.VARIANTS`::

    python -m benchmarks.known_gallery --tune --rows mobilenet025_32ep      # the run, if missing
    python -m benchmarks.parity.int8_teacher_space                          # the table (results/int8_teacher_space_tuning)
    python -m benchmarks.parity.int8_teacher_space --smoke                  # a 1-epoch run on a tiny demo, 2 settings
"""
from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, ROOT, SHARED, command, machine, render_results, repo_relative, write_results
from benchmarks.common.collection import (asymmetric_recall, distill, embedded, exported_queries, link_gallery,
                                          smoke_overrides, split_items)
from benchmarks.common.int8 import VARIANTS
from benchmarks.common.smoke import tiny_demo

RUN = ROOT / "runs" / "known_gallery" / "tune" / "mobilenet025_32ep" / "seed0"
FOLDER = ROOT / "runs" / "known_gallery" / "photos" / "gallery_train"
CONFIG = "configs/cub100/known_gallery/mobilenet025_32ep.yaml"  # the run's, for --smoke
CHOSEN = ("default", "no bias correction", "MinMax calibration", "head kept fp32", "U8S8 7-bit")


def measure(args: argparse.Namespace) -> dict:
    import torch

    from embdistill.deploy.export import export_checkpoint
    from embdistill.search.encoder import load_encoder

    items, in_gallery = split_items(args.data, "train", args.gallery)
    teacher = embedded(args.teacher, items)

    def asymmetric(queries: np.ndarray) -> float:
        return 100 * asymmetric_recall(teacher, queries, items, in_gallery)

    rows = []
    with tempfile.TemporaryDirectory(prefix="int8_teacher_space_") as tmp:
        reference = exported_queries(args.run / "best.pt", items, Path(tmp) / "fp32.onnx")
        rows.append({"setting": "fp32", "recall@1": asymmetric(reference), "cosine_mean": 1.0, "cosine_min": 1.0,
                     "mb": (Path(tmp) / "fp32.onnx").stat().st_size / 1e6, "export_seconds": None, "why": "the fp32 ONNX export"})
        for name in args.variants:
            settings, why = VARIANTS[name]
            path, start = Path(tmp) / "int8.onnx", time.perf_counter()
            export_checkpoint(args.run / "best.pt", "onnx", path, quantize="int8", space="teacher",
                              quant_settings=settings, verify=False)
            seconds = time.perf_counter() - start
            queries = embedded(args.run / "best.pt", items, load_encoder(path, threads=torch.get_num_threads()))
            cosine = (queries * reference).sum(axis=1)
            rows.append({"setting": name, "recall@1": asymmetric(queries), "cosine_mean": float(cosine.mean()),
                         "cosine_min": float(cosine.min()), "mb": path.stat().st_size / 1e6, "export_seconds": seconds,
                         "why": why})
            print(f"[int8_teacher_space] {name}: asymmetric R@1 {rows[-1]['recall@1']:.1f}, cosine "
                  f"{rows[-1]['cosine_mean']:.4f}", flush=True)
    return {"command": command("benchmarks.parity.int8_teacher_space"), "date": datetime.datetime.now(datetime.UTC)
            .isoformat(timespec="seconds"), "machine": machine(), "run": repo_relative(str(args.run)),
            "teacher": repo_relative(str(args.teacher)), "queries": int((~in_gallery).sum()),
            "gallery": int(in_gallery.sum()), "rows": rows}


def markdown(result: dict) -> str:
    lines = [
        "# INT8 for a student in its teacher's space: settings on the training species",
        "",
        f"- `{result['command']}` ({result['date']}), on {result['machine']['platform']} "
        f"({result['machine']['cpu_count']} CPUs, no GPU)",
        f"- student: `{result['run']}/best.pt` (`benchmarks.known_gallery --tune`, seed 0), exported with "
        f"`--space teacher`; teacher `{result['teacher']}`",
        f"- the 58 training species of cub100: {result['queries']} student queries (never distilled on) against the "
        f"teacher's fp32 embeddings of {result['gallery']} gallery photos; R@1 in %; cosine = between a query's fp32 "
        "and INT8 embeddings (mean, min)",
        "",
        "| setting | asymmetric R@1 | cosine mean (min) | MB | export s | what differs |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        seconds = "—" if row["export_seconds"] is None else f"{row['export_seconds']:.0f}"
        lines.append(f"| {row['setting']} | {row['recall@1']:.1f} | {row['cosine_mean']:.4f} ({row['cosine_min']:.3f}) "
                     f"| {row['mb']:.2f} | {seconds} | {row['why']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=RUN, help="a known_gallery --tune run directory (its best.pt)")
    parser.add_argument("--teacher", type=Path, default=ROOT / "runs" / "demo" / "teacher" / "last.pt")
    parser.add_argument("--gallery", type=Path, default=FOLDER, help="the run's linked gallery photos")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "cub100")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(CHOSEN))
    parser.add_argument("--out", type=Path, help="results path without suffix (default: "
                        "benchmarks/results/int8_teacher_space_tuning; --smoke: a temporary folder)")
    parser.add_argument("--render", action="store_true", help="no runs: --out.md again from --out.json")
    parser.add_argument("--smoke", action="store_true", help="the row's config for one epoch on a tiny demo of its own "
                        "(the default and 'no bias correction'), all in a temporary folder unless --out")
    args = parser.parse_args(argv)
    if args.render:
        render_results(args.out or RESULTS / "int8_teacher_space_tuning", markdown)
        return
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="int8_teacher_space_smoke_") as tmp:
            demo, args.data = tiny_demo(Path(tmp), args.data)
            args.gallery = Path(tmp) / "photos" / "gallery_train"
            link_gallery(args.data, "train", args.gallery)
            overrides = [f"data.root={args.gallery}", f"distill.bank={Path(tmp) / 'photos' / 'gallery.bank'}",
                         *smoke_overrides(demo / "teacher")]
            args.run = distill(CONFIG, Path(tmp) / "runs" / "mobilenet025_32ep", overrides, 0)
            args.teacher, args.variants = demo / "teacher" / "last.pt", args.variants[:2]
            write_results(args.out or Path(tmp) / "int8_teacher_space_tuning", measure(args), markdown)
        return
    for path, what in ((args.run / "best.pt", "the tuning run (python -m benchmarks.known_gallery --tune --rows "
                        "mobilenet025_32ep)"), (args.teacher, "the demo teacher (make demo)"), (args.gallery, "its gallery")):
        if not path.exists():
            parser.error(f"{path} does not exist: run {what} first")
    write_results(args.out or RESULTS / "int8_teacher_space_tuning", measure(args), markdown)


if __name__ == "__main__":
    main()
