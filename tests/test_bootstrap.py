"""The bootstrap intervals: nominal coverage on simulated data, resampling by patient, paired differences."""

from __future__ import annotations

import numpy as np
import pytest

from wtl.metrics.bootstrap import Resampler, classification_replicates, excludes_zero, interval


def test_interval_of_a_known_proportion_covers_it_at_about_the_nominal_rate():
    # 400 simulated data sets of 150 independent images with a true rate of 0.3: a 95 % interval
    # should miss the truth about 20 times; the percentile interval is a little liberal at this size.
    truth, trials, covered = 0.3, 400, 0
    generator = np.random.default_rng(1)
    for trial in range(trials):
        hits = (generator.random(150) < truth).astype(float)
        resampler = Resampler.draw(range(150), "image", 1000, seed=trial)
        low, high = interval(resampler.mean(hits))
        covered += low <= truth <= high
    assert 0.90 <= covered / trials <= 0.985


def test_resampling_patients_widens_the_interval_when_a_patients_cells_are_identical():
    generator = np.random.default_rng(0)
    patients = np.repeat(np.arange(20), 10)  # 20 patients of 10 cells
    independent = (generator.random(200) < 0.5).astype(float)
    identical = np.repeat((generator.random(20) < 0.5).astype(float), 10)  # each patient's cells alike

    def width(values: np.ndarray, units: np.ndarray) -> float:
        low, high = interval(Resampler.draw(list(units), "patient", 2000, seed=3).mean(values))
        return high - low

    by_image = np.arange(200)
    # Independent cells: patients or images, the interval is about as wide.
    assert width(independent, patients) == pytest.approx(width(independent, by_image), rel=0.35)
    # Identical cells within a patient: 20 draws, not 200 — resampling patients sees it, about sqrt(10) wider.
    assert width(identical, patients) > 2.2 * width(identical, by_image)
    assert width(identical, patients) > 2.2 * width(independent, patients)


def test_paired_difference_sees_a_small_consistent_gain_that_unpaired_intervals_overlap():
    generator = np.random.default_rng(4)
    base = generator.normal(0.5, 0.2, 300)
    better = base + 0.01 + generator.normal(0, 0.005, 300)  # always ~0.01 higher on the same images
    resampler = Resampler.draw(range(300), "image", 2000, seed=0)
    first, second = resampler.mean(base), resampler.mean(better)
    a, b = interval(first), interval(second)
    assert a[1] > b[0]  # the two intervals overlap ...
    assert excludes_zero(second - first)  # ... yet the paired difference is clearly above 0
    noise = base + generator.normal(0, 0.005, 300)
    assert excludes_zero(resampler.mean(noise) - first) is False


def test_seeded_and_nan_aware():
    values = np.array([1.0, np.nan, 0.0, 1.0, np.nan, 1.0])
    one = Resampler.draw(["a", "a", "b", "c", "c", "d"], "patient", 500, seed=7)
    two = Resampler.draw(["a", "a", "b", "c", "c", "d"], "patient", 500, seed=7)
    np.testing.assert_array_equal(one.mean(values), two.mean(values))
    assert one.units == 4 and one.describe()["unit"] == "patient"
    assert interval(one.mean(np.full(6, np.nan))) is None
    replicates = one.mean(values)
    assert np.nanmin(replicates) >= 0 and np.nanmax(replicates) <= 1


def test_classification_replicates_centre_on_the_figures():
    generator = np.random.default_rng(2)
    truth = generator.integers(0, 2, 500)
    predicted = np.where(generator.random(500) < 0.9, truth, 1 - truth)
    resampler = Resampler.draw(range(500), "image", 2000, seed=1)
    reps = classification_replicates(resampler, truth, predicted, 2)
    accuracy = float((truth == predicted).mean())
    low, high = interval(reps["accuracy"])
    assert low < accuracy < high and high - low < 0.07
    tp = ((truth == 1) & (predicted == 1)).sum()
    precision = tp / (predicted == 1).sum()
    low, high = interval(reps["precision/1"])
    assert low < precision < high
    assert set(reps) >= {"f1/0", "f1/1", "f1/macro", "recall/weighted"}
