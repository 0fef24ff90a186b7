"""Evaluation numbers on synthetic cells whose parasite is where we put it; and the charts of them."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure
from torch import nn

from model_network import Network, NetworkMultiLoss
from wtl.evaluation import compare, driver, galleries, inputs, tables
from wtl.evaluation.result import EvaluationResult, ImageRecord
from wtl.maps import methods as map_methods
from wtl.metrics import agreement, faithfulness, localisation, stain
from wtl.metrics import sanity as sanity_check
from wtl.plot import charts

SIZE = 64  # the smallest side at which Network's last block still has a 4 x 4 map
CLASSES = ["Uninfected", "Parasitized"]
PINK, PURPLE = np.array([220.0, 150.0, 170.0]), np.array([70.0, 20.0, 90.0])


# --------------------------------------------------------------------------- synthetic cells


@dataclass
class Cell:
    """A synthetic NIH-like cell: uint8 (3, S, S) image, label, and the parasite's centre (row, col) and radius."""

    image: torch.Tensor
    label: int
    centre: tuple[float, float] | None
    radius: float


def synthetic_cell(rng: np.random.Generator, infected: bool, size: int = SIZE) -> Cell:
    """A noisy pink disc on black; an infected one has a dark purple blob at a random place inside the disc."""
    rows, cols = np.mgrid[0:size, 0:size]
    centre = size / 2 + rng.uniform(-2, 2, size=2)
    radius = size * rng.uniform(0.36, 0.44)
    disc = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
    pixels = np.zeros((size, size, 3))
    pixels[disc] = PINK + rng.uniform(-15, 15, 3)
    blob, blob_radius = None, 0.0
    if infected:
        blob_radius = size / 12 * rng.uniform(0.8, 1.2)
        angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(0, radius - blob_radius - 3)
        where = centre + distance * np.array([np.sin(angle), np.cos(angle)])
        pixels[(rows - where[0]) ** 2 + (cols - where[1]) ** 2 <= blob_radius**2] = PURPLE
        blob = (float(where[0]), float(where[1]))
    pixels += rng.uniform(-15, 15, size=pixels.shape) * disc[..., None]
    image = torch.from_numpy(np.clip(pixels, 0, 255).round().astype(np.uint8)).permute(2, 0, 1).contiguous()
    return Cell(image, int(infected), blob, blob_radius)


def cell_set(count: int, seed: int, size: int = SIZE) -> list[Cell]:
    """Alternating Uninfected (0) and Parasitized (1) cells."""
    rng = np.random.default_rng(seed)
    return [synthetic_cell(rng, i % 2 == 1, size) for i in range(count)]


def as_dataset(cells: list[Cell]) -> list[tuple[torch.Tensor, int]]:
    """(uint8 image, label) pairs, as model_data.MalariaSet yields them."""
    return [(cell.image, cell.label) for cell in cells]


@dataclass
class Loaded:
    """A weights.LoadedModel stand-in: the four fields evaluate() reads."""

    network: nn.Module
    kind: str = "last"
    class_names: list[str] | None = None
    image_size: int = SIZE

    def __post_init__(self) -> None:
        self.class_names = list(self.class_names or CLASSES)


def _identity_batch_norm(bn: nn.BatchNorm2d) -> None:
    bn.weight.fill_(1.0)
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)


@torch.no_grad()
def purple_detector() -> Network:
    """A hand-built Network that is right for the right reason: channel 0 finds purple, the head counts it.

    Block 1's conv puts (R + B) / 2 - 2 G (averaged over 3 x 3) into channel 0: negative on
    pink and black, positive on Giemsa purple; blocks 2-4 pass channel 0 on unchanged
    (max-pooled) and the classifier reads only that channel.
    """
    network = Network()
    for parameter in network.parameters():
        parameter.zero_()
    features = network.features
    convs = [features[0].seq[0], features[2].seq[0], features[4].seq[0], features[6]]
    for bn in (features[0].seq[2], features[2].seq[2], features[4].seq[2], features[8]):
        _identity_batch_norm(bn)
    convs[0].weight[0, :, 1:4, 1:4] = torch.tensor([0.5, -2.0, 0.5])[:, None, None] / 9
    convs[0].bias[0] = -0.02
    for conv in convs[1:]:
        conv.weight[0, 0, 2, 2] = 1.0
    head = network.classifier[-1]
    head.weight[1, 0], head.weight[0, 0] = 300.0, -300.0
    head.bias[1], head.bias[0] = -1.0, 1.0
    return network.eval()


def scramble_convolutions(network: nn.Module, seed: int = 0) -> nn.Module:
    """The same model with every conv re-initialised (the cascading-randomisation sanity check)."""
    broken = copy.deepcopy(network)
    torch.manual_seed(seed)
    for module in broken.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    return broken.eval()


@pytest.fixture(scope="module")
def cells() -> list[Cell]:
    """24 test cells, 12 of them Parasitized with a known parasite."""
    return cell_set(24, seed=1)


# --------------------------------------------------------------------------- stain mask


def test_stain_mask_covers_the_purple_blob_and_nothing_else() -> None:
    for cell in cell_set(20, seed=3):
        mask = stain.stain_mask(cell.image.float() / 255)
        assert mask.dtype == torch.bool and mask.shape == (SIZE, SIZE)
        if cell.centre is None:
            assert not mask.any(), "an uninfected cell got a stain mask"
            continue
        rows, cols = torch.nonzero(mask, as_tuple=True)
        distance = torch.hypot(rows - cell.centre[0], cols - cell.centre[1])
        assert distance.max() <= cell.radius + 1.5, "stain found off the parasite"
        assert len(rows) >= 0.7 * math.pi * cell.radius**2, "most of the parasite missed"


def test_stain_mask_accepts_uint8_and_refuses_other_shapes() -> None:
    cell = cell_set(2, seed=4)[1]
    assert torch.equal(stain.stain_mask(cell.image), stain.stain_mask(cell.image.float() / 255))
    with pytest.raises(ValueError):
        stain.stain_mask(cell.image[None].float())
    with pytest.raises(ValueError):
        stain.stain_mask(cell.image[:1].float())


def test_stain_mask_is_empty_without_a_cell_a_dark_spot_or_enough_pixels() -> None:
    assert not stain.stain_mask(torch.zeros(3, 32, 32)).any()
    assert not stain.stain_mask(torch.ones(3, 32, 32)).any()
    cell = cell_set(2, seed=5)[0].image.float() / 255  # uninfected
    speck = cell.clone()
    speck[:, 30:32, 30:31] = torch.tensor(PURPLE / 255, dtype=torch.float32)[:, None, None]
    assert not stain.stain_mask(speck).any(), "2 purple pixels are noise, not a parasite"
    pale = cell.clone()  # magenta but as bright as the cell: a stain absorbs light, this is not one
    pale[:, 26:34, 26:34] = torch.tensor([235, 110, 235], dtype=torch.float32)[:, None, None] / 255
    assert not stain.stain_mask(pale).any()
    spot = cell.clone()
    spot[:, 30:34, 30:34] = torch.tensor(PURPLE / 255, dtype=torch.float32)[:, None, None]
    assert stain.stain_mask(spot)[30:34, 30:34].all()


# --------------------------------------------------------------------------- pointing game


def test_pointing_hit_measures_from_the_peak_to_the_nearest_mask_pixel() -> None:
    heat = torch.zeros(20, 20)
    heat[10, 10] = 1.0
    mask = torch.zeros(20, 20, dtype=torch.bool)
    assert localisation.pointing_hit(heat, mask, 15) is None
    mask[10, 15] = True  # 5 px to the right
    assert localisation.pointing_hit(heat, mask, 5.0) is True
    assert localisation.pointing_hit(heat, mask, 4.9) is False
    mask[13, 14] = True  # 5 px diagonally (3-4-5), and also the nearest now
    assert localisation.pointing_hit(heat, mask, 5.0) is True
    mask[:] = False
    mask[10, 10] = True
    assert localisation.pointing_hit(heat, mask, 0.0) is True
    with pytest.raises(ValueError):
        localisation.pointing_hit(heat, mask[:10], 3)


def test_pointing_hit_takes_the_first_of_equal_peaks() -> None:
    heat = torch.zeros(8, 8)  # flat: argmax is the first pixel, (0, 0)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[7, 7] = True
    assert localisation.pointing_hit(heat, mask, 3) is False
    mask[1, 1] = True
    assert localisation.pointing_hit(heat, mask, 1.5) is True


# --------------------------------------------------------------------------- faithfulness


class CentreModel(nn.Module):
    """Logit 1 says how bright the central 8 x 8 square is: only that square matters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = 20 * (x[:, :, 12:20, 12:20].mean(dim=(1, 2, 3)) - 0.8)
        return torch.stack([torch.zeros_like(evidence), evidence], dim=1)


def test_deletion_and_insertion_reward_the_map_that_points_at_the_evidence() -> None:
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32) * 0.2
    images[:, :, 12:20, 12:20] = 1.0  # a bright centre: class 1 is confident, blurring it away kills that
    model = CentreModel()
    good = torch.rand(4, 32, 32) * 0.1
    good[:, 12:20, 12:20] += 1.0
    bad = torch.rand(4, 32, 32) * 0.1
    bad[:, :8, :8] += 1.0  # hot on a corner that does not matter
    good_del, good_ins = faithfulness.deletion_insertion(model, images, good, 1, grid=16)
    bad_del, bad_ins = faithfulness.deletion_insertion(model, images, bad, 1, grid=16)
    assert good_del.shape == good_ins.shape == (4,)
    assert ((good_del >= 0) & (good_del <= 1) & (good_ins >= 0) & (good_ins <= 1)).all()
    assert (good_del < bad_del - 0.3).all() and (good_ins > bad_ins + 0.3).all()
    assert (good_del < good_ins).all()


def test_deletion_insertion_of_an_image_does_not_depend_on_its_batch() -> None:
    torch.manual_seed(1)
    model = purple_detector()
    batch = torch.stack([cell.image for cell in cell_set(6, seed=6)]).float() / 255
    heat = torch.rand(6, SIZE, SIZE)
    together = faithfulness.deletion_insertion(model, batch, heat, 1, grid=4)
    alone = faithfulness.deletion_insertion(model, batch[3:4], heat[3:4], torch.tensor([1]), grid=4)
    torch.testing.assert_close(alone[0][0], together[0][3])
    torch.testing.assert_close(alone[1][0], together[1][3])


def test_faithfulness_refuses_bad_arguments_and_keeps_the_models_mode() -> None:
    model = purple_detector().train()
    images = torch.rand(2, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="steps"):
        faithfulness.deletion_insertion(model, images, torch.rand(2, SIZE, SIZE), 1, grid=0)
    with pytest.raises(ValueError, match="do not match"):
        faithfulness.deletion_insertion(model, images, torch.rand(2, 8, 8), 1)
    faithfulness.deletion_insertion(model, images, torch.rand(2, SIZE, SIZE), 1, grid=2)
    faithfulness.drop_and_increase(model, images, torch.rand(2, SIZE, SIZE), 1)
    assert all(module.training for module in model.modules())


def test_several_maps_get_the_curves_each_gets_alone_and_the_ends_are_asked_once() -> None:
    torch.manual_seed(3)
    model = purple_detector()
    batch = torch.stack([cell.image for cell in cell_set(4, seed=8)]).float() / 255
    maps = {"a": torch.rand(4, SIZE, SIZE), "b": torch.rand(4, SIZE, SIZE), "c": torch.rand(4, SIZE, SIZE)}
    calls: list[int] = []
    handle = model.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    together = faithfulness.deletion_insertion_of_maps(model, batch, maps, 1)
    handle.remove()
    for key, heat in maps.items():
        alone = faithfulness.deletion_insertion(model, batch, heat, 1)
        torch.testing.assert_close(together[key][0], alone[0])
        torch.testing.assert_close(together[key][1], alone[1])
    # The image and its blurred copy once for the three maps, then each inner node's 2 x 3 x 4 pictures at once.
    inner = len(faithfulness.FRACTIONS) - 2
    assert calls == [2 * 4] + [2 * 3 * 4] * inner
    drops = faithfulness.drop_and_increase_of_maps(model, batch, maps, 1)
    for key, heat in maps.items():
        alone_drop = faithfulness.drop_and_increase(model, batch, heat, 1)
        torch.testing.assert_close(drops[key][0], alone_drop[0])
        assert torch.equal(drops[key][1], alone_drop[1])


def test_the_default_grid_is_fine_near_zero_and_a_grid_must_rise_from_0_to_1() -> None:
    nodes = faithfulness.fractions_of()
    assert nodes == faithfulness.FRACTIONS and nodes[0] == 0 and nodes[-1] == 1
    assert all(b > a for a, b in zip(nodes, nodes[1:])) and nodes[1] <= 1 / 64
    assert faithfulness.fractions_of(4) == (0, 0.25, 0.5, 0.75, 1)
    assert faithfulness.fractions_of([0, 0.1, 1]) == (0, 0.1, 1)
    for bad in ([0.1, 1], [0, 0.5, 0.5, 1], [0, 0.9], [0]):
        with pytest.raises(ValueError, match="rises from 0 to 1"):
            faithfulness.fractions_of(bad)
    # Whatever the map, deletion runs from the picture to its blurred copy and insertion back.
    torch.manual_seed(4)
    model, images = CentreModel(), torch.rand(2, 3, 32, 32)
    curves = faithfulness.curves_of_maps(model, images, {0: torch.rand(2, 32, 32)}, 1, [0, 0.5, 1])[0]
    whole, gone = (model(x).softmax(1)[:, 1] for x in (images, faithfulness.blurred(images)))
    assert curves.shape == (2, 3, 2)
    for got, expected in ((curves[0, 0], whole), (curves[0, -1], gone), (curves[1, 0], gone), (curves[1, -1], whole)):
        torch.testing.assert_close(got, expected)


def test_average_drop_and_increase_follow_the_grad_cam_plus_plus_definitions() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    images, heat = torch.rand(8, 3, 16, 16), torch.rand(8, 16, 16)
    drop, increased = faithfulness.drop_and_increase(model, images, torch.ones(8, 16, 16), 1)
    assert float(drop.mean()) == 0.0 and not increased.any()
    with torch.no_grad():
        full = model(images).softmax(1)[:, 1]
        explained = model(images * heat[:, None]).softmax(1)[:, 1]
    drop, increased = faithfulness.drop_and_increase(model, images, heat, 1)
    torch.testing.assert_close(drop, (full - explained).clamp_min(0) / full * 100)
    assert torch.equal(increased, explained > full)


def test_blurred_keeps_shape_and_colour_for_any_size() -> None:
    for side in (5, 16, 64, 129):
        image = torch.rand(2, 3, side, side)
        out = faithfulness.blurred(image)
        assert out.shape == image.shape
        torch.testing.assert_close(out.mean(), image.mean(), atol=0.03, rtol=0)


# --------------------------------------------------------------------------- evaluate


def test_a_right_model_points_at_the_parasite_and_a_scrambled_one_does_not(cells: list[Cell]) -> None:
    data = as_dataset(cells)
    methods = ["cam", "gradcam", "hirescam"]
    right = driver.evaluate(Loaded(purple_detector()), data, methods, progress=False, grid=4)
    scrambled = Loaded(scramble_convolutions(purple_detector()))
    wrong = driver.evaluate(scrambled, data, methods, progress=False, faithfulness=False)
    json.dumps(right.to_json())  # JSON-able as is
    assert right.to_json()["classification"]["accuracy"] == 1.0
    assert right.to_json()["classification"]["confusion_matrix"] == [[12, 0], [0, 12]]
    assert right.to_json()["explained_class"] == "Parasitized"
    for method in methods:
        good, bad = right.to_json()["methods"][method]["last"], wrong.to_json()["methods"][method]["last"]
        assert good["pointing_counted"] == 12 and good["images"] == 12
        assert good["pointing_15px"] >= 0.9 and good["pointing_8px"] >= 0.9
        assert bad["pointing_8px"] <= 0.3 and bad["pointing_8px"] <= good["pointing_8px"] - 0.5
        assert good["deletion_auc"] < good["insertion_auc"]
        assert bad["images"] == 12 and bad["deletion_auc"] is None  # faithfulness switched off
    text = tables.format_table(right)
    assert "gradcam" in text and "100.0%" in text and "accuracy 100.00% [100.0, 100.0] on 24 images" in text


def test_evaluate_every_block_model_reports_each_block_and_the_fused_map(cells: list[Cell]) -> None:
    torch.manual_seed(0)
    network = NetworkMultiLoss().eval()
    model, data = Loaded(network, kind="every"), as_dataset(cells)
    result = driver.evaluate(model, data, ["cam", "layercam"], batch_size=3, max_images=6, grid=2, progress=False)
    json.dumps(result.to_json())
    assert result.to_json()["classification"]["images"] == 6
    assert list(result.to_json()["blocks"]) == ["block1", "block2", "block3", "block4"]
    for method in ("cam", "layercam"):
        assert list(result.to_json()["methods"][method]) == ["block1", "block2", "block3", "block4", "fused"]
        assert all(view["images"] == 3 for view in result.to_json()["methods"][method].values())
    # The last block's own head is the network's prediction.
    assert (
        result.to_json()["blocks"]["block4"]["confusion_matrix"]
        == result.to_json()["classification"]["confusion_matrix"]
    )
    assert "block3" in tables.format_table(result)


def test_evaluate_without_parasites_explains_the_true_class_of_every_image(cells: list[Cell]) -> None:
    faces = Loaded(purple_detector(), class_names=["Female", "Male"])
    result = driver.evaluate(faces, as_dataset(cells)[:4], ["gradcam"], progress=False, grid=2)
    view = result.to_json()["methods"]["gradcam"]["last"]
    assert result.to_json()["explained_class"] == "true class"
    assert view["images"] == 4 and view["pointing_counted"] == 0 and view["pointing_15px"] is None
    assert "-" in tables.format_table(result)
    with pytest.raises(ValueError, match="unknown method"):
        driver.evaluate(faces, as_dataset(cells), ["gradcam", "guided"], progress=False)
    with pytest.raises(ValueError, match="no images"):
        driver.evaluate(faces, [], ["gradcam"], progress=False)


class MapStyle(torch.utils.data.Dataset):
    """A torch Dataset as model_data's are: __len__ and __getitem__, no __iter__ of its own."""

    def __init__(self, cells: list[Cell]) -> None:
        self.cells = cells

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.cells[index].image, self.cells[index].label


def test_evaluate_reads_map_style_data_sets_and_plain_iterables_alike(cells: list[Cell]) -> None:
    model = Loaded(purple_detector())

    def run(dataset: inputs.Images) -> EvaluationResult:
        return driver.evaluate(model, dataset, ["cam"], max_images=6, batch_size=4, progress=False, faithfulness=False)

    from_dataset = run(MapStyle(cells))
    from_generator = run(pair for pair in as_dataset(cells))
    assert from_dataset.to_json() == from_generator.to_json()
    training = purple_detector().train()
    driver.evaluate(Loaded(training), as_dataset(cells)[:2], ["cam"], progress=False, faithfulness=False)
    assert training.training, "evaluate must hand the model back in the mode it found it"
    assert from_dataset.to_json()["classification"]["images"] == 6


def _train(cells: list[Cell], steps: int = 40, seed: int = 0) -> Network:
    """A Network trained for a few dozen Adam steps, then its BatchNorm statistics recomputed on the data."""
    torch.manual_seed(seed)
    images = torch.stack([cell.image for cell in cells]).float() / 255
    labels = torch.tensor([cell.label for cell in cells])
    network = Network()
    optimiser = torch.optim.Adam(network.parameters(), lr=2e-3)
    network.train()
    for _ in range(steps):
        pick = torch.randint(0, len(images), (16,))
        loss = F.cross_entropy(network(images[pick]), labels[pick])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    # A few dozen steps leave BN's running averages far from the data's statistics: measure them
    # exactly (momentum None = a plain average) so eval mode predicts what training learned.
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        for start in range(0, len(images), 32):
            network(images[start : start + 32])
    return network.eval()


@pytest.mark.slow
def test_a_trained_network_looks_at_the_parasite(cells: list[Cell]) -> None:
    network = _train(cell_set(128, seed=2))
    data = as_dataset(cells)
    methods = ["cam", "gradcam", "gradcam++", "layercam"]
    trained = driver.evaluate(Loaded(network), data, methods, progress=False, grid=8)
    scrambled = driver.evaluate(
        Loaded(scramble_convolutions(network)), data, methods, progress=False, faithfulness=False
    )
    assert trained.to_json()["classification"]["accuracy"] >= 0.9
    for method in methods:
        good, bad = trained.to_json()["methods"][method]["last"], scrambled.to_json()["methods"][method]["last"]
        assert good["pointing_15px"] >= 0.8, method
        assert good["pointing_8px"] >= bad["pointing_8px"] + 0.4, method
    cam = trained.to_json()["methods"]["cam"]["last"]
    assert cam["deletion_auc"] < cam["insertion_auc"]


# --------------------------------------------------------------------------- comparing models


def test_compare_models_agrees_with_itself_and_not_with_a_scrambled_copy(cells: list[Cell]) -> None:
    right = Loaded(purple_detector())
    scrambled = Loaded(scramble_convolutions(right.network))
    models = {"right": right, "copy": Loaded(copy.deepcopy(right.network)), "scrambled": scrambled}
    result = compare.compare_models(models, as_dataset(cells)[:8], "cam", batch_size=3, progress=False)
    numbers = result.to_json()
    json.dumps(numbers)
    assert numbers["images"] == 8 and numbers["images_per_class"] == {"Uninfected": 4, "Parasitized": 4}
    same = numbers["pairs"]["right vs copy"]
    assert same["spearman"] == pytest.approx(1.0) and same["top10_iou"] == pytest.approx(1.0)
    # The uninfected cells' maps are flat (no purple anywhere): rho is undefined there, so not averaged.
    assert same["spearman_images"] == 4
    assert numbers["pairs"]["right vs scrambled"]["top10_iou"] < 0.5
    assert same["average_map_spearman"]["Parasitized"] == pytest.approx(1.0)
    scrambled_average = numbers["pairs"]["right vs scrambled"]["average_map_spearman"]["Parasitized"]
    expected = agreement.spearman(
        torch.from_numpy(result.maps["right"]["Parasitized"]),
        torch.from_numpy(result.maps["scrambled"]["Parasitized"]),
    )
    assert scrambled_average == pytest.approx(expected) and scrambled_average < 0.99
    assert set(result.maps) == set(models)
    for maps in result.maps.values():
        assert set(maps) == {"Uninfected", "Parasitized"}
        assert all(isinstance(m, np.ndarray) and m.shape == (SIZE, SIZE) for m in maps.values())
    np.testing.assert_allclose(
        result.std["Parasitized"],
        np.stack([result.maps[name]["Parasitized"] for name in models]).std(axis=0),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="two models"):
        compare.compare_models({"right": right}, as_dataset(cells), progress=False)


def test_compare_models_takes_a_list_and_a_gradient_method(cells: list[Cell]) -> None:
    first, second = Loaded(purple_detector()), Loaded(purple_detector())
    result = compare.compare_models([first, second], as_dataset(cells)[:4], "gradcam", progress=False)
    assert list(result.pairs) == ["model 0 vs model 1"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=3, max_size=30))
def test_spearman_is_symmetric_and_one_for_a_monotone_copy(values: list[int]) -> None:
    a = torch.tensor(values, dtype=torch.float32)
    b = a * 3 + 1  # strictly increasing map of a: the same ranks
    if len(set(values)) == 1:
        assert math.isnan(agreement.spearman(a, b))  # undefined for a constant map
        return
    assert agreement.spearman(a, b) == pytest.approx(1.0)
    assert agreement.spearman(a, -a) == pytest.approx(-1.0)
    c = torch.roll(a, 1)
    assert agreement.spearman(a, c) == pytest.approx(agreement.spearman(c, a))


def test_rank_averages_ties() -> None:
    assert agreement.rank(torch.tensor([10.0, 20.0, 10.0, 30.0])).tolist() == [1.5, 3.0, 1.5, 4.0]


def test_top_overlap() -> None:
    a = torch.arange(100.0)
    assert agreement.top_overlap(a, a) == 1.0
    assert agreement.top_overlap(a, -a) == 0.0
    assert agreement.top_overlap(a, torch.cat([a[:95], a[95:] - 1000])) == pytest.approx(5 / 15)


# --------------------------------------------------------------------------- charts


def _png(figure: Figure) -> bytes:
    stream = io.BytesIO()
    figure.savefig(stream, format="png", dpi=40)
    return stream.getvalue()


def test_charts_draw_an_evaluation_and_a_comparison(cells: list[Cell]) -> None:
    data = as_dataset(cells)[:4]
    result = driver.evaluate(Loaded(purple_detector()), data, ["cam", "gradcam"], progress=False, grid=2)
    figure = charts.metrics_chart(result)
    assert isinstance(figure, Figure) and len(figure.axes) == 2
    assert _png(figure).startswith(b"\x89PNG")
    comparison = compare.compare_models(
        {"a": Loaded(purple_detector()), "b": Loaded(scramble_convolutions(purple_detector()))},
        as_dataset(cells)[:4],
        progress=False,
    )
    figure = charts.compare_figure(comparison)
    assert _png(figure).startswith(b"\x89PNG")
    with pytest.raises(ValueError):
        charts.metrics_chart(dataclasses.replace(result, methods={}))


# --------------------------------------------------------------------------- distances, galleries, sanity check


def test_peak_distance_and_the_4px_tolerance() -> None:
    assert localisation.POINTING_TOLERANCES == (15.0, 8.0, 4.0, 0.0)
    heat = torch.zeros(20, 20)
    heat[10, 10] = 1.0
    mask = torch.zeros(20, 20, dtype=torch.bool)
    assert localisation.peak_distance(heat, mask) is None
    mask[13, 14] = True  # 3-4-5
    assert localisation.peak_distance(heat, mask) == 5.0
    assert localisation.pointing_hit(heat, mask, 4.0) is False and localisation.pointing_hit(heat, mask, 5.0) is True
    mask[10, 10] = True
    assert localisation.peak_distance(heat, mask) == 0.0
    both = localisation.peak_distances(torch.stack([heat, heat]), torch.stack([mask, torch.zeros_like(mask)]))
    assert both[0] == 0.0 and math.isnan(both[1])


def confident(network: Network) -> Network:
    """The purple detector with a head bias that makes a clean cell confidently Uninfected (p = 0.98, not 0.88)."""
    with torch.no_grad():
        head = network.classifier[-1]
        head.bias[1], head.bias[0] = -2.0, 2.0
    return network


def record(label: str, prediction: str, probability: float, area: int, distance: float | None = None) -> ImageRecord:
    return ImageRecord(None, label, prediction, probability, area, distance)


def test_the_suspect_label_rule_and_its_thresholds() -> None:
    pixels, sizeable = 128 * 128, math.ceil(galleries.SUSPECT_STAIN_FRACTION * 128 * 128)
    parasitized, uninfected = 1, 0
    # Labelled Parasitized: suspect only without any stain and with a confident Uninfected prediction.
    assert galleries.suspect_label(parasitized, uninfected, 0.95, 0, pixels, parasitized)
    assert galleries.suspect_label(parasitized, uninfected, 0.95, 12, pixels, parasitized) is None
    assert galleries.suspect_label(parasitized, uninfected, 0.85, 0, pixels, parasitized) is None
    assert galleries.suspect_label(parasitized, parasitized, 0.99, 0, pixels, parasitized) is None
    # Labelled Uninfected: suspect with a sizeable stain and a confident Parasitized prediction.
    assert galleries.suspect_label(uninfected, parasitized, 0.9, sizeable, pixels, parasitized)
    assert galleries.suspect_label(uninfected, parasitized, 0.9, sizeable - 1, pixels, parasitized) is None
    assert galleries.suspect_label(uninfected, parasitized, 0.89, 10 * sizeable, pixels, parasitized) is None


def test_galleries_sort_worst_first() -> None:
    records = [
        record("Parasitized", "Uninfected", 0.7, 40),
        record("Parasitized", "Uninfected", 0.99, 0),
        record("Uninfected", "Parasitized", 0.95, 500),
        record("Uninfected", "Parasitized", 0.95, 900),
        record("Parasitized", "Parasitized", 0.99, 50, distance=9.5),
        record("Parasitized", "Parasitized", 0.99, 50, distance=30.0),
        record("Parasitized", "Parasitized", 0.99, 50, distance=8.0),  # exactly 8 px: a hit, not a miss
        record("Uninfected", "Uninfected", 0.99, 0),
    ]
    out = galleries.galleries(records, CLASSES, 128 * 128)
    assert [r.probability for r in out["misclassified"]] == [0.99, 0.95, 0.95, 0.7]
    assert [r.distance for r in out["map_misses"]] == [30.0, 9.5]
    assert [(r.label, r.stain_area) for r in out["suspect_labels"]] == [
        ("Parasitized", 0),
        ("Uninfected", 900),
        ("Uninfected", 500),
    ]
    assert all(r.reason for r in out["suspect_labels"])
    faces = galleries.galleries([record("Female", "Male", 0.99, 0)], ["Female", "Male"], 64 * 64)
    assert len(faces["misclassified"]) == 1 and faces["map_misses"] == faces["suspect_labels"] == []


def test_evaluate_finds_flipped_labels_and_keeps_a_record_per_image(cells: list[Cell]) -> None:
    data = as_dataset(cells)
    infected = next(i for i, (_, label) in enumerate(data) if label == 1)
    clean = next(i for i, (_, label) in enumerate(data) if label == 0)
    data[infected] = (data[infected][0], 0)  # a stained cell labelled Uninfected
    data[clean] = (data[clean][0], 1)  # a clean cell labelled Parasitized
    result = driver.evaluate(Loaded(confident(purple_detector())), data, ["cam"], progress=False, grid=2)
    json.dumps(result.to_json())
    records = result.to_json()["per_image"]
    assert len(records) == len(data)
    assert [r["label"] for r in records] == [CLASSES[label] for _, label in data]
    assert records[infected]["stain_area"] >= result.to_json()["gallery_rules"]["suspect_stain_area"]
    assert records[clean]["stain_area"] == 0
    assert all(r["file"] is None for r in records)  # a plain list has no file names
    suspects = {(r["label"], r["stain_area"]) for r in result.to_json()["suspect_labels"]}
    assert suspects == {("Uninfected", records[infected]["stain_area"]), ("Parasitized", 0)}
    assert len(result.to_json()["misclassified"]) == 2 and result.to_json()["map_misses"] == []
    assert result.to_json()["best_map"] == {"method": "cam", "view": "last"}
    distances = [r["distance"] for r in records if r["label"] == "Parasitized" and r["stain_area"]]
    assert distances and max(distances) <= 8.0
    assert result.to_json()["gallery_rules"]["suspect_confidence"] == galleries.SUSPECT_CONFIDENCE
    assert "2 suspect labels" in tables.format_table(result)
    assert result.to_json()["methods"]["cam"]["last"]["pointing_4px"] is not None


class Listed(MapStyle):
    """A data set that knows its files, as model_data's sets do (samples of (path, label))."""

    def __init__(self, cells: list[Cell]) -> None:
        super().__init__(cells)
        self.samples = [(f"/data/cell_{i}.png", cell.label) for i, cell in enumerate(cells)]


def test_evaluate_records_the_files_of_a_data_set_that_has_them(cells: list[Cell]) -> None:
    result = driver.evaluate(
        Loaded(purple_detector()), Listed(cells), ["cam"], max_images=5, progress=False, faithfulness=False
    )
    assert [r["file"] for r in result.to_json()["per_image"]] == [f"/data/cell_{i}.png" for i in range(5)]


def test_evaluate_fuses_by_the_rule_it_is_given_and_every_block_of_a_network(cells: list[Cell]) -> None:
    torch.manual_seed(0)
    model, data = Loaded(NetworkMultiLoss().eval(), kind="every"), as_dataset(cells)[:6]
    for rule in ("max", "confidence"):
        result = driver.evaluate(model, data, ["cam", "gradcam"], progress=False, faithfulness=False, fuse=rule)
        assert result.to_json()["fusion_rule"] == rule
        assert list(result.to_json()["methods"]["gradcam"]) == ["block1", "block2", "block3", "block4", "fused"]
        assert "fused: " + rule in tables.format_table(result)
    with pytest.raises(ValueError, match="unknown fusion rule"):
        driver.evaluate(model, data, ["cam"], progress=False, fuse="median")
    plain = Loaded(purple_detector())
    every = driver.evaluate(plain, data, ["cam", "gradcam"], progress=False, faithfulness=False, every_block=True)
    assert list(every.to_json()["methods"]["cam"]) == ["last"]  # a Network has no per-block heads for CAM
    assert list(every.to_json()["methods"]["gradcam"]) == ["block1", "block2", "block3", "block4", "fused"]


def centre_blob(network: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """A 'method' that ignores the model: the same centred Gaussian for every image."""
    side = images.shape[-1]
    offsets = torch.arange(side, dtype=torch.float32) - (side - 1) / 2
    blob = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * (side / 6) ** 2))
    return blob.expand(len(images), side, side).clone()


def test_the_randomisation_test_tells_a_map_of_the_model_from_a_map_of_nothing(cells: list[Cell]) -> None:
    network = purple_detector()
    before = copy.deepcopy(network.state_dict())
    images = torch.stack([cell.image for cell in cells if cell.label == 1][:8]).float() / 255
    methods = {"blob": centre_blob, **map_methods.heatmap_functions(["cam", "gradcam"])}
    rng_state = torch.get_rng_state()
    sanity = sanity_check.cascading_randomisation(network, images, torch.ones(8, dtype=torch.long), methods, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_state), "the test must not move the caller's random numbers"
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items()), "the model must stay trained"
    json.dumps(sanity.to_json())
    assert (
        sanity.to_json()["stages"] == ["head", "block4", "block3", "block2", "block1"]
        and sanity.to_json()["images"] == 8
    )
    assert all(rho == pytest.approx(1.0) for rho in sanity.to_json()["methods"]["blob"].values())
    for method in ("cam", "gradcam"):
        # Once the convolutions are random too, the maps have little to do with the trained ones.
        assert all(abs(sanity.to_json()["methods"][method][stage]) < 0.8 for stage in ("block3", "block2", "block1")), (
            method
        )
    again = sanity_check.cascading_randomisation(network, images, torch.ones(8, dtype=torch.long), methods, seed=0)
    assert again.to_json() == sanity.to_json()  # seeded


def test_randomisation_stages_cover_both_networks_top_down() -> None:
    multi = NetworkMultiLoss()
    stages = dict(sanity_check.randomisation_stages(multi))
    assert list(stages) == ["head", "block4", "block3", "block2", "block1"]
    assert stages["block1"] == [multi.conv1, multi.bn1] and multi.transform2 in stages["head"]
    generic = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    assert [name for name, _ in sanity_check.randomisation_stages(generic)] == ["3", "0"]


def test_evaluate_runs_the_sanity_check_on_a_sample_of_the_explained_images(cells: list[Cell]) -> None:
    torch.manual_seed(0)
    model = Loaded(NetworkMultiLoss().eval(), kind="every")
    result = driver.evaluate(
        model, as_dataset(cells), ["cam"], progress=False, faithfulness=False, sanity_images=5, batch_size=4
    )
    sanity = result.to_json()["sanity"]
    assert sanity["images"] == 5
    assert set(sanity["methods"]) == {
        "cam",
        "cam fused",
        "gradcam",
        "gradcam++",
        "xgradcam",
        "layercam",
        "hirescam",
    }
    assert "sanity check" in tables.format_table(result)
    assert driver.evaluate(model, as_dataset(cells)[:4], ["cam"], progress=False, grid=2).sanity is None


def test_per_image_records_stay_in_order_when_the_first_batches_explain_nothing(cells: list[Cell]) -> None:
    # model_data's sets list every Uninfected cell first: the first batches have no cell to explain.
    data = sorted(as_dataset(cells), key=lambda pair: pair[1])
    result = driver.evaluate(Loaded(purple_detector()), data, ["cam"], batch_size=5, progress=False, faithfulness=False)
    records = result.to_json()["per_image"]
    assert [r["label"] for r in records] == [CLASSES[label] for _, label in data]
    assert all(r["distance"] is None for r in records if r["label"] == "Uninfected")
    assert all(r["distance"] is not None and r["distance"] <= 8 for r in records if r["label"] == "Parasitized")


def test_the_costly_sample_is_spread_evenly_over_the_pass_and_the_sample_is_100_by_default() -> None:
    """Costly images at even intervals: each tenth of the pass holds a tenth of them (a random order gave 40/60)."""
    labels = [i % 2 for i in range(2000)]

    class Listed(list):
        """A map-style set that lists its labels, as the data sets of wtl.data do."""

        @property
        def labels(self) -> list[int]:
            return [label for _, label in self]

    data = Listed((torch.zeros(3, 4, 4, dtype=torch.uint8), label) for label in labels)
    plan = driver._plan(data, driver.EvaluateOptions(), 1)
    assert plan.order is not None and plan.costly is not None
    assert sorted(plan.order) == list(range(2000)) and len(plan.costly) == plan.size == driver.COSTLY_SAMPLE == 100
    assert all(labels[i] == 1 for i in plan.costly)
    positions = sorted(plan.order.index(i) for i in plan.costly)
    assert [sum(1 for p in positions if k * 200 <= p < (k + 1) * 200) for k in range(10)] == [10] * 10
    # The images that are not costly keep their seeded random order between them.
    rest = [i for i in plan.order if i not in plan.costly]
    assert rest != sorted(rest)


def test_faithfulness_on_a_sample_is_faithfulness_on_those_images(cells: list[Cell]) -> None:
    model, data = Loaded(purple_detector()), as_dataset(cells)
    full = driver.evaluate(model, data, ["cam"], progress=False, grid=2, batch_size=5)
    everything = driver.evaluate(model, data, ["cam"], progress=False, grid=2, batch_size=5, faithful_images=99)
    some = driver.evaluate(model, data, ["cam"], progress=False, grid=2, batch_size=5, faithful_images=4)
    whole, same, part = (r.to_json()["methods"]["cam"]["last"] for r in (full, everything, some))
    assert whole["faithful_images"] == same["faithful_images"] == 12 and part["faithful_images"] == 4
    assert part["images"] == whole["images"] == 12 and part["pointing_8px"] == whole["pointing_8px"]
    for key in ("deletion_auc", "insertion_auc", "average_drop"):
        assert same[key] == pytest.approx(whole[key], rel=1e-5)
        assert part[key] is not None
    assert "sample of 4" in tables.format_table(some) and "sample of" not in tables.format_table(full)
