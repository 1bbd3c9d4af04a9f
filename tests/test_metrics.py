"""Retrieval metrics and NMI against plain brute-force references and pytorch-metric-learning."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from embdistill.evaluation import metrics, nmi_kmeans, normalized_mutual_info, retrieval_metrics

KS = (1, 2, 3, 5, 10, 1000)


# ----------------------------------------------------------------------------- references
def ranked_relevance(
    embeddings: np.ndarray, labels: np.ndarray, query_embeddings: np.ndarray | None = None,
    query_labels: np.ndarray | None = None, metric: str = "cosine", paired: bool = False, slack: float = 0.0,
) -> list[np.ndarray]:
    """For each query, the gallery's same-label flags in rank order (full N x N, float64).

    Ties are pessimistic: among equal scores, other-label items come first. ``paired``:
    query q is gallery item q's image embedded by another network, so item q is left out.
    ``slack`` > 0 breaks near-ties too, against the query: other-label items within ``slack``
    (times the largest |score| when above 1) of a same-label one rank ahead of it; < 0 in its favour.
    """
    gallery = embeddings.astype(np.float64)
    same_set = query_embeddings is None
    queries = gallery if same_set else query_embeddings.astype(np.float64)
    q_labels = labels if same_set else query_labels
    if metric == "cosine":
        gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        scores = queries @ gallery.T
    else:
        scores = -((queries[:, None, :] - gallery[None, :, :]) ** 2).sum(-1)
    out = []
    for q in range(len(queries)):
        keep = np.arange(len(gallery)) != q if same_set or paired else np.ones(len(gallery), dtype=bool)
        relevant = labels[keep] == q_labels[q]
        raised = ~relevant if slack > 0 else relevant  # what near-ties favour
        shift = abs(slack) * max(1.0, float(np.abs(scores[q, keep]).max())) * raised
        order = np.lexsort((relevant, -(scores[q, keep] + shift)))  # by score desc, then negatives first
        out.append(relevant[order])
    return out


def recall_at_k_bruteforce(relevance: list[np.ndarray], k: int) -> float:
    hits = [rel[:k].any() for rel in relevance if rel.any()]
    return float(np.mean(hits)) if hits else math.nan


def map_at_r_bruteforce(relevance: list[np.ndarray]) -> float:
    values = []
    for rel in relevance:
        r = int(rel.sum())
        if r == 0:
            continue
        total = 0.0
        for i in range(r):
            if rel[i]:
                total += rel[: i + 1].sum() / (i + 1)
        values.append(total / r)
    return float(np.mean(values)) if values else math.nan


def r_precision_bruteforce(relevance: list[np.ndarray]) -> float:
    values = [rel[: int(rel.sum())].mean() for rel in relevance if rel.any()]
    return float(np.mean(values)) if values else math.nan


def reference(embeddings, labels, query_embeddings=None, query_labels=None, ks: Sequence[int] = KS, metric="cosine",
              paired: bool = False, slack: float = 0.0):
    rel = ranked_relevance(np.asarray(embeddings), np.asarray(labels),
                           None if query_embeddings is None else np.asarray(query_embeddings),
                           None if query_labels is None else np.asarray(query_labels), metric, paired, slack)
    out = {f"recall@{k}": recall_at_k_bruteforce(rel, k) for k in ks}
    out["map@r"] = map_at_r_bruteforce(rel)
    out["r_precision"] = r_precision_bruteforce(rel)
    return out


def assert_same(ours: dict[str, float], ref: dict[str, float]) -> None:
    assert ours.keys() == ref.keys()
    for key in ref:
        if math.isnan(ref[key]):
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(ref[key], abs=1e-12), key


# Random (not exactly representable) data: the code ranks by float32 scores, whose rounding depends on
# the CPU's kernels (AVX2 or AVX-512, and so on). Each is within FP32_SLACK / 2 of the float64 score
# (times the largest |score| above 1), so a near-tie closer than that may go either way on another
# machine: the metrics must lie between the reference that breaks every such near-tie against the
# query and the one that breaks them in its favour. Where the data has none, the two are the exact
# reference and the check is to 1e-12 as for exact data.
FP32_SLACK = 4e-6


def reference_bounds(*args, **kwargs) -> tuple[dict[str, float], dict[str, float]]:
    return reference(*args, **kwargs, slack=FP32_SLACK), reference(*args, **kwargs, slack=-FP32_SLACK)


def assert_within(ours: dict[str, float], bounds: tuple[dict[str, float], dict[str, float]]) -> None:
    low, high = bounds
    assert ours.keys() == low.keys()
    for key in low:
        if math.isnan(low[key]):
            assert math.isnan(ours[key]), key
        else:
            assert low[key] - 1e-12 <= ours[key] <= high[key] + 1e-12, (key, ours[key], low[key], high[key])


# ----------------------------------------------------------------------------- data
def gaussian(n: int, dim: int, n_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randint(0, n_classes, (n,), generator=g)


def lattice(n: int, dim: int, n_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors with four entries of +-0.5: every score is exact in float32, ties abound."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, dim), dtype=np.float32)
    for row in x:
        row[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return torch.from_numpy(x), torch.from_numpy(rng.integers(0, n_classes, n))


def integer_grid(n: int, dim: int, n_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Small integer vectors: exact Euclidean distances, many ties."""
    rng = np.random.default_rng(seed)
    return (torch.from_numpy(rng.integers(-2, 3, (n, dim)).astype(np.float32)),
            torch.from_numpy(rng.integers(0, n_classes, n)))


# ----------------------------------------------------------------------------- vs brute force
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk_size", [1, 7, 13, None])
def test_random_matches_bruteforce(seed: int, chunk_size: int | None) -> None:
    x, y = gaussian(90, 8, n_classes=25, seed=seed)
    assert_within(retrieval_metrics(x, y, ks=KS, chunk_size=chunk_size), reference_bounds(x, y))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("chunk_size", [7, 16, 1000])
def test_ties_match_bruteforce(seed: int, chunk_size: int) -> None:
    x, y = lattice(120, 5, n_classes=30, seed=seed)
    assert len(torch.unique(x, dim=0)) < len(x)  # duplicates, across classes too
    assert_same(retrieval_metrics(x, y, ks=KS, chunk_size=chunk_size), reference(x, y))


@pytest.mark.parametrize("min_tile", [1, 2, 5])
def test_split_diagonal_blocks(monkeypatch: pytest.MonkeyPatch, min_tile: int) -> None:
    monkeypatch.setattr(metrics, "_MIN_DIAGONAL_TILE", min_tile)
    x, y = lattice(110, 5, n_classes=25, seed=7)
    for chunk_size in (13, 64):
        assert_same(retrieval_metrics(x, y, ks=KS, chunk_size=chunk_size), reference(x, y))


def test_all_points_identical_ranks_every_negative_first() -> None:
    x = torch.full((20, 4), 0.5)
    y = torch.tensor([0] * 5 + [1] * 15)
    ours = retrieval_metrics(x, y, ks=(1, 15, 16), chunk_size=6)
    assert_same(ours, reference(x, y, ks=(1, 15, 16)))
    # Class 0: 15 negatives tie ahead of its 4 positives. Class 1: 5 negatives ahead of 14.
    assert (ours["recall@1"], ours["recall@15"], ours["recall@16"]) == (0.0, 0.75, 1.0)
    class1_ap = sum(j / (j + 5) for j in range(1, 10)) / 14
    assert ours["map@r"] == pytest.approx(15 * class1_ap / 20)
    assert ours["r_precision"] == pytest.approx(15 * (9 / 14) / 20)


def test_singletons_are_left_out() -> None:
    x, y = lattice(60, 6, n_classes=20, seed=3)
    y[:10] = torch.arange(100, 110)  # ten queries without a positive
    assert_same(retrieval_metrics(x, y, ks=KS, chunk_size=7), reference(x, y))


def test_only_singletons_gives_nan() -> None:
    x, _ = gaussian(10, 4, 1, seed=0)
    out = retrieval_metrics(x, torch.arange(10), ks=(1, 4))
    assert all(math.isnan(v) for v in out.values())


def test_k_beyond_class_and_gallery() -> None:
    x, y = gaussian(40, 6, n_classes=4, seed=1)  # classes of ~10; K up to 1000 > N - 1
    ks = (1, 8, 12, 39, 40, 1000)
    ours = retrieval_metrics(x, y, ks=ks, chunk_size=9)
    assert_same(ours, reference(x, y, ks=ks))
    assert ours["recall@39"] == ours["recall@1000"] == 1.0


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_separate_query_and_gallery(seed: int, chunk_size: int | None) -> None:
    gallery, g_labels = lattice(100, 5, n_classes=15, seed=seed)
    queries, q_labels = lattice(37, 5, n_classes=18, seed=seed + 10)  # labels 15..17: no positive
    queries[:5] = gallery[:5]  # a query identical to a gallery item is not excluded
    ours = retrieval_metrics(gallery, g_labels, query_embeddings=queries, query_labels=q_labels,
                             ks=KS, chunk_size=chunk_size)
    assert_same(ours, reference(gallery, g_labels, queries, q_labels))


# ----------------------------------------------------------------------------- paired: a student's queries, a teacher's gallery
def test_paired_hand_made() -> None:
    """Three images of class 0, two of class 1; queries from one network, the gallery from another.

    Only query 0 differs from its gallery item. Each query's ranking of the other four items
    (its own left out; a tie puts the other class first):
    q0 (class 0): 3 (c1), 1, 2, 4   -> R = 2, first hit at rank 2, MAP@R (1/2) / 2
    q1 (class 0): 3 (c1), 2, 0, 4   -> the same
    q2 (class 0): 4 (c1, tied with 1 at 0.8), 1, 3, 0 -> the same
    q3 (class 1): 1, 0, 2, 4        -> R = 1, its positive last
    q4 (class 1): 2, 1, 3, 0        -> R = 1, its positive third
    So R@1 = 0, R@2 = 3/5, MAP@R = 3 * 0.25 / 5 = 0.15.
    """
    gallery = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6], [-0.6, 0.8]], dtype=np.float32)
    labels = np.array([0, 0, 0, 1, 1])
    queries = gallery.copy()
    queries[0] = [0.8, 0.6]
    ours = retrieval_metrics(gallery, labels, query_embeddings=queries, query_labels=labels, ks=(1, 2), paired=True)
    assert ours["recall@1"] == 0.0 and ours["recall@2"] == pytest.approx(0.6) and ours["map@r"] == pytest.approx(0.15)
    assert_same(ours, reference(gallery, labels, queries, labels, ks=(1, 2), paired=True))
    assert list(ranked_relevance(gallery, labels, queries, labels, paired=True)[0]) == [False, True, True, False]
    # left in, query 0's own image (item 0, cos 0.8) would be a third positive, at rank 3
    assert list(ranked_relevance(gallery, labels, queries, labels)[0]) == [False, True, True, True, False]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("chunk_size", [1, 7, None])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_paired_matches_bruteforce(seed: int, chunk_size: int | None, metric: str) -> None:
    """The student's embedding of each gallery image lies near the teacher's: its own image would be its
    nearest positive, and is left out; classes of one image have no positive and drop out."""
    teacher, labels = gaussian(90, 6, n_classes=20, seed=seed)
    student = teacher + 0.5 * gaussian(90, 6, n_classes=1, seed=seed + 10)[0]
    student[:3] = teacher[:3]  # exact copies of their own gallery item: still left out
    ours = retrieval_metrics(teacher, labels, query_embeddings=student, query_labels=labels, ks=KS,
                             chunk_size=chunk_size, metric=metric, paired=True)
    assert_within(ours, reference_bounds(teacher, labels, student, labels, metric=metric, paired=True))
    with_self = retrieval_metrics(teacher, labels, query_embeddings=student, query_labels=labels, ks=KS, metric=metric)
    assert with_self["recall@1"] > ours["recall@1"]  # its own image left in would be found first, often
    same_network = retrieval_metrics(teacher, labels, query_embeddings=teacher, query_labels=labels, ks=KS,
                                     chunk_size=chunk_size, metric=metric, paired=True)
    assert_same(same_network, retrieval_metrics(teacher, labels, ks=KS, metric=metric))  # = leave-one-out


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_paired_ties_match_bruteforce(seed: int, chunk_size: int | None) -> None:
    """Two lattice draws (every score exact, ties everywhere) as the two networks' embeddings of one set."""
    teacher, labels = lattice(90, 5, n_classes=20, seed=seed)
    student = lattice(90, 5, n_classes=20, seed=seed + 10)[0]
    ours = retrieval_metrics(teacher, labels, query_embeddings=student, query_labels=labels, ks=KS,
                             chunk_size=chunk_size, paired=True)
    assert_same(ours, reference(teacher, labels, student, labels, paired=True))


def test_paired_rejects_unpaired_input() -> None:
    x, y = gaussian(10, 4, 3, seed=0)
    with pytest.raises(ValueError, match="paired needs query_embeddings"):
        retrieval_metrics(x, y, paired=True)
    with pytest.raises(ValueError, match="9 queries, 10 gallery items"):
        retrieval_metrics(x, y, query_embeddings=x[:9], query_labels=y[:9], paired=True)
    with pytest.raises(ValueError, match="labels differ"):
        retrieval_metrics(x, y, query_embeddings=x, query_labels=y.flip(0), paired=True)


@pytest.mark.parametrize("chunk_size", [5, None])
def test_euclidean_matches_bruteforce(chunk_size: int | None) -> None:
    x, y = integer_grid(80, 4, n_classes=12, seed=0)
    assert_same(retrieval_metrics(x, y, ks=KS, chunk_size=chunk_size, metric="euclidean"),
                reference(x, y, metric="euclidean"))
    q, qy = integer_grid(30, 4, n_classes=12, seed=1)
    assert_same(retrieval_metrics(x, y, query_embeddings=q, query_labels=qy, ks=KS, chunk_size=chunk_size,
                                  metric="euclidean"),
                reference(x, y, q, qy, metric="euclidean"))


def test_cosine_normalises() -> None:
    x, y = gaussian(50, 8, n_classes=10, seed=2)
    scales = torch.rand(50, 1) * 10 + 0.1
    assert retrieval_metrics(x * scales, y, ks=KS) == retrieval_metrics(x, y, ks=KS)


def test_flags_select_keys() -> None:
    x, y = lattice(50, 5, n_classes=10, seed=4)
    full = retrieval_metrics(x, y, ks=(1, 4), chunk_size=8)
    assert list(full) == ["recall@1", "recall@4", "map@r", "r_precision"]
    only_recall = retrieval_metrics(x, y, ks=(4, 1), map_at_r=False, r_precision=False, chunk_size=8)
    assert only_recall == {"recall@4": full["recall@4"], "recall@1": full["recall@1"]}
    only_map = retrieval_metrics(x, y, ks=(), r_precision=False, chunk_size=8)
    assert only_map == {"map@r": full["map@r"]}


def test_numpy_and_string_labels() -> None:
    x, y = gaussian(40, 6, n_classes=8, seed=5)
    names = np.array([f"class-{int(v)}" for v in y])
    assert retrieval_metrics(x.numpy(), names) == retrieval_metrics(x, y)


def test_restores_global_torch_settings() -> None:
    x, y = gaussian(30, 4, 5, seed=0)
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        retrieval_metrics(x, y)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(precision)
    assert torch.get_num_threads() == threads


def test_rejects_bad_input() -> None:
    x, y = gaussian(10, 4, 3, seed=0)
    with pytest.raises(ValueError):
        retrieval_metrics(x, y[:5])
    with pytest.raises(ValueError):
        retrieval_metrics(x, y, query_embeddings=x)
    with pytest.raises(ValueError):
        retrieval_metrics(x, y, ks=(0,))
    with pytest.raises(ValueError):
        retrieval_metrics(x, y, metric="dot")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- vs pytorch-metric-learning
@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_pml_accuracy_calculator(seed: int) -> None:
    pml = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    calc = pml.AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
                                  k="max_bin_count", device=torch.device("cpu"))
    x, y = gaussian(300, 16, n_classes=40, seed=seed)
    x = torch.nn.functional.normalize(x, dim=1)
    y[:3] = torch.arange(100, 103)  # singletons, left out by both
    # Both rank by float32 scores (theirs with faiss): each within the bounds of the float64 reference,
    # which are one value, and so the same to 1e-12, unless the data has near-ties (see FP32_SLACK).
    theirs = calc.get_accuracy(x, y, ref_includes_query=True)
    ours = retrieval_metrics(x, y, ks=(1,), chunk_size=64)
    bounds = reference_bounds(x, y, ks=(1,))
    assert_within(ours, bounds)
    assert_within({"recall@1": theirs["precision_at_1"], "map@r": theirs["mean_average_precision_at_r"],
                   "r_precision": theirs["r_precision"]}, bounds)

    q, qy = gaussian(70, 16, n_classes=45, seed=seed + 100)
    q = torch.nn.functional.normalize(q, dim=1)
    theirs = calc.get_accuracy(q, qy, x, y, ref_includes_query=False)
    ours = retrieval_metrics(x, y, query_embeddings=q, query_labels=qy, ks=(1,), chunk_size=64)
    bounds = reference_bounds(x, y, q, qy, ks=(1,))
    assert_within(ours, bounds)
    assert_within({"recall@1": theirs["precision_at_1"], "map@r": theirs["mean_average_precision_at_r"],
                   "r_precision": theirs["r_precision"]}, bounds)


# ----------------------------------------------------------------------------- NMI
@pytest.mark.parametrize("seed", range(3))
def test_nmi_matches_sklearn(seed: int) -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 12, 500)
    pred = np.where(rng.random(500) < 0.6, true, rng.integers(0, 15, 500))
    pairs = [(true, pred), (true, true), (true, np.zeros(500)), (np.zeros(5), np.ones(5)), (true, rng.permutation(500))]
    for a, b in pairs:
        expected = sklearn_metrics.normalized_mutual_info_score(a, b)
        assert normalized_mutual_info(a, b) == pytest.approx(expected, abs=1e-12)


def test_nmi_kmeans_separated_clusters_and_seed() -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16)) * 10
    labels = np.repeat(np.arange(6), 30)
    x = (centres[labels] + rng.normal(size=(180, 16)) * 0.1).astype(np.float32)
    assert nmi_kmeans(torch.from_numpy(x), torch.from_numpy(labels), seed=1) == pytest.approx(1.0)
    noisy = rng.normal(size=(180, 16)).astype(np.float32)
    assert nmi_kmeans(noisy, labels, seed=3) == nmi_kmeans(noisy, labels, seed=3) < 0.5


# ----------------------------------------------------------------------------- GPU
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA, and EMBDISTILL_TEST_CUDA=1 (conftest hides it)")
def test_gpu_matches_cpu() -> None:
    x, y = lattice(500, 6, n_classes=80, seed=0)
    q, qy = lattice(90, 6, n_classes=80, seed=1)
    for kwargs in ({}, {"query_embeddings": q, "query_labels": qy}):
        cpu = retrieval_metrics(x, y, ks=KS, chunk_size=64, **kwargs)
        gpu_kwargs = {k: v.cuda() for k, v in kwargs.items()}
        assert retrieval_metrics(x.cuda(), y.cuda(), ks=KS, chunk_size=64, **gpu_kwargs) == cpu
        assert retrieval_metrics(x.cuda(), y.cuda(), ks=KS, **gpu_kwargs) == cpu
