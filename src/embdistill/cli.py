"""``embdistill`` command line: train, distill, evaluate, demo.

``train`` and ``distill`` run data-parallel when started by torchrun:
``torchrun --nproc_per_node 4 -m embdistill distill --config ...``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from embdistill.config import ConfigError


_SUBCOMMAND_MODULES = ("embdistill.report", "embdistill.deploy.commands")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML experiment config (see configs/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.epochs=5 model.dim=128")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run from RUN_DIR/last.pt with RUN_DIR/config.yaml (overrides apply on top)")


def cmd_train(args: argparse.Namespace, distill: bool) -> int:
    from embdistill.config import check_command, load_config, with_held_out_count
    from embdistill.engine.compute.distributed import is_main
    from embdistill.engine.persist.rundir import resume_config
    from embdistill.engine.train import run
    from embdistill.engine.train.signals import Interrupted
    from embdistill.report import write_run_report

    if args.resume and args.config:
        raise ConfigError("--resume RUN_DIR reads RUN_DIR/config.yaml: leave out --config")
    cfg = resume_config(args.resume, args.overrides) if args.resume else load_config(args.config, args.overrides)
    check_command(cfg, distill)
    cfg = with_held_out_count(cfg)  # data.validation_classes: 0.25 -> the count for this dataset, saved with the run
    try:
        result = run(cfg, progress=not args.no_progress, resume=bool(args.resume))
    except Interrupted as stop:  # SIGINT/SIGTERM: a checkpoint was saved
        print(f"embdistill {args.command}: {stop}", file=sys.stderr)
        return stop.exit_code
    if is_main():  # under torchrun every process gets here; one draws and prints
        write_run_report(result.run_dir, device=cfg.device, progress=not args.no_progress)  # curves, stats, grid
        print(json.dumps({"run_dir": str(result.run_dir), **result.metrics}, indent=2))
    return 0


def cmd_bank(args: argparse.Namespace) -> int:
    import time

    from embdistill.config import load_config, with_held_out_count
    from embdistill.engine.teacher.bank import fill_bank_for_config

    cfg = with_held_out_count(load_config(args.config, args.overrides))  # the same train classes as the run's
    started = time.perf_counter()
    path, bank = fill_bank_for_config(cfg, progress=not args.no_progress)
    views, images, dim = bank.embeddings.shape
    print(json.dumps({"bank": str(path), "views": views, "images": images, "dim": dim,
                      "seconds": round(time.perf_counter() - started, 1)}, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from embdistill.engine.scoring.command import evaluate_checkpoint

    metrics = evaluate_checkpoint(
        args.checkpoint,
        dataset=args.dataset,
        root=args.root,
        split=args.split,
        ks=args.ks,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        degrade_resolution=args.degrade_resolution,
        degrade_jpeg_quality=args.degrade_jpeg_quality,
        progress=not args.no_progress,
        gallery_model=args.gallery_model,
        allow_other_space=args.allow_other_space,
        gallery_images=args.gallery_images,
    )
    if args.gallery_model:
        print(metrics.pop("pairing"))
    print(json.dumps(metrics, indent=2))
    run_dir = Path(args.checkpoint)
    if (run_dir / "config.yaml").is_file() and not (args.gallery_model or args.gallery_images):  # a run directory: refresh its stats and grid too
        from embdistill.report import write_run_report

        write_run_report(run_dir, progress=not args.no_progress)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from embdistill.demo import run_demo

    run_demo(Path(args.data), Path(args.output), progress=not args.no_progress, overrides=args.overrides)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embdistill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an embedding network with a metric loss (a teacher, or a student alone)")
    _add_config_args(p)
    p.set_defaults(func=lambda a: cmd_train(a, distill=False))

    p = sub.add_parser("distill", help="train a student from a frozen teacher checkpoint and labels")
    _add_config_args(p)
    p.set_defaults(func=lambda a: cmd_train(a, distill=True))

    p = sub.add_parser("bank", help="run a frozen teacher once over the fixed views of every training image and "
                                    "store its embeddings in distill.bank, for every later run to read")
    p.add_argument("--config", "-c", required=True, help="a distillation config (distill.teacher, distill.bank)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_bank)

    p = sub.add_parser("evaluate", help="Recall@K / MAP@R of a checkpoint on a dataset's test classes")
    p.add_argument("checkpoint", help="a checkpoint file or a run directory (its best.pt if the run chose an epoch, else last.pt)")
    p.add_argument("--dataset", help="dataset reader (default: the checkpoint's)")
    p.add_argument("--root", help="dataset root (default: the checkpoint's)")
    p.add_argument("--split", default="test", choices=["train", "test", "all", "validation"],
                   help="validation: the run's held-out train classes (data.validation_classes), where choices are made")
    p.add_argument("--ks", type=int, nargs="+", help="K values (default: 1 2 4 8; SOP: 1 10 100 1000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--degrade-resolution", type=int, help="evaluate on images down-scaled to this and back")
    p.add_argument("--degrade-jpeg-quality", type=int, help="evaluate on images re-encoded at this JPEG quality")
    p.add_argument("--gallery-model", metavar="CHECKPOINT",
                   help="asymmetric: the checkpoint's embedding of each image queries this model's embeddings of all "
                        "the others (a student trained into its teacher's space by the absolute teacher term, "
                        "querying the teacher's gallery)")
    p.add_argument("--allow-other-space", action="store_true",
                   help="with --gallery-model: score a checkpoint that was not trained into the gallery model's space")
    p.add_argument("--gallery-images", metavar="FOLDER",
                   help="the split's images in FOLDER (links count) are the gallery and the others query it, none of "
                        "them in it: a collection a run distilled on without labels, searched with photos it never saw")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="the paper's effect on CUB birds on a CPU in minutes: teacher, student alone and distilled, table")
    p.add_argument("--data", default="../shared/data/cub100", help="CUB-200-2011 (or subset) root, official layout")
    p.add_argument("--output", default="runs/demo", help="where the runs and the table go")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run of the demo (configs/cub100/demo/)")
    p.set_defaults(func=cmd_demo)

    for module in _SUBCOMMAND_MODULES:  # each adds its own sub-commands
        importlib.import_module(module).add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from embdistill.checkpoints import CheckpointError
    from embdistill.data.datasets import DatasetError
    from embdistill.engine.teacher.bank import BankError
    from embdistill.models.weights import WeightsError

    try:
        return args.func(args)
    except (ConfigError, DatasetError, CheckpointError, WeightsError, BankError) as err:
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())  # one line, e.g. YAML's
        print(f"embdistill {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside the training loop, or a second one inside it
        print(f"embdistill {args.command}: aborted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
