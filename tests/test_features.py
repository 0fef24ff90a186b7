"""features.py: channel choice, receptive fields, real examples and activation maximisation, on tiny networks.

Pure and fast: random or hand-set networks at 32-96 px, a few Adam steps, no files. The
maximisation tests check what the method promises (seeded, the colour a linear colour
detector wants, no blank channel), not how pretty the images are.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomise_batch_norm
from matplotlib.figure import Figure
from torch import nn

from model_network import BLOCK_CHANNELS, Network, NetworkMultiLoss
from wtl.checkpoints.loading import load_model
from wtl.features import channels as channel_choice
from wtl.features import examples as real_examples
from wtl.features import maximise, stages
from wtl.features import view as channel_views
from wtl.maps import gradcam as gradcams
from wtl.plot import features as feature_figures


def random_network(kind: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> Network | NetworkMultiLoss:
    """Random weights and random BN statistics (so eval-mode BN is not the identity), in eval mode."""
    torch.manual_seed(seed)
    network = Network() if kind == "last" else NetworkMultiLoss()
    return randomise_batch_norm(network, seed).to(dtype).eval()


def identity_batch_norm(network: nn.Module) -> None:
    """Every BN layer the identity in eval mode (mean 0, var 1, weight 1, bias 0, eps 0)."""
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.eps = 0.0


def colour_network(detectors: list[tuple[float, float, float]], bias: float = 0.0) -> Network:
    """A Network whose block-1 channel k is the linear colour detector detectors[k] . RGB + bias (1x1, centre tap)."""
    network = Network()
    identity_batch_norm(network)
    conv = network.features[0].seq[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for k, rgb in enumerate(detectors):
            conv.weight[k, :, 2, 2] = torch.tensor(rgb)
            conv.bias[k] = bias
    return network.eval()


KINDS = ["last", "every"]


BLOCKS = (1, 2, 3, 4)  # the blocks of both of the original networks


# --------------------------------------------------------------------------- stages and receptive field


@pytest.mark.parametrize("kind", KINDS)
def test_staged_blocks_are_the_networks_own_blocks(kind):
    network = random_network(kind, dtype=torch.float64)
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    staged = stages.pre_activations(network, images, 4)
    for z, expected in zip(staged, network.block_outputs(images)):
        torch.testing.assert_close(torch.relu(z), expected)
    # Stopping early runs only the blocks asked for.
    assert len(stages.pre_activations(network, images, 2)) == 2


def test_receptive_field_numbers():
    assert [real_examples.receptive_field(b) for b in BLOCKS] == [
        (6, 2, -2),
        (16, 4, -6),
        (36, 8, -14),
        (76, 16, -30),
    ]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block", BLOCKS)
def test_receptive_field_is_where_the_gradient_reaches(kind, block):
    """The input pixels that can change a unit (union over random images) are exactly its receptive-field box."""
    network = random_network(kind, dtype=torch.float64)
    side = 96
    images = torch.rand(6, 3, side, side, dtype=torch.float64, requires_grad=True)
    size, stride, offset = real_examples.receptive_field(block)
    last = side // stride - 1
    for row, col in ((last // 2, last // 2 - 1), (0, 0), (last, last)):
        activation = torch.relu(stages.pre_activations(network, images, block)[-1])
        (gradient,) = torch.autograd.grad(activation[:, :, row, col].sum(), images)
        support = gradient.abs().sum(dim=(0, 1)) > 0
        box = torch.zeros(side, side, dtype=torch.bool)
        top, left = stride * row + offset, stride * col + offset
        box[max(top, 0) : top + size, max(left, 0) : left + size] = True
        assert torch.equal(support, box), (block, row, col)


def test_crop_centres_a_planted_spot():
    size, stride, offset = real_examples.receptive_field(3)
    row, col = 7, 9
    images = torch.zeros(1, 3, 128, 128)
    # The unit's centre lies between two pixels (an even receptive field): light both.
    top, left = stride * row + offset + size // 2 - 1, stride * col + offset + size // 2 - 1
    images[0, :, top : top + 2, left : left + 2] = 1.0
    patch = real_examples.crop_patches(images, torch.tensor([[row, col]]), 3)[0]
    assert patch.shape == (3, size, size)
    assert float(patch.sum()) == 12.0
    assert torch.equal(patch, patch.flip(1).flip(2))  # the spot sits in the middle
    assert torch.equal(patch[:, size // 2 - 1 : size // 2 + 1, size // 2 - 1 : size // 2 + 1], torch.ones(3, 2, 2))


@pytest.mark.parametrize("block", BLOCKS)
def test_crop_pads_outside_the_image_with_black(block):
    size, stride, offset = real_examples.receptive_field(block)
    side = 128
    last = side // stride - 1
    images = torch.ones(2, 3, side, side)
    patches = real_examples.crop_patches(images, torch.tensor([[0, 0], [last, last]]), block)
    margin = -offset  # rows and columns before pixel 0
    corner = patches[0]
    assert bool((corner[:, :margin] == 0).all()) and bool((corner[:, :, :margin] == 0).all())
    assert bool((corner[:, margin:, margin:] == 1).all())
    inside = side - (stride * last + offset)  # image rows left in the last unit's box
    far = patches[1]
    assert bool((far[:, :inside, :inside] == 1).all())
    assert bool((far[:, inside:] == 0).all()) and bool((far[:, :, inside:] == 0).all())


# --------------------------------------------------------------------------- which channels


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("class_index", [0, 1])
def test_multi_loss_channels_are_the_head_weights_top_k(block, class_index):
    network = random_network("every", seed=block)
    linear = network.classifier[-1]
    if block < 4:
        transform = network.transforms()[block - 1]
        weights = (linear.weight @ transform.weight)[class_index]
    else:
        weights = linear.weight[class_index]
    channels, values = channel_choice.class_channels(network, block, class_index, 5)
    expected_values, expected_channels = weights.detach().topk(5)
    assert torch.equal(channels, expected_channels)
    torch.testing.assert_close(values, expected_values)
    assert bool((values[:-1] >= values[1:]).all())


def test_network_last_block_channels_are_the_classifier_top_k():
    network = random_network("last", seed=3)
    channels, values = channel_choice.class_channels(network, 4, 1, 8)
    expected_values, expected_channels = network.classifier[-1].weight[1].detach().topk(8)
    assert torch.equal(channels, expected_channels)
    torch.testing.assert_close(values, expected_values)


@pytest.mark.parametrize("block", [1, 2, 3])
def test_network_blocks_without_head_rank_by_mean_gradcam_weight(block):
    network = random_network("last", seed=block, dtype=torch.float64)
    images = torch.rand(5, 3, 32, 32, dtype=torch.float64)
    # Independently: a hook on the block's module, the full forward pass, backward of the class scores.
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["a"] = output

    handle = gradcams.block_layers(network)[block - 1].register_forward_hook(keep)
    try:
        network(images)[:, 0].sum().backward()
    finally:
        handle.remove()
    expected = captured["a"].grad.mean(dim=(2, 3)).mean(dim=0)
    network.zero_grad(set_to_none=True)
    torch.testing.assert_close(channel_choice.gradcam_channel_weights(network, block, 0, images), expected)
    channels, values = channel_choice.class_channels(network, block, 0, 4, images)
    assert torch.equal(channels, expected.topk(4).indices)
    torch.testing.assert_close(values, expected.topk(4).values)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call",
    [
        lambda n, x: channel_choice.class_channels(n, 5, 1, 4),
        lambda n, x: channel_choice.class_channels(n, 0, 1, 4),
        lambda n, x: channel_choice.class_channels(n, 4, 1, 257),
        lambda n, x: channel_choice.class_channels(n, 4, 1, 0),
        lambda n, x: channel_choice.class_channels(n, 4, 2, 4),
        lambda n, x: channel_choice.class_channels(n, 4, -1, 4),
        lambda n, x: channel_choice.class_channels(n, 2, 1, 4),  # a Network's block 2 has no head and no images came
        lambda n, x: maximise.maximize_channels(n, 3, torch.tensor([128]), steps=1, size=16),
        lambda n, x: maximise.maximize_channels(n, 5, torch.tensor([0]), steps=1, size=16),
        lambda n, x: maximise.maximize_class(n, 1, blocks=[2], steps=1, size=16),
        lambda n, x: maximise.maximize_class(n, 3, steps=1, size=16),
        lambda n, x: stages.feature_maps(n, 1, torch.tensor([32]), x[0]),
        lambda n, x: stages.feature_maps(n, 1, torch.tensor([0]), x),
        lambda n, x: real_examples.top_patches(n, 1, torch.tensor([0]), x, n=0),
        lambda n, x: real_examples.top_patches(n, 1, torch.tensor([0]), [], n=2),
    ],
)
def test_bad_input_is_one_line_value_error(call):
    network = random_network("last")
    images = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError) as error:
        call(network, images)
    message = str(error.value)
    assert message and "\n" not in message


def test_bad_input_messages_name_the_problem():
    network = random_network("every")
    with pytest.raises(ValueError, match="block 5 does not exist"):
        channel_choice.class_channels(network, 5, 0, 1)
    with pytest.raises(ValueError, match="300 channels asked for, block 3 has 1..128"):
        channel_choice.class_channels(network, 3, 0, 300)
    with pytest.raises(ValueError, match="class index 7 does not exist"):
        channel_choice.class_channels(network, 3, 7, 1)


# --------------------------------------------------------------------------- filters, maps, means


@pytest.mark.parametrize("kind", KINDS)
def test_filters_are_block_one_kernels_scaled_each_to_unit_range(kind):
    network = random_network(kind)
    kernels = stages.filters(network)
    assert kernels.shape == (BLOCK_CHANNELS[0], 3, 5, 5)
    flat = kernels.flatten(1)
    torch.testing.assert_close(flat.min(dim=1).values, torch.zeros(32))
    torch.testing.assert_close(flat.max(dim=1).values, torch.ones(32))
    # Scaling is affine and increasing per kernel: the order of the weights is kept.
    weight = stages.block_stages(network)[0][0].weight.detach()
    assert torch.equal(weight[3].flatten().argsort(), kernels[3].flatten().argsort())


@pytest.mark.parametrize("kind", KINDS)
def test_feature_maps_and_channel_means_are_the_blocks_outputs(kind):
    network = random_network(kind)
    images = torch.rand(3, 3, 32, 32)
    channels = torch.tensor([5, 0, 17])
    outputs = network.block_outputs(images)
    torch.testing.assert_close(stages.feature_maps(network, 3, channels, images[1]), outputs[2][1, channels].detach())
    means = stages.block_activations(network, images, 2)[:, channels].mean(dim=(2, 3))
    torch.testing.assert_close(means, outputs[1][:, channels].mean(dim=(2, 3)).detach())


# --------------------------------------------------------------------------- real examples


def brightness_network() -> Network:
    """Block-1 channel 0 = R + G + B - 1.5 at one pixel: fires on bright pixels only."""
    return colour_network([(1.0, 1.0, 1.0)], bias=-1.5)


def test_top_patches_finds_a_planted_bright_spot():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(7, 3, 32, 32, generator=generator) * 0.4
    images[4, :, 20, 11] = 1.0  # the brightest spot of all, in image 4
    images[2, :, 5, 26] = 0.8  # second best, in image 2
    examples = real_examples.top_patches(brightness_network(), 1, torch.tensor([0]), images, n=3)
    size = real_examples.receptive_field(1)[0]
    assert examples.patches.shape == (1, 3, 3, size, size)
    assert examples.image_index[0, :2].tolist() == [4, 2]
    assert examples.position[0, 0].tolist() == [10, 5]  # pixel (20, 11) after one 2x2 pool
    torch.testing.assert_close(examples.activations[0, 0], torch.tensor(1.5))
    # The spot is inside the crop, next to its centre (a pool unit covers 2 x 2 pixels).
    spot = (examples.patches[0, 0].sum(dim=0) == 3.0).nonzero().tolist()
    assert spot == [[2, 3]]
    assert len(set(examples.image_index[0].tolist())) == 3  # at most one patch per image
    assert bool((examples.activations[0, :-1] >= examples.activations[0, 1:]).all())


def test_top_patches_streams_batches_and_keeps_the_best_means():
    network = random_network("every", seed=2)
    images = torch.rand(11, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # Three channels that fire on every image (a dead channel's peaks all tie at 0, in any order).
    peaks = stages.block_activations(network, images, 3).amax(dim=(2, 3)).min(dim=0).values
    channels = peaks.topk(3).indices
    whole = real_examples.top_patches(network, 3, channels, images, n=4)
    streamed = real_examples.top_patches(network, 3, channels, (images[s : s + 3] for s in range(0, 11, 3)), n=4)
    for name in ("patches", "activations", "image_index", "position", "best_mean", "best_mean_index"):
        torch.testing.assert_close(getattr(streamed, name), getattr(whole, name))
    means = stages.block_activations(network, images, 3)[:, channels].mean(dim=(2, 3))
    torch.testing.assert_close(whole.best_mean, means.max(dim=0).values)
    assert torch.equal(whole.best_mean_index, means.argmax(dim=0))
    # The reported peak is the channel's value at the reported position of that image.
    activation = stages.block_activations(network, images, 3)
    for k, channel in enumerate(channels.tolist()):
        for j in range(4):
            image, (row, col) = int(whole.image_index[k, j]), whole.position[k, j].tolist()
            torch.testing.assert_close(whole.activations[k, j], activation[image, channel, row, col])


# --------------------------------------------------------------------------- activation maximisation


def test_same_seed_gives_the_same_images():
    network = random_network("last")
    channels = torch.tensor([1, 9])
    first = maximise.maximize_channels(network, 2, channels, steps=4, seed=5, size=32)
    again = maximise.maximize_channels(network, 2, channels, steps=4, seed=5, size=32)
    other = maximise.maximize_channels(network, 2, channels, steps=4, seed=6, size=32)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_maximizers_are_images_at_the_input_size_with_their_own_activation():
    network = random_network("every")
    channels = torch.tensor([4, 2, 60])
    images, activations = maximise.maximize_channels(network, 2, channels, steps=3, size=48)
    assert images.shape == (3, 3, 48, 48)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    expected = network.block_outputs(images)[1][torch.arange(3), channels].mean(dim=(1, 2))
    torch.testing.assert_close(activations, expected.detach())


def test_colour_detectors_turn_their_colour():
    """Three block-1 channels (red, green, blue minus the other two): each maximizer turns that colour."""
    network = colour_network([(1.0, -0.5, -0.5), (-0.5, 1.0, -0.5), (-0.5, -0.5, 1.0)])
    images, activations = maximise.maximize_channels(network, 1, torch.tensor([0, 1, 2]), steps=80, lr=0.2, size=32)
    colour = images.mean(dim=(2, 3))  # (3 channels' images, RGB)
    for k in range(3):
        others = [c for c in range(3) if c != k]
        assert float(colour[k, k]) > 0.6, colour
        assert float(colour[k, k]) > float(colour[k, others].max()) + 0.3, colour
    assert bool((activations > 0.4).all()), activations


def test_no_channel_stays_blank_even_when_dead_at_the_start():
    """Channels at zero everywhere on the start image end positive; an ascent on ReLU(z) would leave them at 0."""
    network = colour_network([(2.0, 0.0, 0.0), (0.0, 0.0, 2.0)], bias=-1.6)  # 2 * 0.5 - 1.6 < 0 on grey
    channels = torch.tensor([0, 1])
    start, _ = maximise.maximize_channels(network, 1, channels, steps=0, size=32)
    assert float(stages.block_activations(network, start, 1)[:, :2].max()) == 0.0
    _, activations = maximise.maximize_channels(network, 1, channels, steps=30, lr=0.1, size=32)
    assert bool((activations > 0).all()), activations
    rows = torch.arange(2)

    def after_relu(z: list[torch.Tensor]) -> torch.Tensor:
        return torch.relu(z[-1][rows, channels]).mean(dim=(1, 2))

    blank = maximise.ascend(network, 2, 1, after_relu, steps=30, lr=0.1, size=32)
    assert float(stages.block_activations(network, blank, 1)[rows, channels].max()) == 0.0


BUNDLED_LAST = Path(__file__).resolve().parents[1] / "models" / "bundled" / "model_malaria_last.pt"


@pytest.mark.slow
@pytest.mark.skipif(not BUNDLED_LAST.is_file(), reason="the bundled last-block model is not in this checkout")
def test_dead_channels_of_the_bundled_model_light_up():
    """Eight block-4 channels of the trained model that are zero everywhere on the start image all end positive."""
    network = load_model(BUNDLED_LAST).network
    start, _ = maximise.maximize_channels(network, 4, torch.arange(256), steps=0, size=64)
    dead = stages.block_activations(network, start, 4)[torch.arange(256), torch.arange(256)].amax(dim=(1, 2)) == 0
    channels = dead.nonzero().flatten()[:8]
    assert len(channels) == 8
    _, activations = maximise.maximize_channels(network, 4, channels, steps=24, size=64)
    assert bool((activations > 0.1).all()), activations


def test_class_maximisation_through_every_head():
    network = random_network("every", seed=1)
    images, logits = maximise.maximize_class(network, 1, steps=6, lr=0.1, size=32)
    assert images.shape == (4, 3, 32, 32) and logits.shape == (4,)
    outputs = network(images, return_outputs=True)
    for j in range(4):
        torch.testing.assert_close(logits[j], outputs[j][1][j, 1].detach())
    start, before = maximise.maximize_class(network, 1, steps=0, size=32)
    assert bool((logits > before).all())


def test_class_maximisation_of_a_network_uses_its_only_head():
    network = random_network("last", seed=2)
    images, logits = maximise.maximize_class(network, 0, steps=2, size=32)
    assert images.shape == (1, 3, 32, 32)
    torch.testing.assert_close(logits, network(images)[:, 0].detach())


def test_calls_leave_modes_flags_and_gradients_as_they_were():
    network = random_network("last")
    network.train()
    network.features[2].eval()  # a mixed-mode model on purpose
    network.features[6].weight.requires_grad_(False)
    network.classifier[-1].weight.grad = torch.full_like(network.classifier[-1].weight, 3.0)
    modes = [m.training for m in network.modules()]
    flags = [p.requires_grad for p in network.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in network.parameters()]
    state = copy.deepcopy(network.state_dict())
    images = torch.rand(3, 3, 32, 32)
    channel_choice.class_channels(network, 2, 1, 3, images)
    maximise.maximize_channels(network, 2, torch.tensor([0, 1]), steps=2, size=32)
    maximise.maximize_class(network, 1, steps=2, size=32)
    real_examples.top_patches(network, 3, torch.tensor([0]), images, n=2)
    stages.feature_maps(network, 1, torch.tensor([0]), images[0])
    assert [m.training for m in network.modules()] == modes
    assert [p.requires_grad for p in network.parameters()] == flags
    for p, grad in zip(network.parameters(), grads):
        assert (p.grad is None) if grad is None else torch.equal(p.grad, grad)
    for key, value in network.state_dict().items():
        assert torch.equal(value, state[key]), key  # BN running statistics included


def test_channel_view_gathers_the_npz_arrays():
    network = random_network("last", seed=5)
    images = torch.rand(4, 3, 32, 32)
    view = channel_views.channel_view(
        network, 2, 1, 3, rank_images=images, example_images=images, n=2, steps=1, size=32
    )
    arrays = view.arrays()
    assert {key: value.shape for key, value in arrays.items()} == {
        "channels": (3,),
        "weights": (3,),
        "maximizers": (3, 3, 32, 32),
        "activations": (3,),
        "examples": (3, 2, 3, 16, 16),
        "example_activations": (3, 2),
        "best_real_activations": (3,),
    }
    channels, weights = channel_choice.class_channels(network, 2, 1, 3, images)
    assert arrays["channels"].tolist() == channels.tolist()
    assert set(channel_views.channel_view(network, 4, 0, 2, steps=0, size=32).arrays()) == {
        "channels",
        "weights",
        "maximizers",
        "activations",
    }


# --------------------------------------------------------------------------- figures


def test_figures_build_from_the_functions_outputs(tmp_path):
    network = random_network("every")
    images = torch.rand(4, 3, 32, 32)
    channels, weights = channel_choice.class_channels(network, 2, 1, 3)
    maximizers, activations = maximise.maximize_channels(network, 2, channels, steps=1, size=32)
    examples = real_examples.top_patches(network, 2, channels, images, n=2)
    class_images, logits = maximise.maximize_class(network, 1, steps=1, size=32)
    figures = [
        feature_figures.filters_figure(stages.filters(network).numpy()),
        feature_figures.feature_maps_figure(
            images[0].numpy(), stages.feature_maps(network, 2, channels, images[0]).numpy(), channels, weights
        ),
        feature_figures.channel_sheet(
            maximizers.numpy(),
            activations.tolist(),
            examples.patches.numpy(),
            examples.activations.numpy(),
            channels.tolist(),
            weights.tolist(),
            examples.best_mean.tolist(),
        ),
        feature_figures.class_maximizer_figure(
            class_images.numpy(), logits.tolist(), stages.head_blocks(network), "Parasitized"
        ),
    ]
    for i, figure in enumerate(figures):
        assert isinstance(figure, Figure)
        figure.savefig(tmp_path / f"{i}.png", dpi=40)
        assert (tmp_path / f"{i}.png").stat().st_size > 1000
    # The sheet: per channel one maximizer panel and n patch panels.
    assert len(figures[2].axes) == 3 * (1 + 2)
    assert np.asarray(feature_figures._rgb(maximizers[0])).shape == (32, 32, 3)
