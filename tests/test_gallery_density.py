"""benchmarks.gallery_density's pieces: R@1 on a subset of classes (``asymmetric_recall``'s ``classes``) against
brute force, and its class sets."""
from __future__ import annotations

import numpy as np

from benchmarks.common.collection import asymmetric_recall
from benchmarks.gallery_density import class_sets
from embdistill.data import ImageList


def test_recall_at_1_on_a_subset_of_classes_equals_brute_force():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(6), 8)
    in_gallery = np.tile([True, False], 24)
    gallery = rng.normal(size=(48, 5))
    queries = gallery + rng.normal(scale=1.5, size=(48, 5))
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    classes = np.array([1, 4, 5])
    items = ImageList([f"{i}.jpg" for i in range(48)], labels, [str(c) for c in range(6)], "toy")
    hits = []
    for q in np.flatnonzero(np.isin(labels, classes) & ~in_gallery):
        candidates = np.flatnonzero(np.isin(labels, classes) & in_gallery)
        nearest = candidates[np.argmax(gallery[candidates] @ queries[q])]
        hits.append(labels[nearest] == labels[q])
    assert 0 < np.mean(hits) < 1  # neither trivial nor hopeless: the subset matters
    assert asymmetric_recall(gallery, queries, items, in_gallery, classes) == np.mean(hits)
    assert asymmetric_recall(gallery, queries, items, in_gallery, np.arange(6)) != np.mean(hits)
    assert asymmetric_recall(gallery, queries, items, in_gallery) == asymmetric_recall(
        gallery, queries, items, in_gallery, np.arange(6))  # no classes: all of them


def test_class_sets_are_an_eighth_a_quarter_a_half_and_all_the_same_each_call():
    classes = np.arange(100, 198)  # 98 car models
    sets = class_sets(classes, draws=5)
    assert sorted(sets) == [12, 24, 49, 98]
    assert [len(sets[m]) for m in (12, 24, 49, 98)] == [5, 5, 5, 1]
    assert np.array_equal(sets[98][0], classes)
    for m in (12, 24, 49):
        assert all(len(set(c)) == m and set(c) <= set(classes) for c in sets[m])
        assert len({tuple(sorted(c)) for c in sets[m]}) == 5
    again = class_sets(classes, draws=5)
    assert all(np.array_equal(a, b) for m in sets for a, b in zip(sets[m], again[m]))
    assert sorted(class_sets(np.arange(4), draws=2)) == [2, 4]  # 1/8 and 1/4 of 4 classes round up to 2
