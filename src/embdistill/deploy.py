"""``embdistill export | embed | index | search``: the model on a device and a searchable gallery.

The commands are thin: the work lives in :mod:`embdistill.export` and :mod:`embdistill.search`,
imported when a command runs, because `embdistill` builds every parser on each call and
those modules pull in torch, timm, onnx and faiss (seconds).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

EXPORT_FORMATS = ("onnx", "torchscript")  # = embdistill.export.EXPORT_FORMATS (a test checks)
INDEX_KINDS = ("flat", "ivf", "hnsw")  # = embdistill.search.INDEX_KINDS

Command = Callable[[argparse.Namespace], int]


def _reports_errors(fn: Command) -> Command:
    """Bad input ends the command with its message and status 2, like the other commands' errors."""

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        from embdistill.export import DeployError

        try:
            return fn(args)
        except DeployError as err:
            print(f"embdistill {args.command}: error: {err}", file=sys.stderr)
            return 2

    return wrapper


@_reports_errors
def cmd_export(args: argparse.Namespace) -> int:
    from embdistill.export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.format, args.output, opset=args.opset, verify=not args.no_verify)
    report = {
        "path": str(result.path),
        "format": result.format,
        "size_mb": round(result.size_bytes / 2**20, 3),
        "max_abs_diff_vs_pytorch": result.max_abs_diff,
        **result.metadata.to_dict(),
    }
    if result.format == "onnx":
        report["sidecar"] = f"{result.path}.json"
    print(json.dumps(report, indent=2))
    return 0


@_reports_errors
def cmd_embed(args: argparse.Namespace) -> int:
    from embdistill.search import embed_folder, files_list_path, write_embeddings

    result = embed_folder(
        args.model, args.images_dir, args.batch_size, args.num_workers, progress=not args.no_progress, threads=args.threads
    )
    out = write_embeddings(args.output, result)
    print(f"{len(result.files)} images -> {out} ({result.embeddings.shape[1]}-d, {result.encoder.format} "
          f"{result.encoder.source}); paths in {files_list_path(out)}")
    return 0


@_reports_errors
def cmd_index(args: argparse.Namespace) -> int:
    from embdistill.search import index_embeddings

    report = index_embeddings(
        args.embeddings, args.output, args.kind, nlist=args.nlist, nprobe=args.nprobe, m=args.m,
        ef_search=args.ef_search, recall_k=args.recall_k, recall_queries=args.recall_queries, seed=args.seed,
    )
    side = report.sidecar
    print(f"{side['kind']} index of {side['count']} x {side['dim']}-d embeddings -> {report.path} {side['params'] or ''}")
    if report.recall:
        r = report.recall
        print(f"recall@{r.k} against exact search: {r.recall:.4f} ({r.queries} gallery images as queries, self excluded)")
    return 0


@_reports_errors
def cmd_search(args: argparse.Namespace) -> int:
    from embdistill.search import save_grid, search_image

    result = search_image(args.index, args.query, args.k, args.model)
    print(f"query {result.query} (model {result.model})")
    print("rank  score   path")
    print("\n".join(result.lines()))
    if args.output:
        print(f"grid -> {save_grid(result, args.output)}")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint's embedder to ONNX or TorchScript, preprocessing in its metadata")
    p.add_argument("checkpoint", help="a checkpoint file or a run directory (uses its last.pt)")
    p.add_argument("--format", "-f", choices=EXPORT_FORMATS, default="onnx")
    p.add_argument("--output", "-o", type=Path, help="default: next to the checkpoint, last.onnx / last.torchscript.pt")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--no-verify", action="store_true", help="skip running the export once against PyTorch")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("embed", help="embed every image under a folder into an .npy (+ .files.txt)")
    p.add_argument("model", help="a checkpoint (.pt), a run directory, or an exported .onnx / TorchScript file")
    p.add_argument("images_dir", help="scanned recursively for .jpg .jpeg .png .bmp .webp")
    p.add_argument("--output", "-o", type=Path, required=True, help="embeddings .npy")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=2, help="image decoding processes")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("index", help="build a faiss inner-product (cosine) index over embeddings")
    p.add_argument("embeddings", help=".npy from `embdistill embed`")
    p.add_argument("--output", "-o", type=Path, required=True, help="index file, e.g. gallery.faiss")
    p.add_argument("--kind", choices=INDEX_KINDS, default="flat", help="flat: exact; ivf / hnsw: approximate, for large galleries")
    p.add_argument("--nlist", type=int, help="ivf: number of lists (default ~4·sqrt(N))")
    p.add_argument("--nprobe", type=int, help="ivf: lists visited per query (default 8)")
    p.add_argument("--m", type=int, default=32, help="hnsw: neighbours per node")
    p.add_argument("--ef-search", type=int, help="hnsw: search breadth (default 64)")
    p.add_argument("--recall-k", type=int, default=10, help="approximate kinds: report recall@k against exact")
    p.add_argument("--recall-queries", type=int, default=1000, help="gallery images sampled as queries for the recall")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="the k gallery images nearest to a query image, and a PNG grid of them")
    p.add_argument("index", help="index from `embdistill index` (its .json sidecar next to it)")
    p.add_argument("query", help="query image")
    p.add_argument("-k", type=int, default=8)
    p.add_argument("--model", help="checkpoint or .onnx (default: the one the index was embedded with)")
    p.add_argument("--output", "-o", type=Path, help="write a PNG grid of the query and its results")
    p.set_defaults(func=cmd_search)
