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
    query_labels: np.ndarray | None = None, metric: str = "cosine",
) -> list[np.ndarray]:
    """For each query, the gallery's same-label flags in rank order (full N x N, float64).

    Ties are pessimistic: among equal scores, other-label items come first.
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
        keep = np.arange(len(gallery)) != q if same_set else np.ones(len(gallery), dtype=bool)
        relevant = labels[keep] == q_labels[q]
        order = np.lexsort((relevant, -scores[q, keep]))  # by score desc, then negatives first
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


def reference(embeddings, labels, query_embeddings=None, query_labels=None, ks: Sequence[int] = KS, metric="cosine"):
    rel = ranked_relevance(np.asarray(embeddings), np.asarray(labels),
                           None if query_embeddings is None else np.asarray(query_embeddings),
                           None if query_labels is None else np.asarray(query_labels), metric)
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
    assert_same(retrieval_metrics(x, y, ks=KS, chunk_size=chunk_size), reference(x, y))


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
    theirs = calc.get_accuracy(x, y, ref_includes_query=True)
    ours = retrieval_metrics(x, y, ks=(1,), chunk_size=64)
    assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-12)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-12)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-12)

    q, qy = gaussian(70, 16, n_classes=45, seed=seed + 100)
    q = torch.nn.functional.normalize(q, dim=1)
    theirs = calc.get_accuracy(q, qy, x, y, ref_includes_query=False)
    ours = retrieval_metrics(x, y, query_embeddings=q, query_labels=qy, ks=(1,), chunk_size=64)
    assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-12)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-12)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-12)


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
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_matches_cpu() -> None:
    x, y = lattice(500, 6, n_classes=80, seed=0)
    q, qy = lattice(90, 6, n_classes=80, seed=1)
    for kwargs in ({}, {"query_embeddings": q, "query_labels": qy}):
        cpu = retrieval_metrics(x, y, ks=KS, chunk_size=64, **kwargs)
        gpu_kwargs = {k: v.cuda() for k, v in kwargs.items()}
        assert retrieval_metrics(x.cuda(), y.cuda(), ks=KS, chunk_size=64, **gpu_kwargs) == cpu
        assert retrieval_metrics(x.cuda(), y.cuda(), ks=KS, **gpu_kwargs) == cpu
