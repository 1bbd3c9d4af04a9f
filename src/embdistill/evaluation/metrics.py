"""Retrieval metrics (Recall@K, MAP@R, R-Precision) and k-means NMI for embeddings.

Retrieval metrics are exact and never build the N x N similarity matrix. For every query
we only need the rank of each of its positives (same-label gallery items), and the rank of
a positive is fixed by how many negatives score at least as high. So we

1. compute each query's positive scores directly from the class members (cheap),
2. stream over blocks of the similarity matrix (one ``torch.mm`` per block) and keep only
   the negatives that reach a query's current threshold, its lowest positive that can still
   be a hit, then bin each of them at the highest positive it ties or beats,
3. turn those bins into ranks at the end.

When the gallery is the query set, the matrix is symmetric: only blocks on and above the
diagonal are multiplied, and each serves the queries of its rows and of its columns (items
are renumbered by their lowest positive score, so one comparison per block serves both).
Once a positive is certainly a miss (enough negatives ahead of it), its threshold moves up
to the next positive, and blocks whose queries are all settled are skipped. Cost: half the
matmul of the full matrix plus work per negative that outscores a query's lowest positive.

Conventions (the same as pytorch-metric-learning's ``AccuracyCalculator`` and Musgrave et
al., "A Metric Learning Reality Check", 2020):

* Without ``query_embeddings`` every item is a query against all the others (itself
  excluded). With them, queries are ranked against the whole gallery; with ``paired``
  too, query i and gallery item i are one image embedded by two networks (a student's
  query against its teacher's gallery), and item i is left out of query i's ranking.
* R for a query is its number of positives in the gallery (itself excluded). Queries
  without a positive are left out of every average, Recall@K included; if no query has a
  positive, every value is NaN.
* Ties are pessimistic: a negative whose score equals a positive's is ranked ahead of it.
  Ties among positives, or among negatives, do not change any metric.
* Scores are float32. Positives' scores come from a different product than the blocks, so
  a negative within float rounding of a positive may fall either side of it, exactly as
  with any two ways of computing the same matrix.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray
Metric = Literal["cosine", "euclidean"]

DEFAULT_CHUNK_CPU = 4096
DEFAULT_CHUNK_CUDA = 16384
# Elements per mask slab: a whole default CPU block, so a block costs few ops.
_SLAB_ELEMENTS = 1 << 24
# Candidates per counting batch: bounds the index tensors even when almost every negative
# outranks some positive (e.g. untrained embeddings).
_COUNT_BATCH = 1 << 21
_PAIR_SCORE_ELEMENTS = 1 << 22
# Diagonal blocks of a symmetric matrix are split down to this side (smaller matmuls are slower).
_MIN_DIAGONAL_TILE = 2048


def retrieval_metrics(
    embeddings: ArrayLike,
    labels: ArrayLike | Sequence[int],
    *,
    query_embeddings: ArrayLike | None = None,
    query_labels: ArrayLike | Sequence[int] | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    map_at_r: bool = True,
    r_precision: bool = True,
    chunk_size: int | None = None,
    metric: Metric = "cosine",
    paired: bool = False,
) -> dict[str, float]:
    """Recall@K for each K in ``ks``, MAP@R and R-Precision, exact, in bounded memory.

    ``embeddings``/``labels`` are the gallery; without ``query_*`` they are also the
    queries (leave-one-out). ``paired``: the queries are the gallery's images embedded
    by another network, row for row (same length, same labels), and each query's own
    image is left out of the gallery, as leave-one-out does with one network. ``metric="cosine"`` L2-normalises and ranks by inner product;
    ``"euclidean"`` ranks by L2 distance. Work runs on the embeddings' device.
    ``chunk_size`` is the block side of the similarity matrix; besides a copy of the
    embeddings, work memory is about 5 * chunk_size**2 bytes (14 for euclidean) plus ~40
    bytes per (query, positive) pair. The default suits the device.
    During the call, float32 matmul precision is "highest" and, on CPU, torch runs on one
    intra-op thread outside the matmuls; both settings are restored on return.
    Returns ``{"recall@K": ..., "map@r": ..., "r_precision": ...}``.
    """
    if (query_embeddings is None) != (query_labels is None):
        raise ValueError("pass query_embeddings and query_labels together")
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"every K must be >= 1, got {ks}")

    gallery = _as_embeddings(embeddings)
    same_set = query_embeddings is None
    queries = gallery if same_set else _as_embeddings(query_embeddings, gallery.device)
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query dim {queries.shape[1]} != gallery dim {gallery.shape[1]}")
    gallery_labels, q_labels = _as_label_ids(labels, None if same_set else query_labels, gallery.device)
    if len(gallery_labels) != len(gallery) or len(q_labels) != len(queries):
        raise ValueError("embeddings and labels must have the same length")
    if paired and same_set:
        raise ValueError("paired needs query_embeddings: the same images embedded by another network")
    if paired and (len(queries) != len(gallery) or not torch.equal(q_labels, gallery_labels)):
        raise ValueError(f"paired queries must be the gallery's images row for row: {len(queries)} queries, "
                         f"{len(gallery)} gallery items" + ("" if len(queries) != len(gallery) else ", labels differ"))
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK_CUDA if gallery.is_cuda else DEFAULT_CHUNK_CPU
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    # Full float32 products (no TF32), for exact ranks. On CPU, only the block matmuls use
    # the caller's intra-op threads and the rest runs on one: those ops are short and
    # memory-bound, and with several OpenMP threads each ends at a barrier where, on a busy
    # machine, waiting cost more than the op (measured 5-10x with 2 threads under load).
    precision, threads = torch.get_float32_matmul_precision(), torch.get_num_threads()
    torch.set_float32_matmul_precision("highest")
    if not gallery.is_cuda:
        torch.set_num_threads(1)
    try:
        return _retrieval_metrics(queries, q_labels, gallery, gallery_labels, same_set, ks, map_at_r, r_precision,
                                  chunk_size, metric, threads, paired)
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.set_num_threads(threads)


@torch.no_grad()
def _retrieval_metrics(
    queries: Tensor, q_labels: Tensor, gallery: Tensor, gallery_labels: Tensor, same_set: bool, ks: list[int],
    map_at_r: bool, r_precision: bool, chunk_size: int, metric: Metric, matmul_threads: int, paired: bool = False,
) -> dict[str, float]:
    if metric == "cosine":
        gallery = torch.nn.functional.normalize(gallery, dim=1)
        queries = gallery if same_set else torch.nn.functional.normalize(queries, dim=1)
        gallery_offset = None  # ranking by <q, g> is all cosine needs
    else:
        # ||q - g||^2 = ||q||^2 + ||g||^2 - 2<q, g>: for a fixed query, ranking by
        # <q, g> - ||g||^2 / 2 (higher is nearer) is the same order.
        gallery_offset = 0.5 * (gallery * gallery).sum(dim=1)

    # Query i's own image (gallery item i, same_set or paired) is its positive, never a negative: leaving it
    # out of the positives leaves it out of the ranking.
    owner, scores = _positive_scores(queries, q_labels, gallery, gallery_labels, gallery_offset, same_set or paired)
    if same_set:
        # Renumber items by their lowest positive score. Then in blocks above the diagonal
        # the row queries hold the lower thresholds, so one comparison serves both sides.
        lowest = torch.full((len(queries),), torch.inf, device=scores.device)
        order = torch.argsort(lowest.scatter_reduce_(0, owner, scores, reduce="amin"))
        new_index = torch.empty_like(order)
        new_index[order] = torch.arange(len(order), device=order.device)
        owner = new_index[owner]
        queries = gallery = gallery[order]
        q_labels = gallery_labels = gallery_labels[order]
        if gallery_offset is not None:
            gallery_offset = gallery_offset[order]

    ranks = _Ranks.create(owner, scores, q_labels, gallery_labels,
                          max_k=max(ks, default=0), rank_list=map_at_r or r_precision)
    _scan_blocks(ranks, queries, gallery, gallery_offset, same_set, chunk_size, matmul_threads)
    return ranks.summarize(ks, map_at_r, r_precision)


def nmi_kmeans(embeddings: ArrayLike, labels: ArrayLike | Sequence[int], *, seed: int = 0, niter: int = 20) -> float:
    """NMI between the labels and faiss k-means with as many clusters as classes.

    k-means runs on CPU whatever the input device (faiss-cpu); ``seed`` makes it repeatable.
    """
    import faiss

    x = np.ascontiguousarray(_to_numpy(embeddings), dtype=np.float32)
    y = _to_numpy(labels).reshape(-1)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError("embeddings must be (N, D) with one label per row")
    n_clusters = len(np.unique(y))
    kmeans = faiss.Kmeans(x.shape[1], n_clusters, niter=niter, seed=seed, verbose=False)
    kmeans.train(x)
    _, assignment = kmeans.index.search(x, 1)
    return normalized_mutual_info(y, assignment.reshape(-1))


def normalized_mutual_info(labels_true: ArrayLike | Sequence[int], labels_pred: ArrayLike | Sequence[int]) -> float:
    """NMI with arithmetic-mean normalisation, same values as sklearn's default."""
    _, true_ids = np.unique(_to_numpy(labels_true).reshape(-1), return_inverse=True)
    _, pred_ids = np.unique(_to_numpy(labels_pred).reshape(-1), return_inverse=True)
    if len(true_ids) != len(pred_ids):
        raise ValueError("labelings must have the same length")
    true_sizes, pred_sizes = np.bincount(true_ids), np.bincount(pred_ids)
    if len(true_sizes) == len(pred_sizes) <= 1:
        return 1.0  # neither labeling splits the data: a perfect match
    if len(true_sizes) == 1 or len(pred_sizes) == 1:
        return 0.0
    n = float(len(true_ids))
    cells, joint = np.unique(true_ids.astype(np.int64) * len(pred_sizes) + pred_ids, return_counts=True)
    row, col = np.divmod(cells, len(pred_sizes))
    joint = joint.astype(np.float64)
    terms = joint / n * (np.log(joint) + np.log(n) - np.log(true_sizes[row]) - np.log(pred_sizes[col]))
    terms[np.abs(terms) < np.finfo(np.float64).eps] = 0.0
    mi = max(float(terms.sum()), 0.0)
    if mi == 0.0:
        return 0.0
    return mi / (0.5 * (_entropy(true_sizes, n) + _entropy(pred_sizes, n)))


def _entropy(sizes: np.ndarray, n: float) -> float:
    p = sizes[sizes > 0] / n
    return float(-(p * np.log(p)).sum())


@dataclass
class _Ranks:
    """Each query's positive scores and the negatives counted against them so far.

    Flat arrays hold one entry per (query, positive), grouped by query and ascending by
    score within a group; ``offsets[q]:offsets[q + 1]`` is query q's group, of size R_q.
    """

    q_labels: Tensor
    g_labels: Tensor
    offsets: Tensor  # (Q + 1,) int64
    owner: Tensor  # (P,) query of each entry
    scores: Tensor  # (P,) float32 positive scores
    keys: Tensor  # (P,) int64 (query, score) keys, ascending: one searchsorted serves all queries
    needed: Tensor  # (P,) negatives at or above this positive that make it a miss for every metric
    binned: Tensor  # (P,) negatives whose highest tied-or-beaten positive is this entry
    offsets_cpu: list[int]

    @classmethod
    def create(cls, owner: Tensor, scores: Tensor, q_labels: Tensor, g_labels: Tensor, *,
               max_k: int, rank_list: bool) -> _Ranks:
        """From each (query, positive) pair's query index and score, in any order."""
        device = scores.device
        keys, order = torch.sort(_score_keys(owner, scores))
        owner, scores = owner[order], scores[order]
        offsets = torch.searchsorted(owner, torch.arange(len(q_labels) + 1, device=device))
        size = offsets[1:] - offsets[:-1]

        position = torch.arange(len(keys), device=device) - offsets[owner] + 1  # 1 = lowest positive
        # Positive j from the top (j = R - position + 1) ranks j + c with c negatives ahead:
        # a hit for MAP@R and R-Precision iff c < position; the top one is a Recall@K hit
        # iff c < K. Beyond those counts the exact number no longer matters.
        needed = position if rank_list else torch.zeros_like(position)
        needed = torch.where(position == size[owner], torch.clamp(needed, min=max_k), needed)
        return cls(q_labels, g_labels, offsets, owner, scores, keys, needed, torch.zeros_like(keys), offsets.tolist())

    def count(self, query: Tensor, item: Tensor, score: Tensor) -> None:
        """Bin negatives at the highest positive of their query that they tie or beat."""
        negative = self.q_labels[query] != self.g_labels[item]
        query, score = query[negative], score[negative]
        slot = torch.searchsorted(self.keys, _score_keys(query, score), right=True)
        slot = slot[slot > self.offsets[query]]
        self.binned.index_add_(0, slot - 1, torch.ones_like(slot))

    def ahead(self, start: int, stop: int) -> tuple[Tensor, slice]:
        """Negatives at or above each positive of queries start..stop-1 (a suffix sum per group)."""
        lo, hi = self.offsets_cpu[start], self.offsets_cpu[stop]
        csum = torch.zeros(hi - lo + 1, dtype=torch.int64, device=self.binned.device)
        torch.cumsum(self.binned[lo:hi], 0, out=csum[1:])
        group_end = self.offsets[self.owner[lo:hi] + 1] - lo
        return csum[group_end] - csum[:-1], slice(lo, hi)

    def thresholds(self, start: int, stop: int) -> Tensor:
        """Per query, the lowest positive that may still be a hit (inf once all are settled)."""
        ahead, flat = self.ahead(start, stop)
        open_scores = torch.where(ahead >= self.needed[flat], torch.inf, self.scores[flat])
        out = torch.full((stop - start,), torch.inf, device=self.scores.device)
        return out.scatter_reduce_(0, self.owner[flat] - start, open_scores, reduce="amin")

    def summarize(self, ks: Sequence[int], map_at_r: bool, r_precision: bool) -> dict[str, float]:
        n_queries = len(self.offsets) - 1
        ahead, _ = self.ahead(0, n_queries)
        r = (self.offsets[1:] - self.offsets[:-1]).double()
        has_positive = r > 0
        n_valid = int(has_positive.sum())
        out: dict[str, float] = {}

        top = self.offsets[1:][has_positive] - 1
        for k in ks:
            out[f"recall@{k}"] = _mean(((ahead[top] < k).double()), n_valid)

        position = (torch.arange(len(self.owner), device=r.device) - self.offsets[self.owner] + 1).double()
        from_top = r[self.owner] - position + 1
        hit = (ahead < position).double()
        if map_at_r:
            precision = torch.zeros_like(r).index_add_(0, self.owner, hit * from_top / (from_top + ahead))
            out["map@r"] = _mean(precision[has_positive] / r[has_positive], n_valid)
        if r_precision:
            hits = torch.zeros_like(r).index_add_(0, self.owner, hit)
            out["r_precision"] = _mean(hits[has_positive] / r[has_positive], n_valid)
        return out


def _positive_scores(
    queries: Tensor, q_labels: Tensor, gallery: Tensor, g_labels: Tensor, gallery_offset: Tensor | None,
    exclude_self: bool,
) -> tuple[Tensor, Tensor]:
    """Query index and score of every (query, positive) pair, class by class.

    Classes with the same number of queries and gallery items share one bmm.
    ``exclude_self``: query i and gallery item i are one image (one label order), left out of its positives.
    """
    device = queries.device
    q_order = torch.argsort(q_labels, stable=True)
    g_order = q_order if exclude_self else torch.argsort(g_labels, stable=True)
    classes, q_count = torch.unique_consecutive(q_labels[q_order], return_counts=True)
    q_start = torch.cumsum(q_count, 0) - q_count
    g_sorted = g_labels[g_order]
    g_start = torch.searchsorted(g_sorted, classes)
    g_count = torch.searchsorted(g_sorted, classes, right=True) - g_start

    owners, scores = [], []
    width = int(g_count.max()) + 1 if len(classes) else 1
    shape_of_class = torch.where(g_count > int(exclude_self), q_count * width + g_count, -1)
    for shape in torch.unique(shape_of_class).tolist():
        if shape < 0:
            continue
        a, b = divmod(shape, width)
        i, j = torch.arange(a, device=device), torch.arange(b, device=device)
        keep = i[:, None] != j[None, :] if exclude_self else torch.ones(a, b, dtype=torch.bool, device=device)
        per_part = max(1, _PAIR_SCORE_ELEMENTS // ((a + b) * queries.shape[1] + a * b))
        for part in torch.nonzero(shape_of_class == shape).squeeze(1).split(per_part):
            qi = q_order[q_start[part, None] + i]
            gi = g_order[g_start[part, None] + j]
            block = torch.bmm(queries[qi], gallery[gi].transpose(1, 2))
            if gallery_offset is not None:
                block -= gallery_offset[gi][:, None, :]
            owners.append(qi[:, :, None].expand_as(block)[:, keep])  # exclude_self: self left out
            scores.append(block[:, keep])
    if not owners:
        return torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(0, device=device)
    return torch.cat([o.reshape(-1) for o in owners]), torch.cat([s.reshape(-1) for s in scores])


class _Candidates:
    """(query, gallery item, score) triples that passed a threshold, counted in batches."""

    def __init__(self, ranks: _Ranks, limit: int) -> None:
        self.ranks, self.limit = ranks, limit
        self.parts: list[tuple[Tensor, Tensor, Tensor]] = []
        self.size = 0

    def add(self, query: Tensor, item: Tensor, score: Tensor, threshold: Tensor) -> None:
        # A loosened mask lets through what this query's own threshold rejects: drop it
        # here, cheaper than in counting.
        keep = score >= threshold[query]
        self.parts.append((query[keep], item[keep], score[keep]))
        self.size += len(self.parts[-1][0])
        if self.size >= self.limit:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.ranks.count(*(torch.cat(column) for column in zip(*self.parts)))
            self.parts, self.size = [], 0


def _scan_blocks(
    ranks: _Ranks, queries: Tensor, gallery: Tensor, gallery_offset: Tensor | None, same_set: bool, chunk: int,
    matmul_threads: int,
) -> None:
    """Stream the score matrix in blocks and count each query's negatives that matter.

    Thresholds only filter: a lower one lets more candidates through, and counting sorts
    them out exactly. So thresholds may be stale or loosened to save passes over a block.
    """
    n_q, n_g = len(queries), len(gallery)
    device = queries.device
    threshold = ranks.thresholds(0, n_q)
    block_buf = torch.empty(min(chunk, n_q) * min(chunk, n_g), device=device)
    slab_rows = max(1, _SLAB_ELEMENTS // min(chunk, n_g))
    mask_buf = torch.zeros(_round_up(slab_rows * min(chunk, n_g), 8), dtype=torch.bool, device=device)
    two_masks = same_set and gallery_offset is not None
    col_mask_buf = torch.empty_like(mask_buf) if two_masks else None
    candidates = _Candidates(ranks, limit=_COUNT_BATCH)

    work_since_refresh = 0
    for i0, i1, j0, j1 in _tiles(n_q, n_g, chunk, same_set):
        use_cols = same_set and j0 != i0
        row_thr, col_thr = threshold[i0:i1], threshold[j0:j1] if use_cols else None
        if not _any_finite(row_thr, col_thr):
            continue
        rows, cols = i1 - i0, j1 - j0
        with _intra_op_threads(matmul_threads):
            block = torch.mm(queries[i0:i1], gallery[j0:j1].T, out=block_buf[: rows * cols].view(rows, cols))
        if gallery_offset is None:
            row_scores = col_scores = block
            if use_cols:
                # Query j0 + c sees gallery item i0 + r with the same score. Items are ordered
                # so that columns mostly have the higher thresholds: this rarely loosens.
                row_thr = torch.minimum(row_thr, col_thr.min())
        else:
            row_scores = block - gallery_offset[j0:j1]
            col_scores = block - gallery_offset[i0:i1, None] if use_cols else block

        for r0 in range(0, rows, slab_rows):
            r1 = min(r0 + slab_rows, rows)
            n = (r1 - r0) * cols
            mask = torch.ge(row_scores[r0:r1], row_thr[r0:r1, None], out=mask_buf[:n].view(r1 - r0, cols))
            if use_cols and two_masks:
                mask |= torch.ge(col_scores[r0:r1], col_thr[None, :], out=col_mask_buf[:n].view(r1 - r0, cols))
            mask_buf[n : _round_up(n, 8)] = False
            for flat in _true_indices(mask_buf[: _round_up(n, 8)]).split(_COUNT_BATCH):
                r, c = flat // cols + r0, flat % cols
                candidates.add(r + i0, c + j0, row_scores[r, c], threshold)
                if use_cols:
                    candidates.add(c + j0, r + i0, col_scores[r, c], threshold)

        # Refresh thresholds about once per stripe of blocks, not after every block.
        work_since_refresh += rows * cols
        if work_since_refresh >= chunk * n_g // 2:
            candidates.flush()
            threshold = ranks.thresholds(0, n_q)
            work_since_refresh = 0
    candidates.flush()


@contextmanager
def _intra_op_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _tiles(n_q: int, n_g: int, chunk: int, same_set: bool) -> Iterator[tuple[int, int, int, int]]:
    """Blocks ``(i0, i1, j0, j1)`` that cover every (query, gallery item) pair once.

    A symmetric matrix needs only blocks on and above the diagonal; diagonal blocks are
    tiled again with half the side, so that little of their lower half is computed.
    """
    if same_set:
        yield from _upper_triangle(0, n_q, chunk)
        return
    for i0 in range(0, n_q, chunk):
        for j0 in range(0, n_g, chunk):
            yield i0, min(i0 + chunk, n_q), j0, min(j0 + chunk, n_g)


def _upper_triangle(start: int, stop: int, chunk: int) -> Iterator[tuple[int, int, int, int]]:
    for i0 in range(start, stop, chunk):
        i1 = min(i0 + chunk, stop)
        if i1 - i0 > _MIN_DIAGONAL_TILE:
            yield from _upper_triangle(i0, i1, -(-(i1 - i0) // 2))
        else:
            yield i0, i1, i0, i1
        for j0 in range(i1, stop, chunk):
            yield i0, i1, j0, min(j0 + chunk, stop)


def _true_indices(mask: Tensor) -> Tensor:
    """Flat indices of True in a 1-D bool mask of length divisible by 8.

    Candidates are sparse, so scanning the mask as int64 words first is much cheaper than
    nonzero() on every byte.
    """
    words = torch.nonzero(mask.view(torch.int64)).squeeze(1)
    word, byte = torch.nonzero(mask.view(-1, 8)[words], as_tuple=True)
    return words[word] * 8 + byte


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _any_finite(*thresholds: Tensor | None) -> bool:
    return any(bool(torch.isfinite(t).any()) for t in thresholds if t is not None)


def _score_keys(query: Tensor, score: Tensor) -> Tensor:
    """int64 keys that order (query, score) pairs as the float scores compare, ties included."""
    bits = (score + 0.0).contiguous().view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (query << 32) + (ordered.to(torch.int64) + (1 << 31))


def _mean(per_query: Tensor, n: int) -> float:
    return float(per_query.sum() / n) if n else float("nan")


def _as_embeddings(x: ArrayLike, device: torch.device | None = None) -> Tensor:
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, Tensor) else x.detach()
    if t.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"query embeddings on {t.device}, gallery on {device}")
    return t.to(torch.float32)


def _as_label_ids(
    labels: ArrayLike | Sequence[int], query_labels: ArrayLike | Sequence[int] | None, device: torch.device,
) -> tuple[Tensor, Tensor]:
    """int64 labels on ``device``; non-integer labels (e.g. strings) are mapped to ids jointly."""
    raw = [labels] if query_labels is None else [labels, query_labels]
    if all(isinstance(y, Tensor) and not y.is_floating_point() for y in raw):
        ids = [y.reshape(-1).to(device=device, dtype=torch.int64) for y in raw]
    else:
        arrays = [_to_numpy(y).reshape(-1) for y in raw]
        if all(a.dtype.kind in "iub" for a in arrays):
            ids = [torch.from_numpy(a.astype(np.int64)).to(device) for a in arrays]
        else:
            _, joint = np.unique(np.concatenate(arrays), return_inverse=True)
            ids = list(torch.from_numpy(joint.astype(np.int64)).to(device).split([len(a) for a in arrays]))
    return ids[0], ids[-1]


def _to_numpy(x: ArrayLike | Sequence[int]) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
