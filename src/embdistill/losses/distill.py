"""Distillation losses: ``loss(student, teacher) -> scalar``.

Each of ``student`` and ``teacher`` is a (B, D) embedding tensor or an
``EmbedderOutput``, so the losses drop into a user's own training loop as well as
into ours (docs/own_loop.md). Every loss treats the teacher as frozen: teacher
tensors are detached inside the loss, so no gradient reaches the teacher whatever
the caller forgot to freeze. Losses that read intermediate feature maps (hint,
attention) declare them in ``student_layers`` / ``teacher_layers`` so the models
return only those; they need ``EmbedderOutput`` with those ``features`` and reject
a plain tensor, which could not say which layer it is.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .metric import pairwise_distances
from .registry import build_registered, check_registered

if TYPE_CHECKING:  # importing embdistill.models at run time would pull in every backbone
    from embdistill.models.embedder import Embedder
    from embdistill.models.output import EmbedderOutput


Reduction = Literal["mean", "frobenius"]
DistanceScale = Literal["none", "mean"]
DarkRankMethod = Literal["listmle", "listnet"]


class DistillationLoss(nn.Module):
    """(student, teacher) -> scalar, each a (B, D) Tensor or an EmbedderOutput. Declares the feature maps it needs."""

    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()
    batch_level: bool = False  # compares samples with each other: under data parallelism it needs the global batch
    NETWORK_ARGS: tuple[str, ...] = ()  # constructor arguments args_from_networks fills in (config need not give them)

    def forward(self, student: Tensor | EmbedderOutput, teacher: Tensor | EmbedderOutput) -> Tensor:
        raise NotImplementedError

    @classmethod
    def args_from_networks(cls, student: Embedder, teacher: Embedder, args: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments this loss reads off the two networks (sizes), given the configured ``args``.

        ``build_distill_loss`` adds them where the config left them out, so a loss
        with learned parts (a projection, a regressor) is sized before the optimizer exists.
        """
        return {}

    def describe(self) -> str:
        """One line for the training log."""
        return f"{type(self).__name__}({self.extra_repr()})"


def embedding_of(x: Tensor | EmbedderOutput, role: str = "input") -> Tensor:
    """The (B, D) embedding batch of a plain tensor or of an ``EmbedderOutput``.

    Lets every embedding loss drop into a user's own loop, where the embeddings
    are plain tensors, as well as into ours, where models return ``EmbedderOutput``.
    """
    embedding = x if isinstance(x, Tensor) else getattr(x, "embedding", None)
    if not isinstance(embedding, Tensor):
        raise TypeError(f"{role} must be a (B, D) embedding Tensor or an EmbedderOutput, got {type(x).__name__}")
    if embedding.ndim != 2:
        raise ValueError(f"{role} embedding must be a (B, D) tensor, got shape {tuple(embedding.shape)}")
    return embedding


def _embeddings(student: Tensor | EmbedderOutput, teacher: Tensor | EmbedderOutput) -> tuple[Tensor, Tensor]:
    s, t = embedding_of(student, "student"), embedding_of(teacher, "teacher").detach()
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"student batch has {s.shape[0]} samples but teacher batch has {t.shape[0]}")
    return s, t


def _feature(output: Tensor | EmbedderOutput, layer: str, role: str, loss: DistillationLoss) -> Tensor:
    if isinstance(output, Tensor):
        raise TypeError(
            f"{type(loss).__name__} compares feature maps, not embeddings: give the {role} as "
            f"EmbedderOutput(embedding, features={{{layer!r}: its (B, C, H, W) map}}), not a plain tensor"
        )
    if layer not in output.features:
        raise ValueError(
            f"{role} feature map {layer!r} is missing (got {sorted(output.features)}); "
            f"ask the {role} model for the loss's {role}_layers"
        )
    return output.features[layer]


def _zero(x: Tensor) -> Tensor:
    """A zero that keeps the graph, for batches too small to hold any pair or triplet."""
    return x.sum() * 0.0


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bring a (B, C, H, W) map to ``size``.

    Shrinking uses adaptive average pooling, which sees every input pixel (no
    aliasing); growing, or mixed cases, use bilinear interpolation.
    """
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h >= size[0] and w >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _off_diagonal(m: Tensor) -> Tensor:
    """(B, B) -> (B, B-1): row q keeps every entry but (q, q)."""
    b = m.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=m.device)
    return m[~eye].view(b, b - 1)


class AbsoluteTeacherLoss(DistillationLoss):
    """Yu et al. (CVPR 2019) absolute teacher: mean over the batch of ||f_s(x_i) - f_t(x_i)||_2.

    The plain (not squared) L2 distance, as in the authors' code. It needs equal
    embedding sizes; otherwise, with ``project=True``, a learned bias-free linear map
    (then L2 normalisation) takes the student embedding to the teacher's size.
    Give ``student_dim`` and ``teacher_dim`` so that map exists before the
    optimizer is built; a mismatch found only at forward time is an error.
    """

    def __init__(self, student_dim: int | None = None, teacher_dim: int | None = None, project: bool = True) -> None:
        super().__init__()
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        self.projection: nn.Linear | None = None
        if student_dim is not None and teacher_dim is not None and student_dim != teacher_dim:
            if not project:
                raise ValueError(
                    f"student embedding size {student_dim} != teacher embedding size {teacher_dim} "
                    "and project=False: set project=True to learn a linear projection, "
                    "or give both networks the same embedding size"
                )
            self.projection = nn.Linear(student_dim, teacher_dim, bias=False)

    NETWORK_ARGS = ("student_dim", "teacher_dim")

    @classmethod
    def args_from_networks(cls, student: Embedder, teacher: Embedder, args: dict[str, Any]) -> dict[str, Any]:
        return {"student_dim": student.dim, "teacher_dim": teacher.dim}

    def forward(self, student: Tensor | EmbedderOutput, teacher: Tensor | EmbedderOutput) -> Tensor:
        s, t = self.in_teacher_space(student, teacher)
        return torch.linalg.vector_norm(s - t, dim=1).mean()

    def in_teacher_space(self, student: Tensor | EmbedderOutput, teacher: Tensor | EmbedderOutput) -> tuple[Tensor, Tensor]:
        """The student's embeddings in the teacher's space (projected and L2-normalised when the sizes differ),
        and the teacher's."""
        s, t = _embeddings(student, teacher)
        for role, declared, actual in (
            ("student", self.student_dim, s.shape[1]),
            ("teacher", self.teacher_dim, t.shape[1]),
        ):
            if declared is not None and declared != actual:
                raise ValueError(f"AbsoluteTeacherLoss was built for {role}_dim={declared} but got {actual}")
        if self.projection is not None:
            s = F.normalize(self.projection(s), dim=1)
        elif s.shape[1] != t.shape[1]:
            raise ValueError(
                f"student embedding size {s.shape[1]} != teacher embedding size {t.shape[1]}: "
                f"build AbsoluteTeacherLoss(student_dim={s.shape[1]}, teacher_dim={t.shape[1]}, project=True) "
                "so a learned projection exists before the optimizer, or give both networks the same embedding size"
            )
        return s, t

    def extra_repr(self) -> str:
        if self.projection is None:
            return "projection=None"
        return (
            f"projection=learned Linear({self.projection.in_features}->{self.projection.out_features}, "
            "bias=False) + L2 norm on the student embedding"
        )


class AsymmetricContrastiveLoss(AbsoluteTeacherLoss):
    """Student queries against the teacher's embeddings of the batch (InfoNCE): each student embedding must find
    the teacher's embedding of its own image among the batch's,

        loss = -1/B sum_i log softmax_j(<s_i, t_j> / temperature)_i,

    after the asymmetric metric learning of Budnik & Avrithis (CVPR 2021). The absolute term only pulls s_i
    towards t_i; this one also pushes it away from the teacher's embeddings of the other images, which is what a
    student querying a gallery its teacher embedded needs (docs/deploy.md, "One gallery, two networks"). It needs
    no labels. Like the absolute term it places the student in the teacher's space (through the same learned
    projection when the sizes differ), so its checkpoint records that space. ``temperature``: how sharply the
    other images are pushed away (small: only the nearest ones count).

    ``memory`` > 0 adds the teacher's embeddings of the last ``memory`` images of earlier batches to the candidates
    (a first-in first-out queue; the teacher is frozen, so they never go stale, unlike a student's memory, XBM,
    Wang et al. CVPR 2020): each query is ranked against a gallery of the teacher's, not just 63 other photos.
    ``teacher_temperature`` replaces the one-hot target with the teacher's own ranking of the candidates,
    softmax_j(<t_i, t_j> / teacher_temperature): the student's similarities to the teacher's embeddings must
    follow the teacher's, so that photos of its class are not pushed away (the contextual similarity distillation
    of Wu et al., CVPR 2022, for asymmetric retrieval). A memory holds images the same photo may be among
    (another view, an earlier epoch): use a teacher temperature with it. The queue is not in the checkpoint: a
    resumed run fills it again.
    """

    batch_level = True

    def __init__(self, student_dim: int | None = None, teacher_dim: int | None = None, project: bool = True,
                 temperature: float = 0.1, memory: int = 0, teacher_temperature: float | None = None) -> None:
        super().__init__(student_dim, teacher_dim, project)
        for key, value in (("temperature", temperature), ("teacher_temperature", teacher_temperature)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{key}: expected a value > 0, got {value!r}")
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
            raise ValueError(f"memory: expected a whole number of teacher embeddings >= 0, got {memory!r}")
        self.temperature = temperature
        self.memory = memory
        self.teacher_temperature = teacher_temperature
        self.queue: Tensor | None = None  # the teacher's embeddings of earlier batches, newest first

    def forward(self, student: Tensor | EmbedderOutput, teacher: Tensor | EmbedderOutput) -> Tensor:
        s, t = self.in_teacher_space(student, teacher)
        t = F.normalize(t, dim=1)
        candidates = t if self.queue is None else torch.cat([t, self.queue.to(t)])
        logits = s @ candidates.T / self.temperature
        if self.teacher_temperature is None:
            loss = F.cross_entropy(logits, torch.arange(s.shape[0], device=s.device))
        else:
            target = F.softmax(t @ candidates.T / self.teacher_temperature, dim=1)
            loss = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        if self.memory and torch.is_grad_enabled():
            self.queue = candidates[:self.memory].detach()
        return loss

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={getattr(self, k)}" for k in ("memory", "teacher_temperature") if getattr(self, k))
        return f"temperature={self.temperature}{extra}, {super().extra_repr()}"


class RelativeTeacherLoss(DistillationLoss):
    """Yu et al. (CVPR 2019) relative teacher: match the batch's pairwise distance matrices.

    D_S and D_T are the (B, B) Euclidean distance matrices of the student and
    teacher embeddings (taken as given: L2-normalised per ``EmbedderOutput``).

    - ``"frobenius"``: ||D_S - D_T||_F, the authors' code exactly. It grows like B,
      so its weight lambda must be re-tuned whenever the batch size changes.
    - ``"mean"`` (default): the RMS over the B(B-1) off-diagonal pairs,
      ||D_S - D_T||_F / sqrt(B(B-1)) (the diagonals are zero in both). Each pair
      contributes on the same scale whatever B is, so lambda carries over between
      batch sizes. To reuse a lambda from the paper at batch size B:
      ``lambda_mean = lambda_paper * sqrt(B * (B - 1))``.

    ``scale="mean"`` first divides each matrix by its mean off-diagonal distance, as
    RKD does (Park et al. 2019), so only the shape of the geometry is matched, not its
    size: the student's metric loss keeps deciding how far apart its embeddings lie,
    and the teacher decides only which pairs are nearer than others. ``scale="none"``
    is the paper's.
    """

    batch_level = True
    REDUCTIONS: tuple[str, ...] = get_args(Reduction)
    SCALES: tuple[str, ...] = get_args(DistanceScale)

    def __init__(self, reduction: Reduction = "mean", scale: DistanceScale = "none") -> None:
        super().__init__()
        if reduction not in self.REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(self.REDUCTIONS)}")
        if scale not in self.SCALES:
            raise ValueError(f"unknown scale {scale!r}; valid: {', '.join(self.SCALES)}")
        self.reduction = reduction
        self.scale = scale

    def forward(self, student: Tensor | EmbedderOutput, teacher: Tensor | EmbedderOutput) -> Tensor:
        s, t = _embeddings(student, teacher)
        b = s.shape[0]
        if b < 2:
            return _zero(s)
        d_s, d_t = pairwise_distances(s), pairwise_distances(t)
        if self.scale == "mean":  # the diagonal is zero: sum / (B(B-1)) is the off-diagonal mean
            d_s = d_s / (d_s.sum() / (b * (b - 1))).clamp_min(1e-12)
            d_t = d_t / (d_t.sum() / (b * (b - 1))).clamp_min(1e-12)
        frobenius = torch.linalg.vector_norm(d_s - d_t)
        if self.reduction == "frobenius":
            return frobenius
        return frobenius / math.sqrt(b * (b - 1))

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, scale={self.scale!r}"


class RKDDistanceLoss(DistillationLoss):
    """Park et al. (CVPR 2019) RKD distance-wise loss.

    Pairwise distances, each divided by its network's mean over the off-diagonal
    pairs (scale-free, so student and teacher spaces may differ in size and
    scale), compared with the Huber (smooth L1) loss averaged over those pairs.
    The authors' code averages over all B^2 entries, diagonal zeros included, i.e.
    their value is ours times (B - 1) / B.
    """

    batch_level = True

    def forward(self, student: Tensor | EmbedderOutput, teacher: Tensor | EmbedderOutput) -> Tensor:
        s, t = _embeddings(student, teacher)
        if s.shape[0] < 2:
            return _zero(s)
        d_s = _off_diagonal(pairwise_distances(s))
        d_t = _off_diagonal(pairwise_distances(t))
        return F.smooth_l1_loss(d_s / d_s.mean(), d_t / d_t.mean())


def _triplet_cosines(x: Tensor) -> Tensor:
    """(B, D) -> (B, B, B) whose [j, i, k] is cos of the angle at x_j between x_i - x_j and x_k - x_j."""
    unit = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), dim=2)
    return unit @ unit.transpose(1, 2)


class RKDAngleLoss(DistillationLoss):
    """Park et al. (CVPR 2019) RKD angle-wise loss.

    For every triplet of distinct samples (i, j, k), the cosine of the angle at j,
    compared with the Huber loss averaged over the B(B-1)(B-2) triplets. The
    authors' code averages over all B^3 entries, whose degenerate ones are equal in
    both networks, i.e. their value is ours times (B-1)(B-2)/B^2. Memory O(B^2 D).
    """

    batch_level = True

    def forward(self, student: Tensor | EmbedderOutput, teacher: Tensor | EmbedderOutput) -> Tensor:
        s, t = _embeddings(student, teacher)
        b = s.shape[0]
        if b < 3:
            return _zero(s)
        eye = torch.eye(b, dtype=torch.bool, device=s.device)
        # indices [j, i, k]: keep i != j, k != j, i != k
        distinct = ~(eye.unsqueeze(2) | eye.unsqueeze(1) | eye.unsqueeze(0))
        return F.smooth_l1_loss(_triplet_cosines(s)[distinct], _triplet_cosines(t)[distinct])


class DarkRankLoss(DistillationLoss):
    """Chen, Wang & Zhang (AAAI 2018) DarkRank: transfer the teacher's similarity ranking.

    Each sample is a query in turn; the other B-1 form its list, scored by
    S(q, i) = -alpha * ||x_q - x_i||^beta.

    - ``"listmle"`` (hard transfer, default): -log P(pi_T | student scores) under
      Plackett-Luce, pi_T the teacher's order: sum_j [logsumexp_{k>=j} s_{pi_k} - s_{pi_j}].
      Not zero when student equals teacher (a Plackett-Luce probability is < 1);
      it keeps rewarding sharper student scores in the teacher's order.
    - ``"listnet"`` (soft transfer): the paper's KL between the two permutation
      distributions is intractable over (B-1)! orders, so we use ListNet's top-1
      approximation (Cao et al., ICML 2007): KL(softmax(teacher) || softmax(student))
      over each list. It is zero when the scores agree.

    Both are summed over a list and averaged over queries, so they grow with B.
    """

    batch_level = True
    METHODS: tuple[str, ...] = get_args(DarkRankMethod)

    def __init__(self, alpha: float = 3.0, beta: float = 3.0, method: DarkRankMethod = "listmle") -> None:
        super().__init__()
        if method not in self.METHODS:
            raise ValueError(f"unknown DarkRank method {method!r}; valid: {', '.join(self.METHODS)}")
        self.alpha = alpha
        self.beta = beta
        self.method = method

    def _scores(self, x: Tensor) -> Tensor:
        return -self.alpha * _off_diagonal(pairwise_distances(x)).pow(self.beta)

    def forward(self, student: Tensor | EmbedderOutput, teacher: Tensor | EmbedderOutput) -> Tensor:
        s, t = _embeddings(student, teacher)
        if s.shape[0] < 2:
            return _zero(s)
        scores_s, scores_t = self._scores(s), self._scores(t)
        if self.method == "listnet":
            return F.kl_div(
                F.log_softmax(scores_s, dim=1), F.log_softmax(scores_t, dim=1), reduction="batchmean", log_target=True
            )
        order = scores_t.argsort(dim=1, descending=True, stable=True)
        ordered = scores_s.gather(1, order)
        tail_logsumexp = ordered.flip(1).logcumsumexp(dim=1).flip(1)
        return (tail_logsumexp - ordered).sum(dim=1).mean()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, method={self.method!r}"


class RelaxedContrastiveLoss(DistillationLoss):
    """Kim et al. (CVPR 2021), "Embedding Transfer with Label Relaxation": the relaxed contrastive loss.

    A contrastive loss whose binary same-class label is relaxed into the teacher's
    similarity, so it needs no labels at all: each pair (i, j), i != j, is pulled
    together with weight w_ij and pushed beyond the margin delta with weight 1 - w_ij,

        loss = 1/B sum_i sum_{j != i} [ w_ij d_ij^2 + (1 - w_ij) [delta - d_ij]_+^2 ],
        w_ij = exp(-||t_i - t_j||^2 / sigma).

    Normalised exactly as the authors' code (LabelRelaxation-CVPR21, ``Relaxed_Contra``):
    the teacher's embeddings are L2-normalised before w is taken (so the teacher's
    scale never matters), and the student's distances are divided by their row mean
    over all B entries of the row, the zero self-distance included
    (d_ij = ||s_i - s_j|| / (1/B sum_k ||s_i - s_k||)), which makes the loss blind to the
    student's scale; the student's embeddings are used as given. ``sigma`` (the kernel
    width) and ``delta`` (the margin) default to the paper's 1 and 1.
    """

    batch_level = True

    def __init__(self, sigma: float = 1.0, delta: float = 1.0) -> None:
        super().__init__()
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma: expected a value > 0, got {sigma!r}")
        if not (math.isfinite(delta) and delta > 0):
            raise ValueError(f"delta: expected a value > 0, got {delta!r}")
        self.sigma = sigma
        self.delta = delta

    def forward(self, student: Tensor | EmbedderOutput, teacher: Tensor | EmbedderOutput) -> Tensor:
        s, t = _embeddings(student, teacher)
        b = s.shape[0]
        if b < 2:
            return _zero(s)
        weights = torch.exp(-pairwise_distances(F.normalize(t, dim=1)).pow(2) / self.sigma)
        d = pairwise_distances(s)
        d = d / d.mean(dim=1, keepdim=True).clamp_min(1e-12)  # the row mean over B entries, as the authors' code
        pull = weights * d.pow(2)
        push = (1.0 - weights) * F.relu(self.delta - d).pow(2)
        return _off_diagonal(pull + push).sum() / b

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, delta={self.delta}"


class PKTLoss(DistillationLoss):
    """Passalis & Tefas (ECCV 2018) probabilistic knowledge transfer (PKT).

    Each network's cosine similarities, mapped to [0, 1] by (cos + 1) / 2, are
    normalised row by row into conditional probabilities p_{j|i} (teacher) and
    q_{j|i} (student); the loss is KL(P || Q) per row, summed over j and averaged
    over the B rows:

        loss = 1/B sum_i sum_j p_{j|i} log((p_{j|i} + eps) / (q_{j|i} + eps)),  eps = 1e-7.

    As in the authors' code (passalis/probabilistic_kt), each vector is divided by
    its norm + eps, the row includes j = i, and eps is theirs; their code takes the
    mean over the B^2 entries, i.e. their value is ours / B. Blind to each
    embedding's length and to rotations of either space; zero when the student's
    cosine similarities equal the teacher's, so embedding sizes may differ.
    """

    batch_level = True
    EPS = 1e-7

    def _conditional(self, x: Tensor) -> Tensor:
        unit = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + self.EPS)
        kernel = (unit @ unit.t() + 1.0) / 2.0
        return kernel / kernel.sum(dim=1, keepdim=True)

    def forward(self, student: Tensor | EmbedderOutput, teacher: Tensor | EmbedderOutput) -> Tensor:
        s, t = _embeddings(student, teacher)
        p, q = self._conditional(t), self._conditional(s)
        return (p * torch.log((p + self.EPS) / (q + self.EPS))).sum(dim=1).mean()


class HintLoss(DistillationLoss):
    """FitNets hint (Romero et al., ICLR 2015): regress a student feature map onto a teacher's.

    A learned 1x1 convolution maps the student's channels to the teacher's; the
    result is brought to the teacher's spatial size (average pooling when
    shrinking, bilinear interpolation when growing) and compared by mean squared
    error. The regressor is trained with the student.
    """

    def __init__(self, student_channels: int, teacher_channels: int, student_layer: str, teacher_layer: str) -> None:
        super().__init__()
        self.student_layers = (student_layer,)
        self.teacher_layers = (teacher_layer,)
        self.regressor = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    NETWORK_ARGS = ("student_channels", "teacher_channels")

    @classmethod
    def args_from_networks(cls, student: Embedder, teacher: Embedder, args: dict[str, Any]) -> dict[str, Any]:
        sized = {}
        for role, network in (("student", student), ("teacher", teacher)):
            layer = args.get(f"{role}_layer")
            if layer is None:  # build_registered then names the missing argument
                continue
            if layer not in network.backbone.channels:
                raise ValueError(f"hint {role}_layer {layer!r} is not a stage of the {role}; "
                                 f"it has {list(network.backbone.channels)}")
            sized[f"{role}_channels"] = network.backbone.channels[layer]
        return sized

    def forward(self, student: Tensor | EmbedderOutput, teacher: Tensor | EmbedderOutput) -> Tensor:
        target = _feature(teacher, self.teacher_layers[0], "teacher", self).detach()
        hint = self.regressor(_feature(student, self.student_layers[0], "student", self))
        return F.mse_loss(_resize(hint, target.shape[-2:]), target)

    def extra_repr(self) -> str:
        return f"student_layer={self.student_layers[0]!r}, teacher_layer={self.teacher_layers[0]!r}"


class AttentionTransferLoss(DistillationLoss):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017) between paired layers.

    Attention map Q = mean over channels of |A|^p, flattened and L2-normalised per
    sample. Loss = mean over layer pairs of the batch mean of ||Q_s - Q_t||_2, the
    paper's form: it lies in [0, 2] whatever the resolution. (The authors' code
    uses mean((Q_s - Q_t)^2), i.e. ||.||^2 / (H W), and offsets the 1/(H W) with a
    weight of 1000.) The student's attention map, computed at its own resolution,
    is resized to the teacher's (pooling when shrinking, bilinear when growing);
    resizing the one-channel map is C times cheaper than resizing the features.
    """

    def __init__(self, student_layers: Sequence[str], teacher_layers: Sequence[str], p: float = 2.0) -> None:
        super().__init__()
        if not student_layers or len(student_layers) != len(teacher_layers):
            raise ValueError(
                f"need one or more layer pairs; "
                f"got {len(student_layers)} student and {len(teacher_layers)} teacher layers"
            )
        self.student_layers = tuple(student_layers)
        self.teacher_layers = tuple(teacher_layers)
        self.p = p

    def _attention(self, features: Tensor) -> Tensor:
        return features.abs().pow(self.p).mean(dim=1, keepdim=True)

    def forward(self, student: Tensor | EmbedderOutput, teacher: Tensor | EmbedderOutput) -> Tensor:
        losses = []
        for s_layer, t_layer in zip(self.student_layers, self.teacher_layers):
            a_t = self._attention(_feature(teacher, t_layer, "teacher", self).detach())
            a_s = _resize(self._attention(_feature(student, s_layer, "student", self)), a_t.shape[-2:])
            q_s = F.normalize(a_s.flatten(1), dim=1)
            q_t = F.normalize(a_t.flatten(1), dim=1)
            losses.append(torch.linalg.vector_norm(q_s - q_t, dim=1).mean())
        return torch.stack(losses).mean()

    def extra_repr(self) -> str:
        pairs = ", ".join(f"{s}->{t}" for s, t in zip(self.student_layers, self.teacher_layers))
        return f"layers=[{pairs}], p={self.p}"


DISTILL_LOSSES: dict[str, type[DistillationLoss]] = {
    "absolute": AbsoluteTeacherLoss,
    "asymmetric_contrastive": AsymmetricContrastiveLoss,
    "relative": RelativeTeacherLoss,
    "rkd_distance": RKDDistanceLoss,
    "rkd_angle": RKDAngleLoss,
    "darkrank": DarkRankLoss,
    "relaxed_contrastive": RelaxedContrastiveLoss,
    "pkt": PKTLoss,
    "hint": HintLoss,
    "attention": AttentionTransferLoss,
}


def build_distill_loss(name: str, student: Embedder | None = None, teacher: Embedder | None = None,
                       **kwargs: Any) -> DistillationLoss:
    """Build a registered distillation loss, e.g. ``build_distill_loss("relative", reduction="frobenius")``.

    Given the ``student`` and ``teacher`` embedders, the loss sizes itself from them
    (``DistillationLoss.args_from_networks``) where ``kwargs`` leave a size out.
    """
    check_registered("distillation", DISTILL_LOSSES, name)
    if student is not None and teacher is not None:
        kwargs = {**DISTILL_LOSSES[name].args_from_networks(student, teacher, kwargs), **kwargs}
    return build_registered("distillation", DISTILL_LOSSES, name, kwargs)
