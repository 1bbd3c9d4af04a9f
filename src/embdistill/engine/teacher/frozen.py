"""The frozen teacher: loaded from its checkpoint, run without gradients, its outputs cached per (image, view)."""
from __future__ import annotations

import torch
from torch import Tensor

from embdistill.config import ExperimentConfig
from embdistill.data.transforms import Normalization
from embdistill.checkpoints import check_teacher, embedder_from_checkpoint, load_checkpoint
from embdistill.models.embedder import Embedder
from embdistill.models.output import EmbedderOutput


def load_teacher(cfg: ExperimentConfig, device: torch.device) -> Embedder:
    """The teacher of ``distill.teacher``, checked against ``distill.teacher_backbone``/``teacher_dim``/``strict_teacher``."""
    d = cfg.distill
    payload = load_checkpoint(d.teacher)
    teacher = embedder_from_checkpoint(payload)
    for note in check_teacher(payload, d.teacher, teacher, backbone=d.teacher_backbone, dim=d.teacher_dim,
                              image_size=d.teacher_image_size or cfg.data.image_size, strict_image_size=d.strict_teacher):
        print(f"[{cfg.name}] note: {note}")
    return teacher.to(device)


def renormalize(x: Tensor, source: Normalization, target: Normalization) -> Tensor:
    """Re-express an image normalised for one network in another's normalisation (exact, per channel)."""
    if source == target:
        return x
    s_mean, s_std, t_mean, t_std = (
        torch.tensor(v, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        for v in (source.mean, source.std, target.mean, target.std)
    )
    return (x * s_std + s_mean - t_mean) / t_std


class TeacherCache:
    """Teacher embeddings (and requested feature maps) for ``views × images``, filled lazily."""

    def __init__(self, num_images: int, num_views: int) -> None:
        self.num_images = num_images
        self.num_views = num_views
        self.filled = torch.zeros(num_views, num_images, dtype=torch.bool)
        self.store: dict[str, Tensor] = {}  # "embedding" or a layer name -> (V, N, ...)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.store.values())

    def missing(self, indices: Tensor, views: Tensor) -> Tensor:
        """Boolean mask of the batch rows not cached yet."""
        return ~self.filled[views, indices]

    def get(self, indices: Tensor, views: Tensor) -> EmbedderOutput:
        features = {k: v[views, indices] for k, v in self.store.items() if k != "embedding"}
        return EmbedderOutput(self.store["embedding"][views, indices], features)

    def insert(self, indices: Tensor, views: Tensor, output: EmbedderOutput) -> None:
        tensors = {"embedding": output.embedding, **output.features}
        for key, value in tensors.items():
            if key not in self.store:
                self.store[key] = torch.zeros((self.num_views, self.num_images, *value.shape[1:]), dtype=value.dtype)
            self.store[key][views, indices] = value.detach().cpu()
        self.filled[views, indices] = True


class FrozenTeacher:
    """Runs the teacher in eval mode without gradients, in its own normalisation and precision."""

    def __init__(
        self,
        model: Embedder,
        layers: tuple[str, ...],
        input_normalization: Normalization,
        precision: str = "fp32",
        cache: TeacherCache | None = None,
    ) -> None:
        if precision not in ("fp32", "bf16"):  # distill.teacher_precision is checked when the config is read
            raise ValueError(f"teacher precision must be fp32 or bf16, got {precision!r}")
        self.model = model.eval().requires_grad_(False)
        self.layers = layers
        self.input_normalization = input_normalization
        self.precision = precision
        self.cache = cache
        self.forward_passes = 0

    @torch.no_grad()
    def __call__(self, images: Tensor, indices: Tensor, views: Tensor) -> EmbedderOutput:
        """Teacher outputs for a batch; with a cache, only the (image, view) pairs never seen run."""
        if self.cache is None:
            return self.embed(images)
        todo = self.cache.missing(indices, views)
        if bool(todo.any()):
            rows = _first_occurrences(indices * self.cache.num_views + views, todo)
            self.cache.insert(indices[rows], views[rows], self.embed(images[rows.to(images.device)]))
        return _to(self.cache.get(indices, views), images.device)

    @torch.no_grad()
    def embed(self, images: Tensor) -> EmbedderOutput:
        """The teacher's fp32 outputs for ``images`` (in the student's normalisation), bypassing any cache."""
        x = renormalize(images, self.input_normalization, self.model.normalization)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            output = self.model(x, self.layers)
        self.forward_passes += len(images)
        return output.float()


def _first_occurrences(keys: Tensor, mask: Tensor) -> Tensor:
    """Row numbers of the masked rows, each key once (a batch may hold one image twice)."""
    rows = mask.nonzero().squeeze(1)
    _, inverse = torch.unique(keys[rows], return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(rows), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(rows)), reduce="amin"
    )
    return rows[first]


def _to(output: EmbedderOutput, device: torch.device) -> EmbedderOutput:
    return EmbedderOutput(output.embedding.to(device), {k: v.to(device) for k, v in output.features.items()})
