"""Synthetic activations with known functional networks, for the ICA and stability tests."""

from __future__ import annotations

import numpy as np

from fnapi.networks.ica import NeuronLayout


def planted_mixture(*, n_tokens: int = 2000, layers: int = 3, width: int = 40, sources: int = 3, per_source: int = 6,
                    strength: float = 3.0, noise: float = 1.0, seed: int = 0, same_layer: bool = False,
                    ) -> tuple[np.ndarray, NeuronLayout, list[dict[int, list[int]]]]:
    """Sparse independent sources, each driving its own disjoint set of neurons, plus Gaussian noise.

    Returns ``(X, layout, planted)`` with ``planted[i]`` the neuron set of source ``i`` as
    ``{layer: channels}``. With ``same_layer`` every source's neurons sit in one layer (source i in
    layer i % layers), otherwise they are spread over all layers.
    """
    rng = np.random.default_rng(seed)
    layout = NeuronLayout(tuple(range(layers)), width)
    signals = rng.laplace(size=(n_tokens, sources))  # super-Gaussian, as neuron activity tends to be
    signals /= signals.std(axis=0)
    mixing = np.zeros((sources, layout.n_features))
    used: set[int] = set()
    planted = []
    for index in range(sources):
        pool = (np.arange(width) + (index % layers) * width) if same_layer else np.arange(layout.n_features)
        pool = np.array([c for c in rng.permutation(pool) if c not in used])[:per_source]
        used.update(int(c) for c in pool)
        mixing[index, pool] = strength * rng.uniform(0.8, 1.2, per_source) * rng.choice([-1.0, 1.0], per_source)
        planted.append(layout.split(pool))
    X = signals @ mixing + noise * rng.normal(size=(n_tokens, layout.n_features))
    return X.astype(np.float32), layout, planted
