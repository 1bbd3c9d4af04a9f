"""``embdistill export | embed | index | search | serve``: the model on a device and a searchable gallery.

The commands are thin: the work lives in :mod:`embdistill.deploy.export`, :mod:`embdistill.deploy.quantize`,
:mod:`embdistill.search` and :mod:`embdistill.serve`, imported when a command runs, because
`embdistill` builds every parser on each call and those modules pull in torch, timm, onnx,
faiss and the web framework (seconds). The choices come from :mod:`embdistill.deploy.choices`.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from embdistill.deploy.choices import EXPORT_FORMATS, EXPORT_SPACES, INDEX_KINDS, QUANTIZE_MODES, DeployError, EmbeddingSpaceWarning

Command = Callable[[argparse.Namespace], int]


@contextlib.contextmanager
def _space_warnings_as_lines(command: str) -> Iterator[None]:
    """An :class:`EmbeddingSpaceWarning` is one line on stderr like the errors, not Python's file:line form."""
    with warnings.catch_warnings():  # puts showwarning back on the way out
        warnings.simplefilter("always", EmbeddingSpaceWarning)
        show = warnings.showwarning

        def one_line(message: Any, category: type[Warning], *rest: Any) -> None:
            if issubclass(category, EmbeddingSpaceWarning):
                print(f"embdistill {command}: warning: {message}", file=sys.stderr, flush=True)
            else:
                show(message, category, *rest)

        warnings.showwarning = one_line
        yield


def _reports_errors(fn: Command) -> Command:
    """Bad input ends the command with its message and status 2, like the other commands' errors."""

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            with _space_warnings_as_lines(args.command):
                return fn(args)
        except DeployError as err:
            print(f"embdistill {args.command}: error: {err}", file=sys.stderr)
            return 2

    return wrapper


@_reports_errors
def cmd_export(args: argparse.Namespace) -> int:
    from embdistill.deploy.export import export_checkpoint

    settings = None
    for flag, value in (("--calibration-images", args.calibration_images), ("--int8-weights", args.int8_weights),
                        ("--no-bias-correction", args.no_bias_correction or None)):
        if value is not None and not args.quantize:
            raise DeployError(f"{flag} only applies with --quantize int8")
    if args.quantize and (args.calibration_images is not None or args.int8_weights is not None or args.no_bias_correction):
        from embdistill.deploy.quantize import DEFAULT_SETTINGS, WEIGHT_CHOICES

        settings = DEFAULT_SETTINGS
        if args.calibration_images is not None:
            settings = settings.with_(images=args.calibration_images)
        if args.int8_weights is not None:
            settings = settings.with_(**WEIGHT_CHOICES[args.int8_weights])
        if args.no_bias_correction:
            settings = settings.with_(bias_correction=False)
    result = export_checkpoint(
        args.checkpoint, args.format, args.output, opset=args.opset, verify=not args.no_verify,
        quantize=args.quantize, calibration=args.calibration, quant_settings=settings, space=args.space,
    )
    report = {
        "path": str(result.path),
        "format": result.format,
        "size_mb": round(result.size_bytes / 2**20, 3),
        "max_abs_diff_vs_pytorch": result.max_abs_diff,
        **({"min_cosine_vs_pytorch": result.min_cosine, "quantization": result.quantization} if result.quantization else {}),
        **({"parity_cpu": result.parity["cpu"]["int8_path"]} if result.parity else {}),
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

    result = search_image(args.index, args.query, args.k, args.model, allow_other_space=args.allow_other_space)
    print(f"query {result.query} (model {result.model})")
    if result.pairing:
        print(result.pairing)
    print("rank  score   path")
    print("\n".join(result.lines()))
    if args.output:
        print(f"grid -> {save_grid(result, args.output)}")
    return 0


@_reports_errors
def cmd_serve(args: argparse.Namespace) -> int:
    from embdistill.serve import run_server

    return run_server(
        args.gallery, args.compare, host=args.host, port=args.port, k=args.k, max_upload_mb=args.max_upload_mb,
        model=args.model, compare_model=args.compare_model, name=args.name, compare_name=args.compare_name,
        threads=args.threads, allow_other_space=args.allow_other_space, query_model=args.query_model,
    )


_ALLOW_OTHER_SPACE = ("accept a model that is not the network that embedded the gallery "
                      "(refused by default: scores between two embedding spaces mean nothing)")


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint's embedder to ONNX or TorchScript, preprocessing in its metadata")
    p.add_argument("checkpoint", help="a checkpoint file or a run directory (uses its last.pt)")
    p.add_argument("--format", "-f", choices=EXPORT_FORMATS, default="onnx")
    p.add_argument("--output", "-o", type=Path, help="default: next to the checkpoint, last.onnx / last.torchscript.pt")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--no-verify", action="store_true", help="skip running the export once against PyTorch")
    p.add_argument("--quantize", choices=QUANTIZE_MODES,
                   help="int8: static post-training quantization (ONNX only), default output last.int8.onnx")
    p.add_argument("--calibration", type=Path, metavar="DIR",
                   help="--quantize: training images to calibrate on (default: the checkpoint's training split)")
    p.add_argument("--calibration-images", type=int, metavar="N", help="--quantize: how many calibration images (default 256)")
    p.add_argument("--int8-weights", choices=("uint8", "int8-7bit", "int8"),
                   help="--quantize: the weights' type. uint8 (default): exact on every CPU, the most faithful, slower "
                        "than int8 on x86; int8-7bit: exact and about 2x faster on x86, less faithful; int8: full range, "
                        "for CPUs with VNNI or ARM only (x86 without VNNI saturates it)")
    p.add_argument("--no-bias-correction", action="store_true",
                   help="--quantize: keep the biases as quantized (default: each layer's mean INT8 error on the "
                        "calibration images is removed from its bias, one pass over them per layer)")
    p.add_argument("--space", choices=EXPORT_SPACES, default="own",
                   help="teacher: a student distilled with the absolute teacher term, its output in the teacher's "
                        "embedding space (its learned projection applied), to query the teacher's galleries; "
                        "default output last.teacher_space.onnx")
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
    p.add_argument("--allow-other-space", action="store_true", help=_ALLOW_OTHER_SPACE)
    p.add_argument("--output", "-o", type=Path, help="write a PNG grid of the query and its results")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="a local web page: drop a photo, see its nearest gallery images (needs the serve extra)")
    p.add_argument("gallery", help="index from `embdistill index` (or embeddings .npy from `embdistill embed`)")
    p.add_argument("--compare", metavar="GALLERY", help="a second gallery (e.g. the teacher's), shown side by side")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("-k", type=int, default=8, help="neighbours shown by default (the page can change it)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="larger uploads are refused with 413")
    p.add_argument("--model", help="model for GALLERY (default: the one it was embedded with)")
    p.add_argument("--compare-model", help="model for --compare (default: the one it was embedded with)")
    p.add_argument("--query-model", metavar="MODEL",
                   help="a second column searching GALLERY with MODEL: a student trained into the space of the "
                        "teacher that embedded GALLERY (absolute teacher term), beside the teacher's own query")
    p.add_argument("--allow-other-space", action="store_true", help=_ALLOW_OTHER_SPACE)
    p.add_argument("--name", help="title of GALLERY's column (default: its model's run directory name)")
    p.add_argument("--compare-name", help="title of the --compare (or --query-model) column")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    p.set_defaults(func=cmd_serve)
