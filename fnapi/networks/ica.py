"""Independent component analysis of neuron activations.

The input is a token-by-neuron matrix ``X``: one row per captured token, the captured layers' neurons
side by side (layer blocks of equal width, see :class:`NeuronLayout`). ``X`` may be a float16 buffer
of several gigabytes, so nothing here makes a dense float32 copy of it: every pass reads it in row
chunks, standardises the chunk on the fly and multiplies it on the chosen device.

One decomposition is

1. standardise each neuron (zero mean, unit variance; constant neurons are left out),
2. reduce with a randomized PCA (Halko et al.) done in torch, so it also runs on a GPU,
3. run scikit-learn's FastICA on the reduced scores,
4. map the components back to neurons: ``weights_`` (spatial maps, what neuron sets are cut from)
   and ``filters_`` (what turns standardised activations into the component's signal per token).

In ``mode="global"`` one decomposition covers all layers; in ``mode="per_layer"`` each layer block
gets its own ``n_components`` components. Signs are fixed so that each component's largest-|w|
neuron has a positive weight.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.laplace(size=(500, 3)) @ rng.normal(size=(3, 40))
>>> ica = NeuronICA(n_components=3, pca_dims=6, random_state=0).fit(X)
>>> ica.weights_.shape
(3, 40)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from fnapi.errors import TemplateError

Mode = Literal["global", "per_layer"]
Rule = Literal["percentile", "zscore", "topk"]
Sign = Literal["abs", "positive", "negative"]

#: Bytes of float32 one row chunk may take; bounds the working memory of every pass over ``X``.
CHUNK_BYTES = 128 * 2**20

# A neuron whose standard deviation is below this is treated as constant (it carries no signal and
# standardising it would only amplify rounding noise).
_CONSTANT_STD = 1e-6


@dataclass(frozen=True)
class NeuronLayout:
    """Which model layer each column block of an activation matrix belongs to.

    >>> layout = NeuronLayout(layers=(3, 5), width=4)
    >>> layout.split(np.array([1, 4, 7]))
    {3: [1], 5: [0, 3]}
    """

    layers: tuple[int, ...]
    width: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))

    @property
    def n_features(self) -> int:
        return len(self.layers) * self.width

    def sub(self, start: int, stop: int) -> NeuronLayout:
        """The layout of columns ``start:stop`` (which must align with layer blocks)."""
        if start % self.width or stop % self.width:
            raise ValueError(f"columns {start}:{stop} do not align with layer blocks of width {self.width}")
        return NeuronLayout(self.layers[start // self.width:stop // self.width], self.width)

    def split(self, columns: np.ndarray) -> dict[int, list[int]]:
        """Turn flat column indices into ``{layer: sorted channel indices}`` (layers without any left out)."""
        result: dict[int, list[int]] = {}
        for column in np.sort(np.asarray(columns, dtype=np.int64)):
            layer = self.layers[int(column) // self.width]
            result.setdefault(layer, []).append(int(column) % self.width)
        return result


# ---- chunked linear algebra on a possibly huge, possibly low-precision matrix ------------------

def as_matrix(X: Any) -> torch.Tensor:
    """``X`` as a 2-D floating torch tensor, sharing memory with numpy input (no copy)."""
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(X)
    if not isinstance(X, torch.Tensor):
        X = torch.as_tensor(np.asarray(X))
    if X.ndim != 2:
        raise TemplateError(f"activation matrix must be 2-D (tokens x neurons), got shape {tuple(X.shape)}")
    if not X.is_floating_point():
        X = X.float()
    return X


def default_chunk_rows(n_features: int) -> int:
    """Rows per chunk so a float32 chunk stays near :data:`CHUNK_BYTES`."""
    return max(64, CHUNK_BYTES // (4 * max(n_features, 1)))


def _resolve_device(device: str | torch.device | None, X: torch.Tensor) -> torch.device:
    if device is None:
        return X.device
    return torch.device(device)


def _row_chunks(n_rows: int, chunk_rows: int):
    for start in range(0, n_rows, chunk_rows):
        yield slice(start, min(start + chunk_rows, n_rows))


class Standardized:
    """Row chunks of ``(X - mean) * scale`` in float32 on ``device``, never the whole matrix at once."""

    def __init__(self, X: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor,
                 device: torch.device, chunk_rows: int) -> None:
        self.X, self.mean, self.scale, self.device, self.chunk_rows = X, mean, scale, device, chunk_rows

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.X.shape)

    def chunks(self):
        """Yield ``(row_slice, standardised float32 chunk)``."""
        for rows in _row_chunks(self.X.shape[0], self.chunk_rows):
            chunk = self.X[rows].to(device=self.device, dtype=torch.float32, copy=True)
            yield rows, chunk.sub_(self.mean).mul_(self.scale)

    def matmul(self, M: torch.Tensor) -> torch.Tensor:
        """``Xs @ M`` with ``M`` of shape (n_features, r)."""
        out = torch.empty(self.X.shape[0], M.shape[1], dtype=torch.float32, device=self.device)
        for rows, chunk in self.chunks():
            out[rows] = chunk @ M
        return out

    def gram_matmul(self, V: torch.Tensor) -> torch.Tensor:
        """``Xs.T @ (Xs @ V)`` with ``V`` of shape (n_features, r), in one pass over ``X``."""
        out = torch.zeros(self.X.shape[1], V.shape[1], dtype=torch.float32, device=self.device)
        for _, chunk in self.chunks():
            out.addmm_(chunk.T, chunk @ V)
        return out


def column_moments(X: Any, *, chunk_rows: int | None = None, device: str | torch.device | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and standard deviation (population, like StandardScaler) in one chunked pass.

    Values are shifted by the first row (so the mean does not swamp the variance), summed per
    chunk in float32 and accumulated over chunks in float64, keeping the working memory at two
    float32 chunks. Non-finite values raise :class:`TemplateError` naming the column.
    """
    X = as_matrix(X)
    device = _resolve_device(device, X)
    n, d = X.shape
    if n < 2:
        raise TemplateError(f"need at least 2 token rows to estimate components, got {n}")
    chunk_rows = chunk_rows or default_chunk_rows(d)
    shift32 = X[0].to(device=device, dtype=torch.float32)
    s1 = torch.zeros(d, dtype=torch.float64, device=device)
    s2 = torch.zeros(d, dtype=torch.float64, device=device)
    for rows in _row_chunks(n, chunk_rows):
        chunk = X[rows].to(device=device, dtype=torch.float32, copy=True).sub_(shift32)
        s1 += chunk.sum(0)
        s2 += chunk.mul_(chunk).sum(0)
    shift = shift32.double()
    bad = ~(torch.isfinite(s1) & torch.isfinite(s2))
    if bool(bad.any()):
        column = int(torch.nonzero(bad)[0])
        raise TemplateError(
            f"the activation matrix holds NaN or infinite values ({int(bad.sum())} of {d} columns, "
            f"first at column {column})",
            "check the model's dtype (float16 can overflow; try float32 or bfloat16) and the input data",
        )
    mean_shifted = s1 / n
    var = (s2 / n - mean_shifted * mean_shifted).clamp_min_(0.0)
    return (mean_shifted + shift).float(), var.sqrt().float()


class RandomizedPCA:
    """Randomized PCA of the standardised columns of ``X``, computed in torch from row chunks.

    Parameters follow scikit-learn: ``n_components`` kept, ``oversample`` extra random directions,
    ``power_iters`` subspace iterations, one pass over ``X`` each (more = more accurate when the
    spectrum decays slowly, as it does for standardised activations: on the embedded model the top
    ten directions of two sketches differ by 0.26 rad after 2 iterations, 0.05 after 4, 0.007 after 6).

    Learned: ``mean_``, ``std_``, ``scale_`` (1/std, 0 for constant columns), ``components_``
    (n_components, n_features), ``singular_values_``, ``explained_variance_``,
    ``explained_variance_ratio_``, ``scores_`` (n_samples, n_components): the reduced data.
    """

    def __init__(self, n_components: int = 64, *, oversample: int = 10, power_iters: int = 6,
                 chunk_rows: int | None = None, device: str | torch.device | None = None,
                 random_state: int | None = None) -> None:
        self.n_components = n_components
        self.oversample = oversample
        self.power_iters = power_iters
        self.chunk_rows = chunk_rows
        self.device = device
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> RandomizedPCA:
        X = as_matrix(X)
        device = _resolve_device(self.device, X)
        n, d = X.shape
        chunk_rows = self.chunk_rows or default_chunk_rows(d)
        mean, std = column_moments(X, chunk_rows=chunk_rows, device=device)
        live = std > _CONSTANT_STD
        scale = torch.where(live, 1.0 / std.clamp_min(_CONSTANT_STD), torch.zeros_like(std))
        Xs = Standardized(X, mean, scale, device, chunk_rows)

        # Subspace iteration on the covariance: each step is ONE pass over X (chunk.T @ (chunk @ V)),
        # orthonormalised every time so float32 keeps the small directions.
        rank = max(1, min(self.n_components + self.oversample, n, d))
        generator = torch.Generator().manual_seed(_torch_seed(self.random_state))
        V = _orthonormal(torch.randn(d, rank, generator=generator, dtype=torch.float32).to(device))
        for _ in range(self.power_iters):
            V = _orthonormal(Xs.gram_matmul(V))
        U, S, Wt = _thin_svd(Xs.matmul(V))  # Xs V = U S Wt
        k = min(self.n_components, S.shape[0])
        U, S, Vt = U[:, :k], S[:k], (Wt[:k] @ V.T)
        # Deterministic signs (as sklearn's svd_flip): each component's largest loading is positive.
        signs = torch.sign(Vt.gather(1, Vt.abs().argmax(1, keepdim=True))).squeeze(1)
        signs[signs == 0] = 1
        Vt, U = Vt * signs[:, None], U * signs[None, :]

        n_live = int(live.sum())
        self.n_samples_, self.n_features_in_ = n, d
        self.mean_ = mean.cpu().numpy()
        self.std_ = std.cpu().numpy()
        self.scale_ = scale.cpu().numpy()
        self.components_ = Vt.cpu().numpy()
        self.singular_values_ = S.cpu().numpy()
        self.explained_variance_ = (self.singular_values_ ** 2) / max(n - 1, 1)
        total = n_live * n / max(n - 1, 1)
        self.explained_variance_ratio_ = self.explained_variance_ / total if total else self.explained_variance_ * 0
        self.scores_ = (U * S).cpu().numpy()
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Reduced scores of new rows (same standardisation as the fit)."""
        X = as_matrix(X)
        device = _resolve_device(self.device, X)
        Xs = Standardized(X, torch.from_numpy(self.mean_).to(device), torch.from_numpy(self.scale_).to(device),
                          device, self.chunk_rows or default_chunk_rows(X.shape[1]))
        return Xs.matmul(torch.from_numpy(self.components_.T.copy()).to(device)).cpu().numpy()


# Small factorisations of CPU tensors go through numpy's LAPACK: torch's CPU QR/SVD can stall for
# a second per call when the machine is busy (its threads wait on cores other processes hold).

def _orthonormal(M: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the columns of ``M`` (thin QR)."""
    if M.device.type == "cpu":
        return torch.from_numpy(np.linalg.qr(M.numpy())[0])
    return torch.linalg.qr(M).Q


def _thin_svd(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if M.device.type == "cpu":
        return tuple(torch.from_numpy(part) for part in np.linalg.svd(M.numpy(), full_matrices=False))
    return torch.linalg.svd(M, full_matrices=False)


def _torch_seed(random_state: int | None) -> int:
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    return int(random_state) & 0xFFFF_FFFF


# ---- FastICA on reduced data --------------------------------------------------------------------

@dataclass
class ICARun:
    """One FastICA fit on reduced scores ``Z`` (n, p).

    ``mixing`` (p, k) and ``unmixing`` (k, p) as in scikit-learn; sources = (Z - mean) @ unmixing.T.
    """

    mixing: np.ndarray
    unmixing: np.ndarray
    mean: np.ndarray
    n_iter: int
    converged: bool


def run_fastica(Z: np.ndarray, n_components: int, *, random_state: int | None, fun: str = "logcosh",
                max_iter: int = 1000, tol: float = 1e-4) -> ICARun:
    """Fit scikit-learn's FastICA (parallel, unit-variance sources) on ``Z``; never raises on non-convergence."""
    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning

    # eigh whitening works on the small p x p covariance: much faster than an SVD when n >> p.
    ica = FastICA(n_components=n_components, whiten="unit-variance", whiten_solver="eigh", fun=fun,
                  max_iter=max_iter, tol=tol, random_state=random_state)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        ica.fit(np.asarray(Z, dtype=np.float64))
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return ICARun(mixing=ica.mixing_, unmixing=ica.components_, mean=ica.mean_, n_iter=int(ica.n_iter_),
                  converged=converged)


_CONTRASTS = {
    # name: (g, g') of FastICA's non-linearities, as in scikit-learn
    "logcosh": (np.tanh, lambda u: 1.0 - np.tanh(u) ** 2),
    "exp": (lambda u: u * np.exp(-u * u / 2), lambda u: (1 - u * u) * np.exp(-u * u / 2)),
    "cube": (lambda u: u ** 3, lambda u: 3 * u * u),
}


def refine_components(Z: np.ndarray, unmixing: np.ndarray, n_dims: int, *, fun: str = "logcosh",
                      max_iter: int = 1000, tol: float = 1e-10) -> ICARun:
    """Polish rough FastICA estimates into exact fixed points, one component at a time.

    ``Z`` are PCA scores (columns uncorrelated, by decreasing variance); ``unmixing`` (m, p) holds
    rough estimates (any run, any resample) as filters on ``Z``. Each is projected into the white
    space of the first ``n_dims`` columns and iterated with the one-unit FastICA rule, in the given
    order, each kept orthogonal to those before it (deflation). Symmetric FastICA couples all
    components, so equal starting basins can end a little apart (IoU ~0.7 at the 98th percentile on
    the embedded model); one-unit fixed points do not depend on the other components.

    Why not scikit-learn's ``FastICA(algorithm="deflation", whiten=False, w_init=...)``: it runs
    the same one-unit rule, contrasts and stopping test, but takes the first step from each start
    as given and removes the components already found only from the update; here the start is
    projected off them first. A cluster representative is never orthogonal to the components
    refined before it (they are not known until found), so the two orders can end at different
    fixed points: over the 20 consensus refinements of the planted mixtures in the unit tests
    (``sources`` 3 and 4, global and per-layer), they did in 10, from the first such component on
    (1 - |cos| up to 0.99, on the weak and noise components); taking the start in scikit-learn's
    order instead reproduced scikit-learn to 1e-6 up to the first component that does not converge
    in ``max_iter``. On the planted components themselves the two agree
    (``test_refinement_agrees_with_scikit_learn_deflation_on_planted_sources``).
    """
    if fun not in _CONTRASTS:
        raise TemplateError(f"unknown FastICA contrast {fun!r}; use {', '.join(_CONTRASTS)}")
    g, g_prime = _CONTRASTS[fun]
    Z = np.asarray(Z, dtype=np.float64)
    mean = Z.mean(axis=0)
    centered = Z - mean
    scale = 1.0 / np.maximum(centered[:, :n_dims].std(axis=0), 1e-12)
    white = centered[:, :n_dims] * scale  # identity covariance: PCA scores are already uncorrelated
    n = white.shape[0]
    start = white.T @ (centered @ np.asarray(unmixing, dtype=np.float64).T) / n  # (n_dims, m)
    found: list[np.ndarray] = []
    iterations, converged = 0, True
    for column in start.T:
        w = _deflate(column, found)
        for step in range(max_iter):  # noqa: B007 (read after the loop)
            u = white @ w
            updated = _deflate(white.T @ g(u) / n - g_prime(u).mean() * w, found)
            done = abs(1.0 - abs(updated @ w)) < tol
            w = updated
            if done:
                break
        else:
            converged = False
        iterations = max(iterations, step + 1)
        found.append(w)
    W = np.array(found)  # (m, n_dims), orthonormal
    filters = np.zeros((W.shape[0], Z.shape[1]))
    filters[:, :n_dims] = W * scale
    sources = white @ W.T  # unit variance, uncorrelated
    mixing = centered.T @ sources / n  # (p, m): least-squares map of each source onto Z
    return ICARun(mixing=mixing, unmixing=filters, mean=mean, n_iter=iterations, converged=converged)


def _deflate(w: np.ndarray, basis: list[np.ndarray]) -> np.ndarray:
    for b in basis:
        w = w - (w @ b) * b
    norm = np.linalg.norm(w)
    return w / norm if norm > 0 else w


def orient_components(weights: np.ndarray) -> np.ndarray:
    """Signs (+1/-1 per row) that make each row's largest-|w| entry positive (first such entry on ties)."""
    weights = np.atleast_2d(weights)
    peak = weights[np.arange(weights.shape[0]), np.abs(weights).argmax(axis=1)]
    return np.where(peak < 0, -1.0, 1.0)


# ---- estimators ---------------------------------------------------------------------------------

@dataclass
class BlockFit:
    """What one column block's decomposition yields (components in the block's columns)."""

    weights: np.ndarray  # (k, block width) spatial maps
    filters: np.ndarray  # (k, block width) on standardised columns
    offsets: np.ndarray  # (k,) subtracted from filters @ x
    pca: RandomizedPCA
    extra: dict[str, np.ndarray]  # per-component arrays (for example stability)


class BlockDecomposition:
    """Shared machinery of the ICA estimators: column blocks, assembly, orientation, transform.

    Learned attributes (all numpy): ``weights_`` (n_components_total, n_features) spatial maps, zero
    outside a component's block; ``filters_`` and ``offsets_`` (sources = standardised x @ filters.T
    - offsets); ``mean_``, ``scale_`` (standardisation); ``blocks_`` (column ranges);
    ``component_block_`` (block index of each component); ``explained_variance_ratio_`` per block.
    """

    n_components: int
    mode: Mode
    layer_width: int | None
    random_state: int | None
    device: str | torch.device | None
    chunk_rows: int | None

    def _fit_block(self, X: torch.Tensor, seed: int) -> BlockFit:  # pragma: no cover - abstract
        raise NotImplementedError

    def _blocks(self, n_features: int) -> list[tuple[int, int]]:
        if self.mode == "global":
            return [(0, n_features)]
        if self.mode != "per_layer":
            raise TemplateError(f"unknown ICA mode {self.mode!r}; use 'global' or 'per_layer'")
        width = self.layer_width
        if not width or n_features % width:
            raise TemplateError(f"per_layer mode needs layer_width dividing the {n_features} columns, got {width!r}")
        return [(start, start + width) for start in range(0, n_features, width)]

    def fit(self, X: Any, y: Any = None) -> BlockDecomposition:
        """Fit on ``X`` (n_tokens, n_features); returns ``self``."""
        X = as_matrix(X)
        n, d = X.shape
        if self.n_components < 1:
            raise TemplateError(f"n_components must be at least 1, got {self.n_components}")
        blocks = self._blocks(d)
        seeds = np.random.SeedSequence(self.random_state).generate_state(len(blocks))
        fits = [self._fit_block(X[:, start:stop], int(seed)) for (start, stop), seed in zip(blocks, seeds)]

        total = sum(fit.weights.shape[0] for fit in fits)
        self.weights_ = np.zeros((total, d), dtype=np.float32)
        self.filters_ = np.zeros((total, d), dtype=np.float32)
        self.offsets_ = np.zeros(total, dtype=np.float32)
        self.mean_ = np.zeros(d, dtype=np.float32)
        self.scale_ = np.zeros(d, dtype=np.float32)
        self.component_block_ = np.zeros(total, dtype=np.int64)
        extra: dict[str, list[np.ndarray]] = {}
        row = 0
        for index, ((start, stop), fit) in enumerate(zip(blocks, fits)):
            k = fit.weights.shape[0]
            self.weights_[row:row + k, start:stop] = fit.weights
            self.filters_[row:row + k, start:stop] = fit.filters
            self.offsets_[row:row + k] = fit.offsets
            self.mean_[start:stop] = fit.pca.mean_
            self.scale_[start:stop] = fit.pca.scale_
            self.component_block_[row:row + k] = index
            for key, values in fit.extra.items():
                extra.setdefault(key, []).append(np.asarray(values))
            row += k
        signs = orient_components(self.weights_) if total else np.zeros(0)
        self.weights_ *= signs[:, None]
        self.filters_ *= signs[:, None]
        self.offsets_ *= signs
        for key, values in extra.items():
            setattr(self, key, np.concatenate(values))
        self.blocks_ = blocks
        self.explained_variance_ratio_ = [float(fit.pca.explained_variance_ratio_.sum()) for fit in fits]
        self.pca_dims_ = [int(fit.pca.components_.shape[0]) for fit in fits]
        self.n_features_in_ = d
        self.n_samples_ = n
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Component signals per row of ``X``: (n_tokens, n_components_total), in chunks."""
        X = as_matrix(X)
        device = _resolve_device(self.device, X)
        Xs = Standardized(X, torch.from_numpy(self.mean_).to(device), torch.from_numpy(self.scale_).to(device),
                          device, self.chunk_rows or default_chunk_rows(X.shape[1]))
        sources = Xs.matmul(torch.from_numpy(self.filters_.T.copy()).to(device))
        return (sources - torch.from_numpy(self.offsets_).to(device)).cpu().numpy()

    def neuron_sets(self, layout: NeuronLayout, *, rule: Rule = "percentile", value: float = 98.0,
                    sign: Sign = "abs") -> list[dict[int, list[int]]]:
        """Each component's selected neurons as ``{layer: channels}`` (see :func:`select_neurons`)."""
        if layout.n_features != self.n_features_in_:
            raise TemplateError(f"layout has {layout.n_features} neurons but the fit saw {self.n_features_in_}")
        result = []
        for weights, block in zip(self.weights_, self.component_block_):
            start, stop = self.blocks_[int(block)]
            result.append(select_neurons(weights[start:stop], layout.sub(start, stop), rule=rule, value=value,
                                         sign=sign))
        return result


def default_pca_dims(n_components: int) -> int:
    """Rank of the randomized PCA when none is given: a margin above the components kept by FastICA.

    FastICA whitens onto the top ``n_components`` directions; a sketch several times wider pins those
    down (the spectrum of standardised activations is flat, so the margin matters).
    """
    return 3 * n_components + 10


class NeuronICA(BlockDecomposition):
    """One FastICA decomposition of standardised neuron activations (single run, no consensus).

    ``pca_dims`` is the rank of the randomized PCA; FastICA then whitens onto ``n_components`` of
    those dimensions. ``random_state`` fixes the PCA projection and FastICA's start.
    See :class:`fnapi.networks.stability.ConsensusICA` for components that are reproducible.
    """

    def __init__(self, n_components: int = 10, *, pca_dims: int | None = None, mode: Mode = "global",
                 layer_width: int | None = None, fun: str = "logcosh", max_iter: int = 1000, tol: float = 1e-4,
                 power_iters: int = 6, chunk_rows: int | None = None, device: str | torch.device | None = None,
                 random_state: int | None = None) -> None:
        self.n_components = n_components
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

    def _fit_block(self, X: torch.Tensor, seed: int) -> BlockFit:
        pca, k = reduce(X, self.n_components, self.pca_dims, power_iters=self.power_iters,
                        chunk_rows=self.chunk_rows, device=self.device, seed=seed)
        run = run_fastica(pca.scores_, k, random_state=seed, fun=self.fun, max_iter=self.max_iter, tol=self.tol)
        weights, filters, offsets = to_neuron_space(run, pca)
        return BlockFit(weights, filters, offsets, pca,
                        extra={"n_iter_": np.full(k, run.n_iter), "converged_": np.full(k, run.converged)})


def reduce(X: torch.Tensor, n_components: int, pca_dims: int | None, *, power_iters: int,
           chunk_rows: int | None, device: Any, seed: int) -> tuple[RandomizedPCA, int]:
    """Fit the randomized PCA for one block; returns it and the number of components the data allows."""
    n, d = X.shape
    dims = min(pca_dims or default_pca_dims(n_components), n - 1, d)
    k = min(n_components, dims)
    if k < 1:
        raise TemplateError(f"too little data for ICA: {n} token rows x {d} neurons")
    pca = RandomizedPCA(dims, power_iters=power_iters, chunk_rows=chunk_rows, device=device,
                        random_state=seed).fit(X)
    return pca, k


def to_neuron_space(run: ICARun, pca: RandomizedPCA) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map a FastICA fit on PCA scores back to neurons: (weights, filters, offsets)."""
    weights = (run.mixing.T @ pca.components_).astype(np.float32)
    filters = (run.unmixing @ pca.components_).astype(np.float32)
    offsets = (run.unmixing @ run.mean).astype(np.float32)
    return weights, filters, offsets


# ---- neuron selection ---------------------------------------------------------------------------

def select_neurons(weights: np.ndarray, layout: NeuronLayout, *, rule: Rule = "percentile", value: float = 98.0,
                   sign: Sign = "abs") -> dict[int, list[int]]:
    """Neurons of one component, ``{layer: sorted channels}``.

    Rules: ``percentile`` keeps neurons whose |w| reaches the ``value``-th percentile of |w| over the
    component's neurons (the predecessor's rule, default 98); ``zscore`` keeps neurons whose
    standardised weight reaches ``value``; ``topk`` keeps the ``value`` strongest neurons of each layer.
    ``sign`` says which side counts: ``abs`` both, ``positive`` only w > 0, ``negative`` only w < 0
    (components are oriented so their largest-|w| side is positive).

    >>> layout = NeuronLayout((0,), 5)
    >>> select_neurons(np.array([0.1, -3.0, 2.0, 0.0, 0.2]), layout, rule="topk", value=1, sign="negative")
    {0: [1]}
    """
    check_selection(rule, value, sign)
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.shape[0] != layout.n_features:
        raise TemplateError(f"component has {w.shape[0]} weights but the layout has {layout.n_features} neurons")
    signed = {"abs": np.abs(w), "positive": w, "negative": -w}[sign]
    if rule == "percentile":
        threshold = np.percentile(np.abs(w), value)
        keep = (signed >= threshold) & (signed > 0)
    elif rule == "zscore":
        std = w.std()
        z = (w - w.mean()) / std if std > 0 else np.zeros_like(w)
        keep = {"abs": np.abs(z), "positive": z, "negative": -z}[sign] >= value
    else:
        keep = np.zeros(w.shape[0], dtype=bool)
        for start in range(0, w.shape[0], layout.width):
            block = signed[start:start + layout.width]
            order = np.argsort(-block, kind="stable")[:int(value)]
            keep[start + order[block[order] > 0]] = True
    return layout.split(np.flatnonzero(keep))


def check_selection(rule: str, value: float, sign: str) -> None:
    """Raise :class:`TemplateError` (naming the ``selection`` field) for a rule, value or sign that cannot work."""
    from fnapi.recipe import selection_problem

    problem = selection_problem(rule, value, sign)
    if problem:
        raise TemplateError(problem)


def neuron_count(neurons: dict[int, Sequence[int]]) -> int:
    """Total neurons in a ``{layer: channels}`` set."""
    return sum(len(channels) for channels in neurons.values())
