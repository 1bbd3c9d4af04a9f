"""Every section of the experiment config: one dataclass each, every key with its default and its comment.

``ExperimentConfig`` is one run. Each field declares beside itself its fixed choices (a
``Literal``), its numeric range (``metadata=at_least(0)``, fields.py) and whether a resumed
run may change it (``may_change("resume", "reuse")``, fields.py). ``ModelConfig`` is also
what a checkpoint stores to rebuild its network (``checkpoints.embedder_from_checkpoint``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from embdistill.config.fields import SEED_MAX, above, at_least, between, count_or_fraction, may_change
from embdistill.data.transforms import ResizeMode  # one list of modes for the config and the transforms
from embdistill.evaluation.collapse import COLLAPSE_SPREAD
from embdistill.models.embedder import Pooling  # one list of poolings for the config and the embedder


Schedule = Literal["cosine", "step", "constant"]
NanPolicy = Literal["stop", "skip"]
Precision = Literal["auto", "fp32", "bf16"]
TeacherPrecision = Literal["fp32", "bf16"]
Select = Literal["last", "best"]
# knn_agreement: with the teacher, no labels needed; asymmetric_recall@1: the student's queries on the teacher's gallery
SelectMetric = Literal["recall@1", "map@r", "knn_agreement@10", "asymmetric_recall@1"]
EvalSplit = Literal["auto", "test", "validation"]


@dataclass
class ModelConfig:
    """What it takes to rebuild an embedder; stored in every checkpoint."""

    backbone: str = "resnet18"
    pretrained: bool | str = True
    dim: int | None = field(default=512, metadata=at_least(1))  # None: no projection head, the pooled backbone features themselves
    pooling: Pooling = "avg"
    freeze_batchnorm: bool = False  # keep pretrained BN statistics (P×K batches hold only P classes)
    backbone_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    dataset: str = "cub200"  # a reader of data/datasets.py DATASETS: cub200 | cars196 | sop | folder
    root: str = field(default="../shared/data/cub100", metadata=may_change("resume"))  # a moved dataset may be resumed, not reused
    image_size: int = field(default=224, metadata=at_least(1))
    num_workers: int = field(default=2, metadata=at_least(0) | may_change("resume", "reuse"))
    cache_images: bool = field(default=False, metadata=may_change("resume", "reuse"))  # keep decoded images in memory (2-core machines are decode-bound)
    skip_bad_images: bool = False  # skip (and list) corrupt files instead of stopping
    # Hold out the last N train classes to choose lambda/epochs; a float in (0, 1) holds out that fraction of them
    # (rounded, at least 2, leaving at least 2 to train on): held_out_count, for datasets of any size.
    validation_classes: int | float = field(default=0, metadata=count_or_fraction())
    # How a non-square image becomes the square input, for eval and training crops alike:
    # crop (centre square; cuts the ends off wide Cars-196 crops) | squash (stretch) | pad (whole, zero border)
    resize: ResizeMode = "crop"


@dataclass
class TrainConfig:
    """How the student (or teacher) is trained.

    Under ``torchrun`` every process draws its own P×K batch (no class is shared
    between processes in a step), so the global batch is ``processes × P × K``.
    ``gather_global_batch`` (default true) makes the metric loss and the
    batch-level distillation terms (relative, RKD, DarkRank) see the global batch,
    so N processes give the loss and gradients of one process with N times the
    batch; false keeps each process's loss to its own batch (no gathering, but a
    different objective). Per-image terms (absolute, hint, attention) are local
    either way.

    ``precision``: ``bf16`` runs the student's forward pass under bf16 autocast (the
    losses stay fp32); ``auto`` means bf16 on CUDA and fp32 on the CPU.
    ``channels_last``: NHWC memory layout for the networks and their inputs, faster
    convolutions on GPUs; ``auto`` means on for CUDA, off on the CPU.
    """

    epochs: int = field(default=30, metadata=at_least(0))  # 0: only evaluate the starting network
    classes_per_batch: int = field(default=4, metadata=at_least(2))  # P, paper: 4 (a triplet needs a negative class)
    images_per_class: int = field(default=8, metadata=at_least(2))  # K, paper: 8 (and a positive)
    batches_per_epoch: int | None = field(default=None, metadata=at_least(1))  # default: one pass over the train images
    # A label-free dataset (data.dataset: photos) has no classes for P×K batches: it trains on random batches of this
    # many images (None: classes_per_batch x images_per_class). Labelled datasets keep P×K and ignore it.
    batch_size: int | None = field(default=None, metadata=at_least(2))
    lr: float = field(default=1e-4, metadata=above(0))  # head learning rate (Adam)
    backbone_lr_mult: float = field(default=0.1, metadata=at_least(0))  # backbone lr = lr * this (0: its weights stay as they are)
    # The objective's own parameters (the absolute term's projection, hint regressors, proxies) start from random
    # and have no ImageNet start to keep: their lr = lr * this.
    objective_lr_mult: float = field(default=1.0, metadata=above(0))
    weight_decay: float = field(default=5e-4, metadata=at_least(0))
    schedule: Schedule = "cosine"
    step_epochs: list[int] = field(default_factory=list, metadata=at_least(1))  # for schedule=step: decay x0.1 at these
    warmup_epochs: float = field(default=0.0, metadata=at_least(0))
    metric_loss: str = "batch_hard_triplet"  # a name in losses/metric.py METRIC_LOSSES
    metric_loss_args: dict[str, Any] = field(default_factory=dict)
    metric_weight: float = field(default=1.0, metadata=at_least(0))  # 0: the teacher alone trains the student (the metric loss is still logged)
    log_every: int = field(default=10, metadata=at_least(1) | may_change("resume", "reuse"))  # steps
    collapse_spread: float = field(default=COLLAPSE_SPREAD, metadata=at_least(0) | may_change("resume", "reuse"))  # warn when an epoch's mean batch embedding spread falls below this
    nan_policy: NanPolicy = field(default="stop", metadata=may_change("resume", "reuse"))  # skip: skipped batches are counted in summary.yaml
    checkpoint_every: int = field(default=0, metadata=at_least(0) | may_change("resume", "reuse"))  # also checkpoint every N steps mid-epoch (0: only at epoch ends)
    # Also keep every epoch's weights as RUN_DIR/epochs/epoch_NNN.pt (as best.pt holds them): to score any epoch
    # afterwards, e.g. how far a label-free epoch choice falls from the best epoch on labelled classes.
    keep_epochs: bool = field(default=False, metadata=may_change("resume", "reuse"))
    gather_global_batch: bool = True  # multi-process: batch-level losses see every process's images (exact)
    precision: Precision = "auto"  # student forward under autocast; auto: bf16 on CUDA
    channels_last: bool | Literal["auto"] = "auto"  # auto: on for CUDA
    # Which weights are scored: the last epoch's, or the best on the held-out train classes (best.pt,
    # engine/train/epoch_selection.py) by select_metric, evaluated every eval.every_epochs and after the last epoch.
    # knn_agreement@10 (evaluation/agreement.py) needs no labels: the share of each held-out image's 10 nearest
    # neighbours under the teacher that the student also ranks in its 10 nearest. asymmetric_recall@1 (needs the
    # absolute teacher term): R@1 of the student's held-out embeddings, taken into the teacher's space, as queries
    # against the teacher's embeddings of the same images: the epoch whose queries best search a teacher's gallery.
    select: Select = "last"
    select_metric: SelectMetric = "recall@1"
    patience: int = field(default=0, metadata=at_least(0))  # select=best: stop after N evaluations without a better one (0: never)


@dataclass
class DistillTermConfig:
    name: str  # a name in losses/distill.py DISTILL_LOSSES: absolute | relative | rkd_distance | rkd_angle | darkrank | relaxed_contrastive | pkt | hint | attention
    weight: float = field(default=1.0, metadata=at_least(0))  # lambda
    args: dict[str, Any] = field(default_factory=dict)
    # The term trains the first N epochs and is off after (still logged; None: every epoch). Cho & Hariharan (ICCV
    # 2019): stopping distillation early can help a student far smaller than its teacher.
    until_epoch: int | None = field(default=None, metadata=at_least(1))


@dataclass
class SemiSupervisedConfig:
    folder: str | None = None  # extra unlabelled images (any layout, searched recursively)
    hide_label_fraction: float = field(default=0.0, metadata=between(0, 1, high_open=True))  # or: this fraction of train classes becomes unlabelled
    unlabelled_per_batch: int = field(default=16, metadata=at_least(1))


@dataclass
class CrossQualityConfig:
    resolution: int | None = field(default=None, metadata=at_least(1))  # student sees images down-scaled to this and back
    jpeg_quality: int | None = field(default=None, metadata=between(1, 100))  # and/or re-encoded at this JPEG quality
    degrade_test: bool = True  # evaluate on test images degraded the same way


@dataclass
class DistillConfig:
    teacher: str = ""  # checkpoint written by `embdistill train`
    teacher_backbone: str | None = None  # expected teacher architecture (None: accept the checkpoint's)
    teacher_dim: int | None = field(default=None, metadata=at_least(1))  # expected teacher embedding size (None: accept the checkpoint's)
    strict_teacher: bool = False  # a teacher trained at another image size is an error, not a note
    terms: list[DistillTermConfig] = field(default_factory=list)
    cache_teacher: bool = True  # compute teacher outputs once per fixed augmented view
    cache_views: int = field(default=4, metadata=at_least(1))  # number of fixed views per image when caching (and in the bank)
    # The fixed views are seeded by this, not by the run's seed: every seed of a row sees the same
    # views, so they can share one teacher bank.
    view_seed: int = field(default=0, metadata=between(0, SEED_MAX))
    # A file of the teacher's embeddings of every (image, view), filled once (`embdistill bank`, or the
    # first run that names it) and read by every later run; refused if made for other inputs.
    bank: str | None = None
    # The teacher sees each augmented crop at this size, the student the same crop resized to
    # data.image_size: a big teacher keeps its resolution while a phone student runs small.
    teacher_image_size: int | None = field(default=None, metadata=at_least(1))  # None: data.image_size
    teacher_precision: TeacherPrecision = "fp32"
    semi_supervised: SemiSupervisedConfig | None = None
    cross_quality: CrossQualityConfig | None = None


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8], metadata=at_least(1))
    # with train.select: best the evaluations are the candidates: then a resumed run may not change it (config/resume.py)
    every_epochs: int = field(default=0, metadata=at_least(0) | may_change("resume", "reuse"))  # 0: only at the end
    batch_size: int = field(default=64, metadata=at_least(1) | may_change("resume", "reuse"))
    initial: bool = False  # also evaluate before training (e.g. a pretrained starting point)
    # What summary.yaml and the report score. auto: the held-out train classes when data.validation_classes > 0
    # (what that key alone always meant), else the test classes. test with validation classes: those are scored
    # every every_epochs (train.select chooses on them), the test classes once, at the end.
    split: EvalSplit = "auto"


@dataclass
class ExperimentConfig:
    name: str = field(default="run", metadata=may_change("resume", "reuse"))
    output_dir: str = field(default="runs", metadata=may_change("resume", "reuse"))
    seed: int = field(default=0, metadata=between(0, SEED_MAX))
    device: str = field(default="auto", metadata=may_change("resume", "reuse"))  # auto | cpu | cuda | cuda:N
    threads: int | None = field(default=None, metadata=at_least(1) | may_change("resume", "reuse"))  # torch CPU threads; None: torch's default
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name
