"""knn_agreement: the label-free score, against a brute-force count on small arrays."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from embdistill.evaluation import agreement
from embdistill.evaluation.agreement import knn_agreement, knn_agreement_k


def brute_force(student: np.ndarray, teacher: np.ndarray, k: int) -> float:
    """For each image, sort the others by Euclidean distance in each space and intersect the first k."""
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    s, t = unit(student), unit(teacher)
    shares = []
    for i in range(len(s)):
        others = [j for j in range(len(s)) if j != i]
        near_s = sorted(others, key=lambda j: np.linalg.norm(s[i] - s[j]))[:k]
        near_t = sorted(others, key=lambda j: np.linalg.norm(t[i] - t[j]))[:k]
        shares.append(len(set(near_s) & set(near_t)) / k)
    return float(np.mean(shares))


@pytest.mark.parametrize("n, k, ds, dt", [(12, 3, 4, 6), (30, 10, 8, 5), (11, 10, 3, 3)])
def test_knn_agreement_equals_brute_force(n: int, k: int, ds: int, dt: int) -> None:
    rng = np.random.default_rng(n + k)
    student, teacher = rng.normal(size=(n, ds)), rng.normal(size=(n, dt))
    assert knn_agreement(student, teacher, k) == pytest.approx(brute_force(student, teacher, k), abs=1e-12)
    # A student half made of the teacher's coordinates agrees more than chance, and as brute force says.
    mixed = np.concatenate([teacher, 0.3 * student], axis=1)
    assert knn_agreement(mixed, teacher, k) == pytest.approx(brute_force(mixed, teacher, k), abs=1e-12)


def test_knn_agreement_is_one_for_the_teachers_own_neighbourhoods_and_blind_to_length_and_rotation() -> None:
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(20, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    lengths = rng.uniform(0.5, 2.0, size=(20, 1))
    assert knn_agreement(teacher @ q * lengths, teacher, 5) == 1.0
    assert knn_agreement(torch.from_numpy(teacher), torch.from_numpy(teacher), 19) == 1.0  # every other image


def test_knn_agreement_in_chunks_equals_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(50, 4)), rng.normal(size=(50, 7))
    whole = knn_agreement(student, teacher, 6)
    monkeypatch.setattr(agreement, "_CHUNK", 7)
    assert knn_agreement(student, teacher, 6) == whole == pytest.approx(brute_force(student, teacher, 6), abs=1e-12)


def test_knn_agreement_refuses_what_it_cannot_score() -> None:
    with pytest.raises(ValueError, match=r"same N images, got shapes \(5, 2\) and \(4, 2\)"):
        knn_agreement(np.ones((5, 2)), np.ones((4, 2)), 2)
    with pytest.raises(ValueError, match="knn_agreement@10 needs more than 10 images, got 10"):
        knn_agreement(np.eye(10), np.eye(10), 10)
    assert knn_agreement_k("knn_agreement@10") == 10 and knn_agreement_k("recall@1") is None
