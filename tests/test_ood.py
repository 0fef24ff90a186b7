"""Is this picture like the training data? The scores' maths, the threshold, what models and commands carry."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cell_image, face_image

from wtl import names
from wtl.checkpoints.io import save_checkpoint
from wtl.checkpoints.loading import load_model
from wtl.data.images import load_batch
from wtl.maps.explain import explain
from wtl.metrics import ood
from wtl.metrics.proportion import wilson_interval
from wtl.nets.seed import Architecture, Network
from wtl.plot.draw import draw

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "models" / "bundled"


def test_mahalanobis_is_the_nearest_class_distance_under_the_precision() -> None:
    means = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    precision = torch.tensor([[1.0, 0.0], [0.0, 0.25]])  # variance 4 along the second axis
    features = torch.tensor([[0.0, 2.0], [3.0, 0.0], [10.0, 10.0]])
    # (0, 2): class 0 at 2^2 / 4 = 1; (3, 0): class 1 at 1; (10, 10): class 1 at 36 + 25.
    assert ood.mahalanobis(features, means, precision).tolist() == pytest.approx([1.0, 1.0, 61.0])


def test_fitted_gaussians_recover_means_and_covariance() -> None:
    generator = torch.Generator().manual_seed(0)
    scale = torch.tensor([1.0, 3.0, 0.5])
    labels = torch.arange(6000) % 2
    centres = torch.tensor([[0.0, 0.0, 0.0], [5.0, -2.0, 1.0]])
    features = centres[labels] + torch.randn(6000, 3, generator=generator) * scale
    means, precision = ood.fit_gaussians(features, labels, 2, shrinkage=0.0)
    assert torch.allclose(means, centres, atol=0.1)
    assert torch.allclose(torch.linalg.inv(precision.double()).diagonal().float(), scale**2, rtol=0.08)
    # A class without pictures takes the overall mean instead of NaN.
    means, _ = ood.fit_gaussians(features[labels == 0], labels[labels == 0], 3)
    assert torch.isfinite(means).all()


def test_energy_is_minus_logsumexp() -> None:
    logits = torch.tensor([[2.0, 0.0], [-1.0, -1.0]])
    assert ood.energy(logits).tolist() == pytest.approx([-math.log(math.exp(2) + 1), 1 - math.log(2)])


def test_the_every_block_score_is_the_geometric_mean_of_the_distances_relative_to_their_thresholds() -> None:
    distances = [torch.tensor([1.0, 9.0]), torch.tensor([30.0, 10.0])]
    scores = ood.scores_of(distances, torch.zeros(2, 2), [2.0, 20.0])
    # Ratios (0.5, 1.5) and (4.5, 0.5): their geometric means.
    assert scores["mahalanobis"].tolist() == pytest.approx([(0.5 * 1.5) ** 0.5, (4.5 * 0.5) ** 0.5])
    assert scores["mahalanobis_last"].tolist() == [30.0, 10.0]


def test_threshold_is_the_quantile() -> None:
    scores = torch.arange(101, dtype=torch.float32)
    assert ood.quantile_threshold(scores, 0.99) == pytest.approx(99.0)
    with pytest.raises(ValueError):
        ood.quantile_threshold(torch.tensor([]))


def test_wilson_interval_matches_the_readme_figure() -> None:
    low, high = wilson_interval(578, 600)
    assert (round(100 * low, 1), round(100 * high, 1)) == (94.5, 97.6)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == pytest.approx(1.0)


def _cells(count: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    pictures = [np.asarray(cell_image(rng, bool(i % 2), 32)) for i in range(count)]
    return torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255


def _faces(count: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    pictures = [np.asarray(face_image(rng, i % 2, 32)) for i in range(count)]
    return torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255


def _fitted(network: torch.nn.Module) -> ood.OODStatistics:
    train, val = _cells(200, 0), _cells(100, 1)
    labels = torch.arange(200) % 2
    return ood.fit(network, [(train, labels)], [(val, torch.arange(100) % 2)], 2)


def test_training_pictures_lie_below_the_threshold_and_others_above() -> None:
    torch.manual_seed(0)
    network = Network(architecture=Architecture(2, 3, 8)).eval()
    statistics = _fitted(network)
    assert statistics.chosen_on == "validation split, 100 pictures" and statistics.quantile == ood.QUANTILE
    train = ood.score_images(network, statistics, _cells(200, 0))
    assert float((~train.flagged).float().mean()) >= 0.95  # the bar for training pictures
    fresh = ood.score_images(network, statistics, _cells(100, 7))  # new cells of the same kind
    assert float(fresh.flagged.float().mean()) <= 0.05
    noise = ood.score_images(network, statistics, _faces(100, 3))  # no cell at all
    assert float(noise.flagged.float().mean()) >= 0.95
    # Without validation pictures the thresholds come from the training pictures and say so.
    alone = ood.fit(network, [(_cells(200, 0), torch.arange(200) % 2)], None, 2)
    assert "no validation split" in alone.chosen_on


def test_statistics_travel_in_a_checkpoint_and_beside_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = Network(architecture=Architecture(2, 3, 8)).eval()
    statistics = _fitted(network)
    inside = tmp_path / "model_malaria_last.pt"
    save_checkpoint({"net_state_dict": network.state_dict(), "image_size": 32, "ood": statistics.to_dict()}, inside)
    beside = tmp_path / "other" / "model_malaria_last.best.pt"
    beside.parent.mkdir()
    save_checkpoint({"net_state_dict": network.state_dict(), "image_size": 32}, beside)
    assert load_model(beside).ood is None
    statistics.save_npz(names.ood_file(beside))
    assert names.ood_file(beside).name == "model_malaria_last.ood.npz"
    for path in (inside, beside):
        loaded = ood.statistics_of(load_model(path).ood)
        assert loaded is not None
        assert loaded.thresholds == pytest.approx(statistics.thresholds) and loaded.score == statistics.score
        assert len(loaded.precisions) == 2 and loaded.block_thresholds == pytest.approx(statistics.block_thresholds)
        assert all(torch.allclose(a, b) for a, b in zip(loaded.precisions, statistics.precisions))


def test_the_result_title_and_npz_say_which_pictures_are_unlike(tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = Network(architecture=Architecture(2, 3, 8)).eval()
    path = tmp_path / "model_malaria_last.pt"
    save_checkpoint({"net_state_dict": network.state_dict(), "image_size": 32, "ood": _fitted(network).to_dict()}, path)
    model = load_model(path)
    pictures = torch.cat([_cells(2, 5), _faces(1, 5)])
    result = ood.assess(explain(model, pictures))
    assert result.out_of_distribution is not None and result.ood_score is not None
    assert result.out_of_distribution.tolist() == [False, False, True]
    assert bool((result.ood_score[:2] < result.ood_threshold).all()) and result.ood_method == "mahalanobis"
    written = draw(result, tmp_path / "out", save_npz=True)
    numbers = [np.load(p.with_suffix(".npz")) for p in written]
    assert [bool(n["out_of_distribution"]) for n in numbers] == [False, False, True]
    assert float(numbers[2]["ood_score"]) == pytest.approx(float(result.ood_score[2]))
    # A model without statistics leaves the result as it was: no judgement, no keys.
    bare = tmp_path / "bare.pt"
    save_checkpoint({"net_state_dict": network.state_dict(), "image_size": 32}, bare)
    plain = ood.assess(explain(load_model(bare), pictures))
    assert plain.out_of_distribution is None
    assert "out_of_distribution" not in np.load(draw(plain, tmp_path / "bare", save_npz=True)[0].with_suffix(".npz"))


@pytest.mark.parametrize(
    "name", ["model_malaria_last", "model_malaria_every_single_loss", "model_malaria_every_multi_loss"]
)
def test_bundled_malaria_models_pass_demo_cells_and_flag_noise_faces(name: str) -> None:
    model = load_model(BUNDLED / f"{name}.pt")
    statistics = ood.statistics_of(model.ood)
    assert statistics is not None, f"{name}: no {names.ood_file(BUNDLED / name).name}"
    assert "training split" in statistics.fitted_on and "validation split" in statistics.chosen_on
    cells = sorted((REPO / "data" / "demo").glob("*/*.png"))
    judged = ood.score_images(model.network, statistics, load_batch(cells, 128, model.preprocess))
    assert int(judged.flagged.sum()) <= 1  # the demo cells are of patients the models never trained on
    noise = ood.score_images(model.network, statistics, torch.nn.functional.interpolate(_faces(16, 2), 128))
    assert bool(noise.flagged.all())


def test_bundled_gender_model_flags_cells() -> None:
    model = load_model(BUNDLED / "model_gender_last.pt")
    statistics = ood.statistics_of(model.ood)
    assert statistics is not None
    cells = sorted((REPO / "data" / "demo").glob("*/*.png"))
    judged = ood.score_images(model.network, statistics, load_batch(cells, 128, model.preprocess))
    # The bar, on the 20 demo cells: at least 95 % flagged (the README gives the rate on 5,000 cells).
    assert int(judged.flagged.sum()) >= 0.95 * len(cells)
