"""Reproducible components: an ICASSO-style consensus over many FastICA runs.

A single FastICA run is not reproducible: its start is random, and on real activations only some
components come back when the seed changes. ICASSO (Himberg, Hyvärinen & Esposito, 2004) runs ICA
many times, over different seeds and bootstrap resamples of the tokens, clusters all estimates by
similarity, and scores each cluster:

- similarity of two estimates = |Pearson correlation| of their neuron-space weight vectors;
- clusters: agglomerative, average linkage on ``1 - similarity``, cut into ``n_components`` clusters;
- stability index ``Iq`` = mean similarity inside the cluster - mean similarity to estimates outside;
- representative = the centrotype, the estimate most similar to the rest of its cluster (chosen
  among the runs that saw all tokens, so no resample's noise ends up in the template).

Two choices differ from the original and are deliberate: the intra-cluster mean leaves out each
estimate's similarity to itself and is taken over at least ``runs`` estimates, so a component seen
in only a few runs (or once) scores low instead of perfectly.

Components come out ordered by stability, most stable first.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.laplace(size=(600, 2)) @ rng.normal(size=(2, 30)) + 0.1 * rng.normal(size=(600, 30))
>>> consensus = ConsensusICA(n_components=2, runs=4, pca_dims=4, random_state=0).fit(X)
>>> bool(consensus.stability_[0] > 0.9)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fnapi.networks.ica import (
    BlockDecomposition,
    BlockFit,
    Mode,
    reduce,
    refine_components,
    run_fastica,
    to_neuron_space,
)


@dataclass
class Clustering:
    """Clusters of run estimates and their ICASSO scores, most stable first."""

    members: list[np.ndarray]  # estimate indices per cluster
    centrotypes: np.ndarray  # estimate index representing each cluster
    stability: np.ndarray  # Iq per cluster
    intra: np.ndarray
    extra: np.ndarray
    runs_present: np.ndarray  # distinct runs with an estimate in the cluster


def similarity_matrix(weights: np.ndarray) -> np.ndarray:
    """|Pearson correlation| between the rows of ``weights`` (estimates x neurons)."""
    centered = weights - weights.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centered, axis=1, keepdims=True)
    normalized = centered / np.where(norms > 0, norms, 1.0)
    sim = np.abs(normalized @ normalized.T)
    np.fill_diagonal(sim, 1.0)
    return np.clip(sim, 0.0, 1.0)


def cluster_estimates(sim: np.ndarray, n_clusters: int, run_of: np.ndarray, runs: int) -> Clustering:
    """Average-linkage clustering of estimates into ``n_clusters`` and the ICASSO index of each cluster."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n = sim.shape[0]
    if n == 1:
        labels = np.ones(1, dtype=np.int64)
    else:
        distances = squareform(1.0 - sim, checks=False)
        labels = fcluster(linkage(distances, method="average"), t=n_clusters, criterion="maxclust")
    members, centrotypes, stability, intra_all, extra_all, present = [], [], [], [], [], []
    for label in np.unique(labels):
        inside = np.flatnonzero(labels == label)
        outside = np.flatnonzero(labels != label)
        block = sim[np.ix_(inside, inside)]
        # Counted over at least `runs` estimates: a component that only some runs found scores low.
        count = max(len(inside), runs)
        intra = (block.sum() - len(inside)) / (count * (count - 1)) if count > 1 else 0.0
        extra = sim[np.ix_(inside, outside)].mean() if len(outside) else 0.0
        members.append(inside)
        centrotypes.append(inside[int(np.argmax(block.sum(axis=1)))])
        intra_all.append(intra)
        extra_all.append(extra)
        stability.append(intra - extra)
        present.append(len(np.unique(run_of[inside])))
    # Most stable first; ties by the earliest centrotype so the order is deterministic.
    order = sorted(range(len(members)), key=lambda i: (-round(stability[i], 12), centrotypes[i]))
    return Clustering(
        members=[members[i] for i in order],
        centrotypes=np.array([centrotypes[i] for i in order], dtype=np.int64),
        stability=np.array([stability[i] for i in order]),
        intra=np.array([intra_all[i] for i in order]),
        extra=np.array([extra_all[i] for i in order]),
        runs_present=np.array([present[i] for i in order], dtype=np.int64),
    )


class ConsensusICA(BlockDecomposition):
    """ICASSO consensus over ``runs`` FastICA fits (seeds and, with ``bootstrap``, token resamples).

    The randomized PCA is fitted once per block; each run fits FastICA on its scores from a new
    start. With ``bootstrap`` every second run fits a bootstrap resample of the tokens instead of all
    of them, so the stability index reflects the data's variability as well as the algorithm's; the
    representative is the centrotype among the all-token runs (see :func:`representative`).

    ``random_state`` sets the PCA sketch and the FastICA starts. The resamples come from their own
    generator (``resample_seed``), so builds that differ only in ``random_state`` score the same
    data variability: the stability ranking is a property of the data, not of the seed, and the
    most stable components do not swap places when two of them are nearly tied. Learned, besides the
    :class:`~fnapi.networks.ica.BlockDecomposition` attributes
    (``weights_``/``filters_`` are the centrotypes'): ``stability_`` (Iq per component),
    ``cluster_size_``, ``runs_present_`` (runs that found the component), ``intra_similarity_``,
    ``extra_similarity_``, ``n_converged_`` (runs of the block that converged).
    Components are ordered by stability within each block.
    """

    def __init__(self, n_components: int = 10, *, runs: int = 10, bootstrap: bool = True,
                 pca_dims: int | None = None, mode: Mode = "global", layer_width: int | None = None,
                 fun: str = "logcosh", max_iter: int = 1000, tol: float = 1e-4, power_iters: int = 6,
                 chunk_rows: int | None = None, device: str | torch.device | None = None,
                 random_state: int | None = None, resample_seed: int = 0, progress: Any = None) -> None:
        self.n_components = n_components
        self.runs = runs
        self.bootstrap = bootstrap
        self.pca_dims = pca_dims
        self.mode = mode
        self.layer_width = layer_width
        self.fun = fun
        self.max_iter = max_iter
        self.tol = tol
        self.power_iters = power_iters
        self.chunk_rows = chunk_rows
        self.device = device
        self.random_state = random_state
        self.resample_seed = resample_seed
        self.progress = progress

    def _fit_block(self, X: torch.Tensor, seed: int) -> BlockFit:
        pca, k = reduce(X, self.n_components, self.pca_dims, power_iters=self.power_iters,
                        chunk_rows=self.chunk_rows, device=self.device, seed=seed)
        Z = pca.scores_
        starts = np.random.default_rng(seed)
        resamples = np.random.default_rng(self.resample_seed)
        runs = max(1, self.runs)
        weights, unmixing, run_of, resampled = [], [], [], []
        converged = 0
        for run_index in range(runs):
            bootstrap = self.bootstrap and run_index % 2 == 1
            rows = resamples.integers(0, Z.shape[0], Z.shape[0]) if bootstrap else slice(None)
            run = run_fastica(Z[rows], k, random_state=int(starts.integers(2**31 - 1)), fun=self.fun,
                              max_iter=self.max_iter, tol=self.tol)
            converged += run.converged
            weights.append(to_neuron_space(run, pca)[0])
            unmixing.append(run.unmixing)
            run_of.extend([run_index] * k)
            resampled.extend([bootstrap] * k)
            if self.progress is not None:
                self.progress()
        W = np.concatenate(weights)
        sim = similarity_matrix(W)
        clusters = cluster_estimates(sim, k, np.array(run_of), runs)
        picks = np.array([representative(members, sim, ~np.array(resampled)) for members in clusters.members])
        refined = refine_components(Z, np.concatenate(unmixing)[picks], k, fun=self.fun, max_iter=self.max_iter)
        weights_out, filters_out, offsets_out = to_neuron_space(refined, pca)
        stability = clusters.stability if runs > 1 else np.full(len(picks), np.nan)
        return BlockFit(
            weights=weights_out, filters=filters_out, offsets=offsets_out, pca=pca,
            extra={
                "stability_": stability,
                "cluster_size_": np.array([len(m) for m in clusters.members]),
                "runs_present_": clusters.runs_present,
                "intra_similarity_": clusters.intra,
                "extra_similarity_": clusters.extra,
                "n_converged_": np.full(len(picks), converged),
            },
        )


def representative(members: np.ndarray, sim: np.ndarray, full_data: np.ndarray) -> int:
    """The cluster's centrotype among estimates fitted on all tokens (any member if none was).

    Bootstrap estimates widen the cluster and so inform the stability index, but each carries its
    resample's noise; the representative is the member most similar to the rest of the cluster
    among those that saw every token.
    """
    scores = sim[np.ix_(members, members)].sum(axis=1)
    eligible = full_data[members]
    if eligible.any():
        scores = np.where(eligible, scores, -np.inf)
    return int(members[int(np.argmax(scores))])
