"""Deep dream, --channel, block-2 filters and --all-maps: what each promises, on small networks and through the CLI."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomise_batch_norm, run_cli

from wtl.checkpoints.loading import load_model
from wtl.data.images import load_image
from wtl.features import channels as channel_choice
from wtl.features import dream, stages
from wtl.features import view as channel_views
from wtl.nets.seed import Architecture, Network, NetworkMultiLoss
from wtl.plot import features as feature_figures

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "models" / "bundled" / "model_malaria_last.pt"
DEMO = sorted((REPO / "data" / "demo" / "Uninfected").glob("*.png"))


def small(kind: str = "last", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    architecture = Architecture(3, 3, 8)
    network = Network(architecture=architecture) if kind == "last" else NetworkMultiLoss(architecture=architecture)
    return randomise_batch_norm(network, seed).eval()


def picture(height: int = 40, width: int = 56, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["last", "every"])
def test_dream_raises_the_chosen_channels_and_keeps_the_size(kind: str) -> None:
    network = small(kind)
    image = 0.35 + 0.3 * picture()  # mid-grey noise: room to move both ways before the [0, 1] clamp
    channels = torch.tensor([1, 5])  # channel 5 is silent on it (its block output is negative everywhere)
    dreamed = dream.dream_channels(network, image, 2, channels, dream.Ascent(octaves=3, steps=10, lr=0.03))
    assert dreamed.image.shape == image.shape  # 40 x 56 stays 40 x 56
    assert float(dreamed.image.min()) >= 0.0 and float(dreamed.image.max()) <= 1.0
    before = dream.channel_means(network, image, 2, channels)
    after = dream.channel_means(network, dreamed.image, 2, channels)
    assert float(after.mean()) > 1.3 * float(before.mean()) > 0
    # The objective is the channels' mean before the ReLU: it rises for the silent channel too.
    assert dreamed.objective_after > dreamed.objective_before + 0.1
    # The same seed, the same dream; another seed jitters differently.
    again = dream.dream_channels(network, image, 2, channels, dream.Ascent(octaves=3, steps=10, lr=0.03))
    assert torch.equal(again.image, dreamed.image)
    other = dream.dream_channels(network, image, 2, channels, dream.Ascent(octaves=3, steps=10, lr=0.03, seed=1))
    assert not torch.equal(other.image, dreamed.image)


def test_dreaming_a_class_raises_its_logit_and_leaves_the_network_alone() -> None:
    model = load_model(BUNDLED)
    network = model.network
    network.train()
    network.features[2].eval()  # a mixed-mode model on purpose
    modes = [m.training for m in network.modules()]
    state = copy.deepcopy(network.state_dict())
    image = load_image(DEMO[0], 64)
    dreamed = dream.dream_class(network, image, 1, dream.Ascent(octaves=2, steps=6))
    assert dreamed.image.shape == (3, 64, 64)
    assert dreamed.objective_after > dreamed.objective_before + 2.0  # the Parasitized logit of an uninfected cell
    assert [m.training for m in network.modules()] == modes
    assert all(torch.equal(v, state[k]) for k, v in network.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in network.parameters())


def test_octaves_run_smallest_first_and_end_at_the_picture() -> None:
    assert dream.octave_sizes(128, 128, 4, 1.4, 16) == [(47, 47), (65, 65), (91, 91), (128, 128)]
    assert dream.octave_sizes(20, 40, 5, 2.0, 16) == [(16, 16), (16, 20), (20, 40)]
    with pytest.raises(ValueError):
        dream.octave_sizes(32, 32, 0, 1.4, 16)


def test_channel_picks_exactly_those_channels_with_their_weights() -> None:
    network = small("every")
    images = torch.rand(4, 3, 32, 32)
    weights = channel_choice.channel_weights(network, 2, 1)
    chosen, chosen_weights = channel_choice.chosen_channels(network, 2, 1, torch.tensor([7, 0, 3]))
    assert chosen.tolist() == [7, 0, 3] and chosen_weights.tolist() == weights[[7, 0, 3]].tolist()
    view = channel_views.channel_view(
        network, 2, 1, 8, images, images, n=2, steps=1, size=32, channels=torch.tensor([7, 0, 3])
    )
    assert view.channels.tolist() == [7, 0, 3] and view.maximizers.shape[0] == 3
    assert view.examples is not None and view.examples.patches.shape[0] == 3
    with pytest.raises(ValueError, match="channel 99"):
        channel_choice.chosen_channels(network, 2, 1, torch.tensor([99]))


def test_block_two_filters_are_the_kernels_mean_over_their_inputs() -> None:
    network = small("last")
    conv = stages.block_stages(network)[1][0]
    mean = conv.weight.detach().mean(dim=1)
    drawn = stages.input_mean_filters(network, 2)
    assert drawn.shape == (16, 3, 3)
    assert torch.allclose(drawn * mean.abs().amax(dim=(1, 2), keepdim=True), mean, atol=1e-6)
    assert torch.allclose(drawn.abs().amax(dim=(1, 2)), torch.ones(16))
    figure = feature_figures.mean_filters_figure(drawn.numpy(), "block 2")
    assert len(figure.axes) >= 16


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_features_dream_channel_and_all_maps_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(
        "features",
        "--model",
        BUNDLED,
        "--dream",
        DEMO[0],
        "--block",
        "3",
        "--channel",
        "102",
        "98",
        "--octaves",
        "2",
        "--dream-steps",
        "4",
        "--out",
        out,
        "--save-npz",
        "--device",
        "cpu",
        script="where_to_look.py",
    )
    assert result.returncode == 0, result.stderr
    numbers = np.load(out / f"features_model_malaria_last_dream_{DEMO[0].stem}_block3.npz")
    assert numbers["channels"].tolist() == [102, 98]
    assert numbers["dreamed"].shape == numbers["image"].shape == (3, 128, 128)
    assert float(numbers["activation_after"].mean()) > float(numbers["activation_before"].mean())
    cells = tmp_path / "cells"
    cells.mkdir()
    for path in [*DEMO[:2], *sorted((REPO / "data" / "demo" / "Parasitized").glob("*.png"))[:2]]:
        (cells / path.name).write_bytes(path.read_bytes())
    result = run_cli(
        "features",
        "--model",
        BUNDLED,
        "--image",
        cells,
        "--block",
        "2",
        "--channel",
        "4",
        "9",
        "--all-maps",
        "--steps",
        "2",
        "--examples",
        "1",
        "--out",
        out,
        "--save-npz",
        "--device",
        "cpu",
        script="where_to_look.py",
    )
    assert result.returncode == 0, result.stderr
    numbers = np.load(out / "features_model_malaria_last_block2_Parasitized.npz")
    assert numbers["channels"].tolist() == [4, 9]
    assert numbers["all_maps_Uninfected"].shape == numbers["all_maps_Parasitized"].shape == (64, 32, 32)
    assert numbers["filters_block2"].shape == (64, 5, 5)
    for name in ("all_maps_block2_Uninfected", "all_maps_block2_Parasitized", "filters_block2"):
        assert (out / f"features_model_malaria_last_{name}.png").is_file()
    bad = run_cli("features", "--model", BUNDLED, "--block", "2", "--channel", "64", script="where_to_look.py")
    assert bad.returncode == 2 and "error: --channel 64: block 2 has channels 0..63" in bad.stderr
    assert load_model(BUNDLED).kind == "last"
