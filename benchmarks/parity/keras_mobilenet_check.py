"""Does our MobileNet-0.25 compute what Keras computes? Its untrained pooled features, scored as the weights README scored Keras's.

``../shared/weights/README.md`` records, for Keras's own ``MobileNet(alpha=0.25)`` with the
``mobilenet_2_5_224_tf_no_top.h5`` release, the Recall@1 of L2-normalised average-pooled features on
cub100's 42 test species, each whole 227-px image resized (no crop), one thread: 59.3 at 224 px and
41.6 at 96 px. A conversion that gets padding, kernel layouts, BatchNorm or input scaling wrong does
not reproduce them. This is a check of the weights, not a choice: no setting is read off it.

    python -m benchmarks.parity.keras_mobilenet_check           # writes benchmarks/results/keras_mobilenet_check.json
    python -m benchmarks.parity.keras_mobilenet_check --smoke   # 4 test species, 8 images each, to a temporary folder

The smoke's R@1 is on its few species, not comparable with Keras's (its rows leave ``keras_recall@1`` empty): it checks
that the weights load and every step runs.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from PIL import Image

from embdistill.config import DataConfig
from embdistill.engine.batches.loaders import load_splits
from embdistill.evaluation.metrics import retrieval_metrics
from embdistill.config import ModelConfig
from embdistill.models.embedder import create_embedder

from benchmarks.common import RESULTS, SHARED, command, cub_subset, smoke_folder

WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
KERAS_R1 = {224: 59.3, 96: 41.6}  # ../shared/weights/README.md, Keras's own model
SMOKE_SPECIES, SMOKE_IMAGES = 4, 8  # --smoke: the first 4 train and test species of cub100, 8 images each


@torch.no_grad()
def pooled_features(model: torch.nn.Module, paths: list[str], size: int, batch: int = 64) -> torch.Tensor:
    mean = torch.tensor(model.normalization.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.normalization.std).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(paths), batch):
        images = []
        for p in paths[i:i + batch]:
            with Image.open(p) as im:
                rgb = im.convert("RGB").resize((size, size), Image.BILINEAR)
            images.append(torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(size, size, 3))
        x = (torch.stack(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
        out.append(model(x).embedding)
    return torch.cat(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=SHARED / "data" / "cub100", help="the CUB root (cub100)")
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE_SPECIES} test species, {SMOKE_IMAGES} images each, "
                                                        "written to a temporary folder unless --out")
    p.add_argument("--out", type=Path, help="the JSON (default: benchmarks/results/keras_mobilenet_check.json)")
    args = p.parse_args(argv)
    out = args.out or RESULTS / "keras_mobilenet_check.json"
    if args.smoke:
        out = args.out or smoke_folder("keras_mobilenet_check") / out.name
        args.data = cub_subset(args.data, out.parent, SMOKE_SPECIES, SMOKE_IMAGES)
    torch.set_num_threads(1)
    splits = load_splits(DataConfig(root=str(args.data)))
    model = create_embedder(ModelConfig(backbone="mobilenet_v1", pretrained=str(WEIGHTS), dim=None,
                                        backbone_args={"width": 0.25})).eval()
    rows = []
    for size, keras in KERAS_R1.items():
        start = time.perf_counter()
        metrics = retrieval_metrics(pooled_features(model, [str(p) for p in splits.eval.paths], size),
                                    splits.eval.labels, ks=(1,))
        rows.append({"image_size": size, "recall@1": round(100 * metrics["recall@1"], 1),
                     "keras_recall@1": None if args.smoke else keras,  # Keras's is on all 42 test species
                     "images": len(splits.eval), "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(rows[-1]), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command("benchmarks.parity.keras_mobilenet_check", argv), "date": time.strftime("%Y-%m-%d"),
                               "machine": platform.platform(), "weights": WEIGHTS.name, "rows": rows}, indent=1) + "\n")
    print(f"-> {out}", flush=True)


if __name__ == "__main__":
    main()
