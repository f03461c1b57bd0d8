import numpy as np
import pytest

from robust_cifar.reporting.aggregate import (aggregate, bootstrap_difference, leaves, nest, paired_difference, t_quantile,
                                     verdict)
from tests.methods import ANGULAR, PERTURBED_HEAD


def test_aggregate_gives_mean_and_sample_std_per_key():
    per_seed = {0: {"test": {"clean": {"head": 0.5, "knn": 0.6}}},
                1: {"test": {"clean": {"head": 0.7, "knn": 0.6}}},
                2: {"test": {"clean": {"head": 0.6, "knn": 0.9}}}}
    summary = aggregate(per_seed)
    assert summary["seeds"] == 3
    assert summary["test"]["clean"]["head"] == {"mean": pytest.approx(0.6), "std": pytest.approx(0.1)}
    assert summary["test"]["clean"]["knn"]["std"] == pytest.approx(np.std([0.6, 0.6, 0.9], ddof=1), abs=1e-6)


def test_aggregate_keeps_only_keys_every_seed_has_and_one_seed_has_zero_spread():
    summary = aggregate({3: {"a": 1.0, "b": 2.0}, 4: {"a": 3.0}})
    assert set(leaves(summary)) == {"a.mean", "a.std", "seeds"}
    assert aggregate({0: {"a": 0.25}})["a"] == {"mean": 0.25, "std": 0.0}


def test_nest_inverts_leaves():
    tree = {"x": {"y": 1, "z": {"w": 2}}, "v": 3}
    assert nest(leaves(tree)) == tree


def test_paired_difference_uses_the_t_interval_of_per_seed_differences():
    difference = paired_difference([0.55, 0.57, 0.56], [0.50, 0.51, 0.50])
    per_seed = np.array([5.0, 6.0, 6.0])
    assert difference.mean == pytest.approx(per_seed.mean())
    assert difference.half_width == pytest.approx(4.303 * per_seed.std(ddof=1) / np.sqrt(3))
    assert difference.distinguishable
    assert not paired_difference([0.50, 0.52], [0.51, 0.50]).distinguishable
    single = paired_difference([0.6], [0.5])
    assert single.half_width is None and not single.distinguishable and single.mean == pytest.approx(10.0)


def test_t_quantiles_are_students_at_every_degree_of_freedom():
    """Against scipy (scikit-learn's dependency): 1.96 above 30 degrees of freedom made intervals 2-4% too narrow."""
    from scipy import stats

    for df in [*range(1, 121), 500, 10_000]:
        assert t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), abs=6e-4), df
    with pytest.raises(ValueError):
        t_quantile(0)


def test_bootstrap_interval_covers_the_mean_and_is_paired():
    rng = np.random.default_rng(1)
    baseline = rng.random((3, 2000)) < 0.5
    better = baseline | (rng.random((3, 2000)) < 0.1)
    mean, low, high = bootstrap_difference(better, baseline)
    assert low < mean < high and low > 0
    same_mean, same_low, same_high = bootstrap_difference(baseline, baseline)
    assert same_mean == same_low == same_high == 0.0   # paired: identical predictions, no spread


def test_verdict_sentences_follow_the_numbers():
    raised = verdict(PERTURBED_HEAD, paired_difference([0.56, 0.57, 0.55], [0.50, 0.51, 0.50]),
                     paired_difference([0.60, 0.61, 0.60], [0.65, 0.64, 0.65]))
    assert raised.startswith(f"{PERTURBED_HEAD} raises perturbed test accuracy over the baseline by 5.7 +-")
    assert "over 3 seeds" in raised and "clean accuracy -4.3 +-" in raised
    assert raised.endswith("points (distinguishable from zero).")   # every difference says whether it is
    robust = verdict("z", paired_difference([0.50, 0.52], [0.51, 0.50]), paired_difference([0.6, 0.6], [0.6, 0.6]),
                     paired_difference([0.02, 0.03], [0.0, 0.01]))
    assert "seeds), with clean accuracy +0.0 +- 0.0 points (not distinguishable from zero); robust" in robust
    assert robust.endswith("robust accuracy (worst case over attacks) +2.0 +- 0.0 points (distinguishable from zero).")
    noise = verdict(ANGULAR, paired_difference([0.50, 0.52], [0.51, 0.50]), paired_difference([0.6, 0.6], [0.6, 0.6]))
    assert noise.startswith(f"{ANGULAR} is not distinguishable from the baseline")
    lowered = verdict("x", paired_difference([0.40, 0.41, 0.40], [0.50, 0.50, 0.51]), paired_difference([0.5] * 3, [0.5] * 3))
    assert lowered.startswith("x lowers perturbed test accuracy")
    one = verdict("y", paired_difference([0.6], [0.5]), paired_difference([0.6], [0.5]))
    assert "train more seeds" in one
