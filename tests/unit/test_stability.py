"""ICASSO consensus: planted networks are the stable ones, come first, and survive a change of seed."""

from __future__ import annotations

import numpy as np
import pytest

from fnapi.networks.stability import ConsensusICA, cluster_estimates, similarity_matrix
from fnapi.networks.template import iou
from tests.unit._planted import planted_mixture


@pytest.fixture(scope="module")
def planted():
    return planted_mixture(n_tokens=1500, sources=3, seed=5)


@pytest.fixture(scope="module")
def consensus_pair(planted):
    X, layout, _ = planted
    # 5 components for 3 planted networks: two clusters hold only noise. 10 runs, the default: with 6,
    # one run that mixes two networks pulled a planted component's stability to 0.74 on this machine.
    return [ConsensusICA(n_components=5, runs=10, pca_dims=12, random_state=seed).fit(X) for seed in (0, 1)]


def test_planted_components_are_stable_and_first(planted, consensus_pair):
    _, layout, truth = planted
    for fit in consensus_pair:
        assert np.all(np.diff(fit.stability_) <= 1e-12), "ordered by stability"
        assert fit.stability_[:3].min() > 0.9
        assert fit.stability_[3:].max() < fit.stability_[:3].min() - 0.3
        assert fit.runs_present_[:3].tolist() == [10, 10, 10]
        found = fit.neuron_sets(layout, rule="zscore", value=4)[:3]
        assert sorted(max(iou(p, f) for f in found) for p in truth) == [1.0, 1.0, 1.0]


def test_two_seeds_agree_on_the_top_components(planted, consensus_pair):
    _, layout, _ = planted
    a, b = (fit.neuron_sets(layout, rule="percentile", value=95)[:3] for fit in consensus_pair)
    for component in a:
        assert max(iou(component, other) for other in b) >= 0.8


def test_stability_index_is_icasso_iq_over_runs():
    # Three runs, two components each: component A comes back every time, B is noise.
    sim = np.array([
        [1.0, 0.1, 0.9, 0.2, 0.9, 0.1],
        [0.1, 1.0, 0.1, 0.3, 0.2, 0.2],
        [0.9, 0.1, 1.0, 0.1, 0.9, 0.2],
        [0.2, 0.3, 0.1, 1.0, 0.1, 0.3],
        [0.9, 0.2, 0.9, 0.1, 1.0, 0.2],
        [0.1, 0.2, 0.2, 0.3, 0.2, 1.0],
    ])
    runs = np.array([0, 0, 1, 1, 2, 2])
    result = cluster_estimates(sim, 2, runs, runs=3)
    assert [sorted(m.tolist()) for m in result.members] == [[0, 2, 4], [1, 3, 5]]
    extra_a = sim[np.ix_([0, 2, 4], [1, 3, 5])].mean()
    assert result.stability[0] == pytest.approx(0.9 - extra_a)
    assert result.stability[1] == pytest.approx((0.3 + 0.2 + 0.3) / 3 - extra_a)
    assert result.runs_present.tolist() == [3, 3]
    # a component seen in only one run is not "perfectly stable"
    lonely = cluster_estimates(sim, 6, runs, runs=3)
    assert lonely.stability.max() < 0.5


def test_similarity_ignores_sign_and_scale():
    w = np.array([[1.0, 2.0, 3.0, -1.0], [-2.0, -4.0, -6.0, 2.0], [3.0, -1.0, 2.0, 1.0]])
    sim = similarity_matrix(w)
    assert sim[0, 1] == pytest.approx(1.0)
    assert sim[0, 2] < 0.5


def test_single_run_has_no_stability_score(planted):
    X, _, _ = planted
    fit = ConsensusICA(n_components=3, runs=1, pca_dims=6, random_state=0).fit(X)
    assert np.isnan(fit.stability_).all()
    assert fit.weights_.shape == (3, X.shape[1])


def test_per_layer_consensus_orders_within_each_layer():
    X, layout, truth = planted_mixture(n_tokens=1200, same_layer=True, seed=6)
    fit = ConsensusICA(n_components=2, runs=4, mode="per_layer", layer_width=layout.width, random_state=0).fit(X)
    assert fit.component_block_.tolist() == [0, 0, 1, 1, 2, 2]
    found = fit.neuron_sets(layout, rule="topk", value=6)
    for layer in range(3):
        first, second = fit.stability_[2 * layer], fit.stability_[2 * layer + 1]
        assert first > second
        assert iou(found[2 * layer], truth[layer]) == 1.0
