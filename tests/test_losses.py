"""Metric and distillation losses: hand-computed values on tiny batches, plus invariants."""
from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import BatchHardMiner
from pytorch_metric_learning.reducers import MeanReducer

from embdistill.losses import (
    DISTILL_LOSSES,
    METRIC_LOSSES,
    AbsoluteTeacherLoss,
    AsymmetricContrastiveLoss,
    AttentionTransferLoss,
    BatchHardTripletLoss,
    DarkRankLoss,
    DistillationLoss,
    HintLoss,
    PKTLoss,
    RelativeTeacherLoss,
    RelaxedContrastiveLoss,
    RKDAngleLoss,
    RKDDistanceLoss,
    build_distill_loss,
    build_metric_loss,
    pairwise_distances,
)
from embdistill.models.output import EmbedderOutput

DT = torch.float64


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=DT)


def out(embedding: torch.Tensor, **features: torch.Tensor) -> EmbedderOutput:
    return EmbedderOutput(embedding=embedding, features=features)


def line(*xs: float) -> torch.Tensor:
    """Points on the x axis of the plane."""
    return t([[x, 0.0] for x in xs])


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=DT, generator=torch.Generator().manual_seed(seed)))
    return q


def unit_batch(b: int, d: int, seed: int) -> torch.Tensor:
    x = torch.randn(b, d, dtype=DT, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(x, dim=1)


# Right triangle with sides 3, 4, 5 and an equilateral triangle of side 1.
RIGHT = t([[0, 0], [3, 0], [0, 4]])
EQUILATERAL = t([[0, 0], [1, 0], [0.5, math.sqrt(3) / 2]])


# --------------------------------------------------------------------------- metric


def test_pairwise_distances_by_hand_and_finite_grad_at_coincident_points() -> None:
    assert torch.allclose(pairwise_distances(RIGHT), t([[0, 3, 4], [3, 0, 5], [4, 5, 0]]))
    x = t([[1, 2], [1, 2], [0, 0]]).requires_grad_()
    pairwise_distances(x).sum().backward()
    assert torch.isfinite(x.grad).all()


# Four points on a line: labels 0 at x=0 and x=3, labels 1 at x=1 and x=5.
#   anchor 0: hardest pos 3 (x=3), hardest neg 1 (x=1) -> 3 - 1 = 2
#   anchor 3: hardest pos 3 (x=0), hardest neg 2 (x=1 or x=5) -> 1
#   anchor 1: hardest pos 4 (x=5), hardest neg 1 (x=0) -> 3
#   anchor 5: hardest pos 4 (x=1), hardest neg 2 (x=3) -> 2
BH_X = line(0, 3, 1, 5)
BH_Y = torch.tensor([0, 0, 1, 1])
BH_DIFFS = [2.0, 1.0, 3.0, 2.0]


@pytest.mark.parametrize("margin", [0.0, 0.5, -2.5])
def test_batch_hard_triplet_by_hand(margin: float) -> None:
    expected = sum(max(d + margin, 0.0) for d in BH_DIFFS) / 4  # margin -2.5: (0 + 0 + 0.5 + 0) / 4
    assert BatchHardTripletLoss(margin=margin)(BH_X, BH_Y).item() == pytest.approx(expected)


def test_batch_hard_triplet_soft_by_hand() -> None:
    expected = sum(math.log1p(math.exp(d)) for d in BH_DIFFS) / 4
    assert BatchHardTripletLoss(soft=True)(BH_X, BH_Y).item() == pytest.approx(expected)


def test_batch_hard_triplet_skips_anchors_without_positive() -> None:
    # A lone label-2 point far away: no positive, so it is not an anchor, and it is
    # never the nearest negative of the others.
    x = torch.cat([BH_X, line(10)])
    y = torch.cat([BH_Y, torch.tensor([2])])
    assert BatchHardTripletLoss()(x, y).item() == pytest.approx(sum(BH_DIFFS) / 4)


def test_batch_hard_triplet_without_valid_anchor_is_a_graph_connected_zero() -> None:
    x = BH_X.clone().requires_grad_()
    loss = BatchHardTripletLoss()(x, torch.zeros(4, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_batch_hard_triplet_finite_grad_with_duplicate_points() -> None:
    x = t([[1, 0], [1, 0], [0, 1], [0, 1]]).requires_grad_()
    BatchHardTripletLoss(margin=0.2)(x, torch.tensor([0, 0, 1, 1])).backward()
    assert torch.isfinite(x.grad).all()


def _pml_batch_hard(margin: float, smooth: bool) -> tuple[TripletMarginLoss, BatchHardMiner]:
    # pml defaults that differ from ours, set explicitly: LpDistance normalises
    # embeddings (in the miner too, which has its own distance), and
    # TripletMarginLoss averages only the non-zero terms (AvgNonZeroReducer).
    distance = LpDistance(normalize_embeddings=False)
    loss = TripletMarginLoss(margin=margin, smooth_loss=smooth, reducer=MeanReducer(), distance=distance)
    return loss, BatchHardMiner(distance=LpDistance(normalize_embeddings=False))


@pytest.mark.parametrize(("margin", "soft"), [(0.0, False), (0.3, False), (0.0, True)])
@pytest.mark.parametrize(
    "labels",
    [[0, 0, 1, 1, 2, 2, 0, 1], [0, 0, 1, 1, 2, 2, 3, 4]],  # the second has anchors without a positive
    ids=["all-anchors-valid", "some-singletons"],
)
def test_batch_hard_triplet_matches_pml(margin: float, soft: bool, labels: list[int]) -> None:
    x = 2.0 * torch.randn(8, 5, dtype=DT, generator=torch.Generator().manual_seed(0))  # not unit norm on purpose
    y = torch.tensor(labels)
    pml_loss, miner = _pml_batch_hard(margin, soft)
    expected = pml_loss(x, y, miner(x, y))
    assert BatchHardTripletLoss(margin=margin, soft=soft)(x, y).item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("batch_hard_triplet", {"margin": 0.1}),
        ("triplet_margin", {}),
        ("triplet_margin", {"miner": "batch_hard"}),
        ("triplet_margin", {"miner": "semihard", "margin": 0.2}),
        ("contrastive", {"neg_margin": 0.8}),
        ("multi_similarity", {}),
        ("multi_similarity", {"miner_epsilon": None}),
        ("proxy_anchor", {"num_classes": 3, "embedding_size": 8}),
    ],
)
def test_metric_registry_builds_losses_with_one_signature(name: str, kwargs: dict) -> None:
    loss_fn = build_metric_loss(name, **kwargs)
    x = unit_batch(9, 8, seed=1).float().requires_grad_()
    loss = loss_fn(x, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_proxy_anchor_proxies_are_parameters() -> None:
    assert sum(p.numel() for p in build_metric_loss("proxy_anchor", num_classes=3, embedding_size=8).parameters()) == 24


def test_metric_registry_rejects_bad_names_and_arguments() -> None:
    with pytest.raises(ValueError, match="'arcface'.*batch_hard_triplet.*multi_similarity"):
        build_metric_loss("arcface")
    with pytest.raises(ValueError, match="marginn.*margin, soft"):
        build_metric_loss("batch_hard_triplet", marginn=0.1)
    with pytest.raises(ValueError, match="num_classes, embedding_size"):
        build_metric_loss("proxy_anchor")
    with pytest.raises(ValueError, match="'semi'"):
        build_metric_loss("triplet_margin", miner="semi")
    assert set(METRIC_LOSSES) == {
        "batch_hard_triplet",
        "triplet_margin",
        "contrastive",
        "multi_similarity",
        "proxy_anchor",
    }


# --------------------------------------------------------------- distillation


def test_absolute_by_hand() -> None:
    # ||(1,0)-(0,1)|| = sqrt(2), ||(0,1)-(0,1)|| = 0 -> mean sqrt(2)/2
    loss = AbsoluteTeacherLoss()(out(t([[1, 0], [0, 1]])), out(t([[0, 1], [0, 1]])))
    assert loss.item() == pytest.approx(math.sqrt(2) / 2)


def test_absolute_projection_is_trainable_and_described() -> None:
    loss_fn = AbsoluteTeacherLoss(student_dim=3, teacher_dim=2)
    assert loss_fn.projection is not None and loss_fn.projection.weight.requires_grad
    assert "projection=learned Linear(3->2" in loss_fn.describe()
    assert "Linear(in_features=3, out_features=2, bias=False)" in repr(loss_fn)
    student = out(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)))
    teacher = out(unit_batch(6, 2, seed=1).float())
    first = loss_fn(student, teacher)
    first.backward()
    assert loss_fn.projection.weight.grad.abs().sum() > 0
    optimizer = torch.optim.SGD(loss_fn.parameters(), lr=0.5)
    for _ in range(20):
        optimizer.zero_grad()
        loss_fn(student, teacher).backward()
        optimizer.step()
    assert loss_fn(student, teacher).item() < first.item()


def test_absolute_dimension_mismatch_errors() -> None:
    with pytest.raises(ValueError, match="3 != teacher embedding size 2.*project=True"):
        AbsoluteTeacherLoss(student_dim=3, teacher_dim=2, project=False)
    assert AbsoluteTeacherLoss(student_dim=2, teacher_dim=2, project=False).projection is None
    with pytest.raises(ValueError, match=r"student_dim=3, teacher_dim=2"):
        AbsoluteTeacherLoss()(out(torch.ones(2, 3)), out(torch.ones(2, 2)))
    with pytest.raises(ValueError, match="student_dim=4 but got 3"):
        AbsoluteTeacherLoss(student_dim=4, teacher_dim=2)(out(torch.ones(2, 3)), out(torch.ones(2, 2)))


def test_relative_by_hand() -> None:
    # D_S sides 3, 4, 5; the teacher is the same triangle doubled: sides 6, 8, 10.
    # Each off-diagonal difference appears twice: ||D_S - D_T||_F = sqrt(2 (9 + 16 + 25)) = 10.
    student, teacher = out(RIGHT), out(2 * RIGHT)
    assert RelativeTeacherLoss("frobenius")(student, teacher).item() == pytest.approx(10.0)
    assert RelativeTeacherLoss()(student, teacher).item() == pytest.approx(10.0 / math.sqrt(3 * 2))


def test_relative_mean_scale_by_hand() -> None:
    # Scaled by their means, the 3-4-5 triangle and its double are the same (1/4 * (3, 4, 5)): zero.
    assert RelativeTeacherLoss(scale="mean")(out(RIGHT), out(2 * RIGHT)).item() == pytest.approx(0.0, abs=1e-7)
    # Student 3-4-5 (mean 4): 0.75, 1, 1.25. Teacher at x = 0, 1, 2 (distances 1, 2, 1, mean 4/3):
    # 0.75, 1.5, 0.75. Differences 0, -0.5, 0.5, each pair twice: Frobenius sqrt(2 * 0.5) = 1.
    student, teacher = out(RIGHT), out(line(0, 1, 2))
    assert RelativeTeacherLoss("frobenius", scale="mean")(student, teacher).item() == pytest.approx(1.0)
    assert RelativeTeacherLoss(scale="mean")(student, teacher).item() == pytest.approx(1.0 / math.sqrt(6))


def test_relative_frobenius_is_mean_times_sqrt_pairs() -> None:
    student, teacher = out(unit_batch(7, 5, seed=0)), out(unit_batch(7, 9, seed=1))
    mean = RelativeTeacherLoss("mean")(student, teacher).item()
    assert RelativeTeacherLoss("frobenius")(student, teacher).item() == pytest.approx(mean * math.sqrt(7 * 6))


def test_relative_mean_form_scale_under_batch_duplication() -> None:
    # Stacking a batch twice multiplies every pair's count by 4 and adds B zero-difference
    # (i, i') pairs: Frobenius exactly doubles, the mean form changes by
    # sqrt(2(B-1)/(2B-1)), which tends to 1 as B grows.
    b = 8
    s, te = unit_batch(b, 5, seed=0), unit_batch(b, 6, seed=1)
    twice = out(torch.cat([s, s])), out(torch.cat([te, te]))
    frob = RelativeTeacherLoss("frobenius")
    mean = RelativeTeacherLoss("mean")
    assert frob(*twice).item() == pytest.approx(2 * frob(out(s), out(te)).item(), rel=1e-6)
    ratio = mean(*twice).item() / mean(out(s), out(te)).item()
    assert ratio == pytest.approx(math.sqrt(2 * (b - 1) / (2 * b - 1)), rel=1e-6)


def test_rkd_distance_by_hand() -> None:
    # Student 3-4-5 triangle: mean distance 4 -> normalised 0.75, 1, 1.25 (pairs 01, 02, 12).
    # Teacher at x = 0, 1, 2: distances 1, 2, 1, mean 4/3 -> 0.75, 1.5, 0.75.
    # Differences 0, -0.5, 0.5, all < 1 so Huber = x^2 / 2: (0 + 0.125 + 0.125) / 3.
    loss = RKDDistanceLoss()(out(RIGHT), out(line(0, 1, 2)))
    assert loss.item() == pytest.approx(0.25 / 3)


def test_rkd_angle_by_hand() -> None:
    # Student 3-4-5 triangle, cosines at the vertices (0,0), (3,0), (0,4): 0, 3/5, 4/5.
    # Teacher equilateral: 0.5 everywhere. Each vertex heads 2 of the 6 distinct triplets.
    # Differences -0.5, 0.1, 0.3 -> Huber x^2/2: 0.125, 0.005, 0.045.
    loss = RKDAngleLoss()(out(RIGHT), out(EQUILATERAL))
    assert loss.item() == pytest.approx((0.125 + 0.005 + 0.045) / 3)


# DarkRank batch on a line: student at 0, 1, 3; teacher at 0, 2, 3.
#   query 0: teacher distances (to 1, to 2) = (2, 3) -> order [1, 2]; student distances (1, 3)
#   query 1: teacher (to 0, to 2) = (2, 1) -> order [2, 0];          student (1, 2)
#   query 2: teacher (to 0, to 1) = (3, 1) -> order [1, 0];          student (3, 2)
DR_STUDENT, DR_TEACHER = line(0, 1, 3), line(0, 2, 3)


def _listmle_two(first: float, second: float) -> float:
    """-log P(first before second) = logsumexp(first, second) - first (the last term is 0)."""
    return math.log(math.exp(first) + math.exp(second)) - first


def test_darkrank_listmle_by_hand() -> None:
    # alpha = beta = 1: scores are minus distances, student scores in teacher order:
    expected = (_listmle_two(-1, -3) + _listmle_two(-2, -1) + _listmle_two(-2, -3)) / 3
    loss = DarkRankLoss(alpha=1.0, beta=1.0)(out(DR_STUDENT), out(DR_TEACHER))
    assert loss.item() == pytest.approx(expected)
    # alpha = beta = 2: scores -2 d^2 -> student distances 1, 2, 3 score -2, -8, -18.
    expected = (_listmle_two(-2, -18) + _listmle_two(-8, -2) + _listmle_two(-8, -18)) / 3
    loss = DarkRankLoss(alpha=2.0, beta=2.0)(out(DR_STUDENT), out(DR_TEACHER))
    assert loss.item() == pytest.approx(expected)


def _kl_two(p_scores: tuple[float, float], q_scores: tuple[float, float]) -> float:
    """KL(softmax(p) || softmax(q)) over two items."""
    p = [math.exp(v) / (math.exp(p_scores[0]) + math.exp(p_scores[1])) for v in p_scores]
    q = [math.exp(v) / (math.exp(q_scores[0]) + math.exp(q_scores[1])) for v in q_scores]
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_darkrank_listnet_by_hand() -> None:
    # alpha = beta = 1, per query (teacher scores, student scores) over the same two items:
    expected = (_kl_two((-2, -3), (-1, -3)) + _kl_two((-2, -1), (-1, -2)) + _kl_two((-3, -1), (-3, -2))) / 3
    loss = DarkRankLoss(alpha=1.0, beta=1.0, method="listnet")(out(DR_STUDENT), out(DR_TEACHER))
    assert loss.item() == pytest.approx(expected)


def test_darkrank_listmle_is_not_zero_at_equality() -> None:
    # A Plackett-Luce probability is below 1 even for the right order: by design, not a bug.
    x = out(unit_batch(5, 4, seed=0))
    assert DarkRankLoss()(x, x).item() > 0


# Relaxed contrastive: teacher unit vectors (1, 0), (1, 0), (0, 1): squared distances 0 (pair 01) and 2
# (pairs 02, 12), so w_01 = 1 and w_02 = w_12 = exp(-2 / sigma). Student on a line at x = 0, 1, 3: distances
# 1 (01), 3 (02), 2 (12); row means over the 3 entries of each row (self included): 4/3, 1, 5/3, so the
# normalised distances are d01 = 3/4, d02 = 9/4, d10 = 1, d12 = 2, d20 = 9/5, d21 = 6/5.
RC_TEACHER = t([[1, 0], [1, 0], [0, 1]])
RC_STUDENT = line(0, 1, 3)
RC_D = {(0, 1): 3 / 4, (0, 2): 9 / 4, (1, 0): 1.0, (1, 2): 2.0, (2, 0): 9 / 5, (2, 1): 6 / 5}


def _relaxed_by_hand(sigma: float, delta: float) -> float:
    far = math.exp(-2 / sigma)
    w = {(0, 1): 1.0, (1, 0): 1.0, (0, 2): far, (2, 0): far, (1, 2): far, (2, 1): far}
    return sum(w[p] * d**2 + (1 - w[p]) * max(0.0, delta - d) ** 2 for p, d in RC_D.items()) / 3


def test_relaxed_contrastive_by_hand() -> None:
    # sigma = delta = 1 (the paper's): no pair is nearer than the margin but the w = 1 ones, so only pulls count:
    # (9/16 + 1 + e^-2 (81/16 + 4 + 81/25 + 36/25)) / 3.
    e2 = math.exp(-2)
    expected = (9 / 16 + 1 + e2 * (81 / 16 + 4 + 81 / 25 + 36 / 25)) / 3
    assert _relaxed_by_hand(1.0, 1.0) == pytest.approx(expected)
    assert RelaxedContrastiveLoss()(RC_STUDENT, RC_TEACHER).item() == pytest.approx(expected, rel=1e-9)
    # sigma 2, delta 2: w_far = e^-1, and pairs 20 (9/5) and 21 (6/5) now sit inside the margin and are pushed:
    # (1 - e^-1) ((2 - 9/5)^2 + (2 - 6/5)^2) = (1 - e^-1) 0.68 more.
    e1 = math.exp(-1)
    expected = (9 / 16 + 1 + e1 * (81 / 16 + 4 + 81 / 25 + 36 / 25) + (1 - e1) * (0.04 + 0.64)) / 3
    assert _relaxed_by_hand(2.0, 2.0) == pytest.approx(expected)
    assert RelaxedContrastiveLoss(sigma=2, delta=2)(RC_STUDENT, RC_TEACHER).item() == pytest.approx(expected, rel=1e-9)


def test_asymmetric_contrastive_by_hand() -> None:
    """Two images, the student on the teacher's axes: each query's own teacher embedding scores 1/T, the other 0,
    so the loss is -log(e^(1/T) / (e^(1/T) + 1)) = log(1 + e^(-1/T)); swapped queries give log(1 + e^(1/T))."""
    teacher = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)  # the teacher's side is L2-normalised
    aligned = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    for t in (1.0, 0.1):
        loss = AsymmetricContrastiveLoss(temperature=t)
        assert loss(aligned, teacher).item() == pytest.approx(math.log1p(math.exp(-1 / t)), rel=1e-12)
        assert loss(aligned.flip(0), teacher).item() == pytest.approx(math.log1p(math.exp(1 / t)), rel=1e-12)
    # a third query halfway between: logits (1/sqrt2, 1/sqrt2)/T against its own target, which is neither axis
    half = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2 ** -0.5, 2 ** -0.5]], dtype=torch.float64)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    rows = [[1, 0, -1], [0, 1, 0], [2 ** -0.5, 2 ** -0.5, -(2 ** -0.5)]]
    expected = sum(math.log(sum(math.exp(v) for v in row)) - row[i] for i, row in enumerate(rows)) / 3
    assert AsymmetricContrastiveLoss(temperature=1.0)(half, targets).item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        AsymmetricContrastiveLoss(temperature=0)


def test_asymmetric_contrastive_memory_is_a_queue_of_the_teachers_embeddings() -> None:
    """With memory 1 the last image the teacher embedded joins the next batch's candidates: the first batch of
    one image has nothing to rank against (loss 0), the second ranks its own image (logit 1) above the remembered
    one (logit 0), log(1 + e^-1), and the queue keeps only the newest. A pass without gradients leaves it alone."""
    x, y = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    loss = AsymmetricContrastiveLoss(temperature=1.0, memory=1)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-12)
    assert loss(y, y).item() == pytest.approx(math.log1p(math.exp(-1)), rel=1e-12)
    assert torch.equal(loss.queue, y)
    with torch.no_grad():
        assert loss(x, x).item() == pytest.approx(math.log1p(math.exp(-1)), rel=1e-12)
    assert torch.equal(loss.queue, y)
    assert AsymmetricContrastiveLoss(temperature=1.0)(y, y).item() == pytest.approx(0.0, abs=1e-12)  # no memory
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="memory"):
            AsymmetricContrastiveLoss(memory=bad)


def test_asymmetric_contrastive_teacher_temperature_targets_the_teachers_ranking() -> None:
    """Two orthogonal images, the student on the teacher's axes, both temperatures 1: each row's target is the
    teacher's softmax(1, 0) = (p, 1 - p) with p = e / (1 + e), and the student's is the same, so the loss is its
    entropy -(p log p + (1 - p) log(1 - p)). A tiny teacher temperature gives back the one-hot loss."""
    eye = torch.eye(2, dtype=torch.float64)
    p = math.e / (1 + math.e)
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    soft = AsymmetricContrastiveLoss(temperature=1.0, teacher_temperature=1.0)
    assert soft(eye, eye).item() == pytest.approx(entropy, rel=1e-12)
    student = torch.nn.functional.normalize(torch.tensor([[1.0, 0.5], [0.2, 1.0]], dtype=torch.float64), dim=1)
    hard = AsymmetricContrastiveLoss(temperature=0.5)(student, eye).item()
    sharp = AsymmetricContrastiveLoss(temperature=0.5, teacher_temperature=1e-3)(student, eye).item()
    assert sharp == pytest.approx(hard, rel=1e-9)
    with pytest.raises(ValueError, match="teacher_temperature"):
        AsymmetricContrastiveLoss(teacher_temperature=0.0)


def test_asymmetric_contrastive_projects_like_the_absolute_term() -> None:
    """Sizes that differ go through the same learned projection as the absolute term (then L2), so the
    checkpoint records the teacher's space the same way."""
    loss = build_distill_loss("asymmetric_contrastive", student_dim=D_S, teacher_dim=D_T, temperature=0.5).double()
    assert isinstance(loss, AbsoluteTeacherLoss) and loss.projection.weight.shape == (D_T, D_S)
    student, teacher = make_pair(seed=5)
    projected = torch.nn.functional.normalize(loss.projection(student.embedding), dim=1)
    logits = projected @ teacher.embedding.T / 0.5
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(B))
    assert loss(student, teacher).item() == pytest.approx(expected.item(), rel=1e-12)


def test_relaxed_contrastive_matches_a_loop_over_pairs() -> None:
    import numpy as np

    s, te = unit_batch(7, 5, seed=11), torch.randn(7, 9, dtype=DT, generator=torch.Generator().manual_seed(12))
    sn, tn = s.numpy(), te.numpy() / np.linalg.norm(te.numpy(), axis=1, keepdims=True)
    b, sigma, delta = 7, 0.7, 1.3
    dist = np.array([[np.linalg.norm(sn[i] - sn[j]) for j in range(b)] for i in range(b)])
    total = 0.0
    for i in range(b):
        mean = dist[i].sum() / b
        for j in range(b):
            if i != j:
                w = math.exp(-np.sum((tn[i] - tn[j]) ** 2) / sigma)
                d = dist[i, j] / mean
                total += w * d * d + (1 - w) * max(0.0, delta - d) ** 2
    assert RelaxedContrastiveLoss(sigma, delta)(s, te).item() == pytest.approx(total / b, rel=1e-9)


def test_relaxed_contrastive_ignores_the_students_scale_and_each_teacher_length() -> None:
    s, te = unit_batch(6, 4, seed=1), unit_batch(6, 8, seed=2)
    loss_fn = RelaxedContrastiveLoss(sigma=0.5)
    base = loss_fn(s, te).item()
    lengths = torch.linspace(0.5, 3.0, 6, dtype=DT).unsqueeze(1)
    assert base > 0
    assert loss_fn(7.5 * s, te).item() == pytest.approx(base, rel=1e-9)
    assert loss_fn(s, te * lengths).item() == pytest.approx(base, rel=1e-9)


def test_relaxed_contrastive_refuses_a_bad_width_or_margin() -> None:
    with pytest.raises(ValueError, match="sigma: expected a value > 0, got 0"):
        RelaxedContrastiveLoss(sigma=0)
    with pytest.raises(ValueError, match="delta: expected a value > 0, got -1"):
        RelaxedContrastiveLoss(delta=-1)
    assert RelaxedContrastiveLoss(sigma=2, delta=0.5).describe() == "RelaxedContrastiveLoss(sigma=2, delta=0.5)"


PKT_EPS = 1e-7


def _pkt_by_hand(cos_t: list[list[float]], cos_s: list[list[float]]) -> float:
    """The PKT formula in plain Python from unit vectors' cosines: each vector is divided by its norm + eps,
    i.e. by 1 + eps, which scales every cosine by 1 / (1 + eps)^2."""
    def conditional(cos: list[list[float]]) -> list[list[float]]:
        kernel = [[(c / (1 + PKT_EPS) ** 2 + 1) / 2 for c in row] for row in cos]
        return [[k / sum(row) for k in row] for row in kernel]

    p, q = conditional(cos_t), conditional(cos_s)
    return sum(pi * math.log((pi + PKT_EPS) / (qi + PKT_EPS))
               for prow, qrow in zip(p, q) for pi, qi in zip(prow, qrow)) / len(p)


def test_pkt_by_hand() -> None:
    # Teacher at angles 0, 90, 180 degrees: cos [[1, 0, -1], [0, 1, 0], [-1, 0, 1]], kernel (cos + 1) / 2 =
    # [[1, .5, 0], [.5, 1, .5], [0, .5, 1]], rows over their sums 1.5, 2, 1.5:
    # P = [[2/3, 1/3, 0], [1/4, 1/2, 1/4], [0, 1/3, 2/3]].
    # Student at 0, 90, 90 degrees: kernel [[1, .5, .5], [.5, 1, 1], [.5, 1, 1]], sums 2, 2.5, 2.5:
    # Q = [[1/2, 1/4, 1/4], [1/5, 2/5, 2/5], [1/5, 2/5, 2/5]].
    # KL rows (eps aside): ln 4/3, 3/4 ln 5/4 + 1/4 ln 5/8, 1/3 ln 5/6 + 2/3 ln 5/3; the loss is their mean.
    plain = (math.log(4 / 3) + 0.75 * math.log(5 / 4) + 0.25 * math.log(5 / 8)
             + math.log(5 / 6) / 3 + 2 * math.log(5 / 3) / 3) / 3
    cos_t, cos_s = [[1, 0, -1], [0, 1, 0], [-1, 0, 1]], [[1, 0, 0], [0, 1, 1], [0, 1, 1]]
    assert _pkt_by_hand(cos_t, cos_s) == pytest.approx(plain, rel=1e-5)  # eps moves it by about 3e-6
    teacher, student = t([[1, 0], [0, 1], [-1, 0]]), t([[1, 0], [0, 1], [0, 1]])
    assert PKTLoss()(student, teacher).item() == pytest.approx(_pkt_by_hand(cos_t, cos_s), rel=1e-9)


def test_pkt_ignores_each_embeddings_length() -> None:
    s, te = unit_batch(6, 4, seed=1), unit_batch(6, 8, seed=2)
    lengths = torch.linspace(0.5, 3.0, 6, dtype=DT).unsqueeze(1)
    base = PKTLoss()(s, te).item()
    assert base > 0
    assert PKTLoss()(s * lengths, te * lengths.flip(0)).item() == pytest.approx(base, rel=1e-6)


@pytest.mark.parametrize("loss_fn", [RelaxedContrastiveLoss(), PKTLoss()], ids=["relaxed_contrastive", "pkt"])
def test_label_free_losses_alone_train_a_plain_loop(loss_fn: DistillationLoss) -> None:
    # docs/own_loop.md's use, with no labels and no metric loss: a linear student on fixed inputs learns the
    # teacher's geometry from this term alone.
    g = torch.Generator().manual_seed(0)
    images, teacher = torch.randn(16, 8, generator=g), unit_batch(16, 6, seed=1).float()
    student = torch.nn.Linear(8, 4)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.05)

    def loss() -> torch.Tensor:
        return loss_fn(torch.nn.functional.normalize(student(images), dim=1), teacher)

    first = loss().item()
    for _ in range(60):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < 0.9 * first


def test_hint_by_hand() -> None:
    loss_fn = HintLoss(1, 1, student_layer="s", teacher_layer="t")
    with torch.no_grad():
        loss_fn.regressor.weight.fill_(2.0)
        loss_fn.regressor.bias.zero_()
    loss_fn.double()
    student = out(torch.zeros(1, 2, dtype=DT), s=t([[1, 2], [3, 4]]).view(1, 1, 2, 2))
    # Same size: hint [[2, 4], [6, 8]] vs [[2, 4], [6, 9]] -> (0 + 0 + 0 + 1) / 4
    same = out(torch.zeros(1, 2, dtype=DT), t=t([[2, 4], [6, 9]]).view(1, 1, 2, 2))
    assert loss_fn(student, same).item() == pytest.approx(0.25)
    # Teacher 1x1: the hint is average-pooled to mean(2, 4, 6, 8) = 5 vs 4 -> 1
    smaller = out(torch.zeros(1, 2, dtype=DT), t=t([[4]]).view(1, 1, 1, 1))
    assert loss_fn(student, smaller).item() == pytest.approx(1.0)
    # Student 1x1 grown bilinearly to 2x2 is constant: [[2, 2], [2, 2]] vs [[2, 3], [4, 5]] -> (0+1+4+9)/4
    tiny = out(torch.zeros(1, 2, dtype=DT), s=t([[1]]).view(1, 1, 1, 1))
    larger = out(torch.zeros(1, 2, dtype=DT), t=t([[2, 3], [4, 5]]).view(1, 1, 2, 2))
    assert loss_fn(tiny, larger).item() == pytest.approx(3.5)


def test_hint_zero_with_identity_regressor_on_equal_features() -> None:
    # A freshly initialised regressor is random, so the loss is zero at student == teacher
    # only once the regressor is the identity.
    loss_fn = HintLoss(3, 3, student_layer="a", teacher_layer="a")
    feats = torch.randn(2, 3, 4, 4)
    x = out(torch.zeros(2, 2), a=feats)
    assert loss_fn(x, x).item() > 0
    with torch.no_grad():
        loss_fn.regressor.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        loss_fn.regressor.bias.zero_()
    assert loss_fn(x, x).item() == pytest.approx(0.0, abs=1e-12)


def test_attention_by_hand() -> None:
    # Student channels [[1,0],[0,0]] and [[-1,0],[0,0]]: mean |A|^2 = [[1,0],[0,0]] -> Q_s = (1, 0, 0, 0).
    # Teacher both channels [[1,1],[0,0]]: Q_t = (1, 1, 0, 0) / sqrt(2).
    # ||Q_s - Q_t||^2 = (1 - 1/sqrt2)^2 + 1/2 = 2 - sqrt2.
    s_map = t([[1, 0], [0, 0], [-1, 0], [0, 0]]).view(1, 2, 2, 2)
    t_map = t([[1, 1], [0, 0], [1, 1], [0, 0]]).view(1, 2, 2, 2)
    emb = torch.zeros(1, 2, dtype=DT)
    loss_fn = AttentionTransferLoss(["s"], ["t"])
    assert loss_fn(out(emb, s=s_map), out(emb, t=t_map)).item() == pytest.approx(math.sqrt(2 - math.sqrt(2)))
    # A second pair that matches exactly (a constant 4x4 student map pooled to the teacher's
    # constant 2x2) halves the mean over pairs.
    two = AttentionTransferLoss(["s", "s2"], ["t", "t2"])
    student = out(emb, s=s_map, s2=torch.ones(1, 3, 4, 4, dtype=DT))
    teacher = out(emb, t=t_map, t2=torch.ones(1, 5, 2, 2, dtype=DT))
    loss = two(student, teacher)
    assert loss.item() == pytest.approx(math.sqrt(2 - math.sqrt(2)) / 2)


def test_attention_p1_uses_absolute_values() -> None:
    # p = 1: mean |A| = [[1, 0], [0, 0]] for the student as for the teacher -> 0
    emb = torch.zeros(1, 2, dtype=DT)
    s_map = t([[-2, 0], [0, 0]]).view(1, 1, 2, 2)
    t_map = t([[3, 0], [0, 0]]).view(1, 1, 2, 2)
    loss = AttentionTransferLoss(["x"], ["x"], p=1)(out(emb, x=s_map), out(emb, x=t_map))
    assert loss.item() == pytest.approx(0.0)


# --------------------------------------------------------- shared invariants

B, D_S, D_T = 6, 5, 7
FEATURE_KWARGS = {
    "hint": {"student_channels": 4, "teacher_channels": 6, "student_layer": "s1", "teacher_layer": "t1"},
    "attention": {"student_layers": ["s1", "s2"], "teacher_layers": ["t1", "t2"]},
}


def make_loss(name: str, same_dims: bool = False) -> DistillationLoss:
    if name in ("absolute", "asymmetric_contrastive"):
        return build_distill_loss(name, student_dim=D_T if same_dims else D_S, teacher_dim=D_T).double()
    return build_distill_loss(name, **FEATURE_KWARGS.get(name, {})).double()


def make_pair(seed: int, requires_grad: bool = True, same_dims: bool = False) -> tuple[EmbedderOutput, EmbedderOutput]:
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=DT, generator=g).requires_grad_(requires_grad)

    s_emb = torch.nn.functional.normalize(torch.randn(B, D_T if same_dims else D_S, dtype=DT, generator=g), dim=1)
    t_emb = torch.nn.functional.normalize(torch.randn(B, D_T, dtype=DT, generator=g), dim=1)
    student = out(s_emb.requires_grad_(requires_grad), s1=leaf(B, 4, 8, 8), s2=leaf(B, 3, 2, 2))
    teacher = out(t_emb.requires_grad_(requires_grad), t1=leaf(B, 6, 4, 4), t2=leaf(B, 5, 4, 4))
    return student, teacher


def student_inputs(loss_fn: DistillationLoss, student: EmbedderOutput) -> list[torch.Tensor]:
    """The student tensors a loss reads: its declared feature maps, else the embedding."""
    return [student.features[k] for k in loss_fn.student_layers] or [student.embedding]


@pytest.mark.parametrize("name", sorted(DISTILL_LOSSES))
def test_gradients_reach_student_and_never_teacher(name: str) -> None:
    loss_fn = make_loss(name)
    student, teacher = make_pair(seed=3)
    loss_fn(student, teacher).backward()
    for x in student_inputs(loss_fn, student):
        assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    for x in [teacher.embedding, *teacher.features.values()]:
        assert x.grad is None


ZERO_AT_EQUALITY = ["absolute", "relative", "rkd_distance", "rkd_angle", "pkt", "attention"]


@pytest.mark.parametrize("name", ZERO_AT_EQUALITY)
def test_zero_and_finite_gradient_when_student_equals_teacher(name: str) -> None:
    loss_fn = make_loss(name, same_dims=True)
    _, teacher = make_pair(seed=4, same_dims=True)
    student = out(
        teacher.embedding.detach().clone().requires_grad_(),
        s1=teacher.features["t1"].detach().clone().requires_grad_(),
        s2=teacher.features["t2"].detach().clone().requires_grad_(),
    )
    loss = loss_fn(student, teacher)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    for x in student_inputs(loss_fn, student):
        assert torch.isfinite(x.grad).all()


def test_darkrank_listnet_zero_at_equality() -> None:
    x = out(unit_batch(6, 4, seed=0))
    assert DarkRankLoss(method="listnet")(x, x).item() == pytest.approx(0.0, abs=1e-9)


EMBEDDING_LOSSES = [
    make_loss("absolute"),
    make_loss("asymmetric_contrastive"),
    RelativeTeacherLoss("mean"),
    RelativeTeacherLoss("frobenius"),
    RelativeTeacherLoss(scale="mean"),
    RKDDistanceLoss(),
    RKDAngleLoss(),
    DarkRankLoss(),
    DarkRankLoss(method="listnet"),
    RelaxedContrastiveLoss(),
    RelaxedContrastiveLoss(sigma=0.5, delta=1.5),
    PKTLoss(),
]
EMBEDDING_LOSS_IDS = ["absolute", "asymmetric_contrastive", "relative-mean", "relative-frobenius", "relative-scaled",
                      "rkd_distance", "rkd_angle", "darkrank-listmle", "darkrank-listnet", "relaxed_contrastive",
                      "relaxed_contrastive-0.5-1.5", "pkt"]


@pytest.mark.parametrize("loss_fn", EMBEDDING_LOSSES[2:], ids=EMBEDDING_LOSS_IDS[2:])  # all but the two in the teacher's space
def test_relational_losses_ignore_rotations_of_either_space(loss_fn: DistillationLoss) -> None:
    s, te = unit_batch(B, D_S, seed=5), unit_batch(B, D_T, seed=6)
    base = loss_fn(out(s), out(te)).item()
    rotated = loss_fn(out(s @ random_orthogonal(D_S, 7)), out(te @ random_orthogonal(D_T, 8))).item()
    assert base > 0
    assert rotated == pytest.approx(base, rel=1e-6)


def test_student_and_teacher_batches_must_match() -> None:
    with pytest.raises(ValueError, match="3 samples but teacher batch has 2"):
        RelativeTeacherLoss()(out(unit_batch(3, 2, 0)), out(unit_batch(2, 2, 1)))
    with pytest.raises(ValueError, match="3 samples but teacher batch has 2"):
        RelativeTeacherLoss()(unit_batch(3, 2, 0), unit_batch(2, 2, 1))





def test_embedding_losses_cover_every_registered_embedding_loss() -> None:
    assert {type(fn) for fn in EMBEDDING_LOSSES} == {
        DISTILL_LOSSES[name] for name in DISTILL_LOSSES if name not in FEATURE_KWARGS
    }


@pytest.mark.parametrize("loss_fn", EMBEDDING_LOSSES, ids=EMBEDDING_LOSS_IDS)
def test_plain_tensors_give_exactly_the_embedder_output_value_and_gradient(loss_fn: DistillationLoss) -> None:
    student, teacher = make_pair(seed=9)
    expected = loss_fn(student, teacher)
    expected.backward()
    expected_grad = student.embedding.grad.clone()
    s, te = student.embedding.detach().clone().requires_grad_(), teacher.embedding.detach().clone().requires_grad_()
    for s_arg, t_arg in [(s, te), (s, out(te)), (out(s), te)]:
        s.grad = None
        value = loss_fn(s_arg, t_arg)
        assert torch.equal(value, expected.detach())
        value.backward()
        assert torch.equal(s.grad, expected_grad)
        assert te.grad is None  # the teacher tensor is detached inside the loss, as the teacher output is


@pytest.mark.parametrize("name", sorted(FEATURE_KWARGS))
def test_feature_map_losses_refuse_plain_tensors_by_name(name: str) -> None:
    loss_fn = make_loss(name)
    student, teacher = make_pair(seed=0)
    cls = type(loss_fn).__name__
    with pytest.raises(TypeError, match=rf"{cls} compares feature maps, not embeddings: give the student as "
                                        r"EmbedderOutput\(embedding, features=\{'s1': its \(B, C, H, W\) map\}\)"):
        loss_fn(student.embedding, teacher)
    with pytest.raises(TypeError, match=rf"{cls} compares feature maps.*the teacher.*'t1'"):
        loss_fn(student, teacher.embedding)


def test_embedding_inputs_of_the_wrong_kind_are_named() -> None:
    s, te = unit_batch(4, 3, seed=0), unit_batch(4, 3, seed=1)
    with pytest.raises(TypeError, match="teacher must be a .B, D. embedding Tensor or an EmbedderOutput, got list"):
        RelativeTeacherLoss()(s, te.tolist())
    with pytest.raises(ValueError, match=r"student embedding must be a \(B, D\) tensor, got shape \(4, 3, 1, 1\)"):
        RKDDistanceLoss()(s.view(4, 3, 1, 1), te)
    with pytest.raises(ValueError, match=r"teacher embedding must be a \(B, D\) tensor, got shape \(12,\)"):
        AbsoluteTeacherLoss()(out(s), out(te.flatten()))


def test_missing_feature_map_is_named() -> None:
    student, teacher = make_pair(seed=0)
    loss_fn = make_loss("hint")
    assert (loss_fn.student_layers, loss_fn.teacher_layers) == (("s1",), ("t1",))
    with pytest.raises(ValueError, match="teacher feature map 't1' is missing"):
        loss_fn(student, out(teacher.embedding))


def test_tiny_batches_give_graph_connected_zero() -> None:
    s = unit_batch(2, 3, seed=0).requires_grad_()
    loss = RKDAngleLoss()(out(s), out(unit_batch(2, 3, seed=1)))
    assert loss.item() == 0.0
    loss.backward()
    assert s.grad is not None


def test_distill_registry_and_validation() -> None:
    assert set(DISTILL_LOSSES) == {"absolute", "asymmetric_contrastive", "relative", "rkd_distance", "rkd_angle", "darkrank", "relaxed_contrastive",
                                   "pkt", "hint", "attention"}
    assert DistillationLoss.student_layers == () and make_loss("relative").student_layers == ()
    assert isinstance(build_distill_loss("relative", reduction="frobenius"), RelativeTeacherLoss)
    with pytest.raises(ValueError, match="'fitnet'.*absolute.*attention"):
        build_distill_loss("fitnet")
    with pytest.raises(ValueError, match="reducton.*valid: reduction"):
        build_distill_loss("relative", reducton="mean")
    with pytest.raises(ValueError, match="student_channels, teacher_channels, student_layer, teacher_layer"):
        build_distill_loss("hint")
    with pytest.raises(ValueError, match="'sum'"):
        RelativeTeacherLoss("sum")
    with pytest.raises(ValueError, match="unknown scale 'max'; valid: none, mean"):
        RelativeTeacherLoss(scale="max")
    with pytest.raises(ValueError, match="'listwise'"):
        DarkRankLoss(method="listwise")
    with pytest.raises(ValueError, match="1 student and 2 teacher"):
        AttentionTransferLoss(["a"], ["b", "c"])


@pytest.mark.parametrize("metric_weight", [1.0, 0.5, 0.0])
def test_objective_weighs_metric_and_terms(metric_weight: float) -> None:
    # The 3-4-5 triangle against its double: relative (mean form) is 10 / sqrt(6), absolute the
    # mean of |x_i - 2 x_i| = (0 + 3 + 4) / 3. Every part is reported unweighted.
    from embdistill.losses.objective import Objective

    metric = BatchHardTripletLoss(margin=0.5)
    terms = {"relative": (2.0, RelativeTeacherLoss()), "absolute": (3.0, AbsoluteTeacherLoss())}
    student, teacher, labels = out(RIGHT), out(2 * RIGHT), torch.tensor([0, 0, 1])
    parts = Objective(metric, terms, metric_weight=metric_weight)(student, labels, teacher)
    expected_metric = metric(RIGHT, labels)
    assert parts["metric"].item() == pytest.approx(expected_metric.item())
    assert parts["relative"].item() == pytest.approx(10 / math.sqrt(6))
    assert parts["absolute"].item() == pytest.approx(7 / 3)
    total = metric_weight * expected_metric.item() + 2.0 * 10 / math.sqrt(6) + 3.0 * 7 / 3
    assert parts["loss"].item() == pytest.approx(total)
    # Plain embedding tensors, and the gathering path (one process: gather is the identity), give the same parts.
    for gather, args in [(None, (RIGHT, labels, 2 * RIGHT)), (lambda x: x, (student, labels, teacher)),
                         (lambda x: x, (RIGHT, labels, 2 * RIGHT))]:
        other = Objective(metric, terms, gather, metric_weight=metric_weight)(*args)
        assert other.keys() == parts.keys()
        assert all(torch.equal(other[k], parts[k]) for k in parts)


def test_objective_drops_a_term_after_its_until_epoch_but_still_logs_it() -> None:
    # The same 3-4-5 case: absolute trains epochs 0 and 1 (until_epoch 2), relative every epoch.
    from embdistill.losses.objective import Objective

    metric = BatchHardTripletLoss(margin=0.5)
    terms = {"relative": (2.0, RelativeTeacherLoss()), "absolute": (3.0, AbsoluteTeacherLoss())}
    labels = torch.tensor([0, 0, 1])
    objective = Objective(metric, terms, until_epoch={"absolute": 2})
    expected_metric = metric(RIGHT, labels).item()
    for epoch, absolute_on in [(0, True), (1, True), (2, False), (5, False)]:
        objective.set_epoch(epoch)
        student = RIGHT.clone().requires_grad_(True)
        parts = objective(student, labels, 2 * RIGHT)
        assert parts["absolute"].item() == pytest.approx(7 / 3)  # logged either way
        total = expected_metric + 2.0 * 10 / math.sqrt(6) + (3.0 * 7 / 3 if absolute_on else 0.0)
        assert parts["loss"].item() == pytest.approx(total), epoch
        assert parts["absolute"].requires_grad is absolute_on, epoch
        parts["loss"].backward()  # an ended term adds no gradient: the total's is the other parts'
        if not absolute_on:
            reference = RIGHT.clone().requires_grad_(True)
            (metric(reference, labels) + 2.0 * terms["relative"][1](reference, 2 * RIGHT)).backward()
            assert torch.allclose(student.grad, reference.grad)
    with pytest.raises(ValueError, match=r"until_epoch names no term: \['rkd'\]"):
        Objective(metric, terms, until_epoch={"rkd": 3})
