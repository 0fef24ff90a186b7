"""cams.py: the CAM identity for both networks, checked against explicit loops and the networks' own heads.

Pure and fast: random-weight networks in eval mode, no files. The identity under
test is the module's promise: for a GAP head, a class's CAM has spatial mean
logit_c - bias_c, for the last block of Network and for every block of NetworkMultiLoss.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_network import Network, NetworkMultiLoss
from wtl.maps import cam as cams
from wtl.maps import fusion, ops, registry

RTOL = ATOL = 1e-4
PROPERTY = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def random_network(cls: type[torch.nn.Module], seed: int, num_classes: int = 2) -> torch.nn.Module:
    """A network with random weights AND random batch-norm statistics and biases, in eval mode."""
    torch.manual_seed(seed)
    network = cls(num_classes)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
            elif isinstance(module, torch.nn.Linear):
                # Biases far from zero, so that forgetting the bias cannot pass unnoticed.
                module.bias.uniform_(-2.0, 2.0)
    return network.eval()


def random_images(seed: int, batch: int, size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 3, size, size), generator=generator)


def loop_cam(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The textbook CAM, one image and one channel at a time: sum_k w[b, k] * A[b, k]."""
    out = torch.zeros(features.shape[0], *features.shape[2:], dtype=torch.float64)
    for b in range(features.shape[0]):
        for k in range(features.shape[1]):
            out[b] += float(weights[b, k]) * features[b, k].double()
    return out


# --------------------------------------------------------------------------- class_activation_map


def test_class_activation_map_is_the_per_channel_sum():
    torch.manual_seed(0)
    features = torch.randn(3, 7, 5, 4)
    weights = torch.randn(3, 7)
    result = ops.weighted_sum(features, weights)
    assert result.shape == (3, 5, 4)
    torch.testing.assert_close(result.double(), loop_cam(features, weights), rtol=1e-5, atol=1e-5)


def test_class_activation_map_uses_each_images_own_weights():
    features = torch.ones(2, 2, 1, 1)
    weights = torch.tensor([[1.0, 2.0], [10.0, 20.0]])
    assert ops.weighted_sum(features, weights).flatten().tolist() == [3.0, 30.0]


def test_head_weights_fold_a_linear_transform():
    torch.manual_seed(1)
    classifier, transform = torch.nn.Linear(6, 3), torch.nn.Linear(4, 6)
    weight, bias = ops.head_weights(classifier, transform)
    x = torch.randn(5, 4)
    torch.testing.assert_close(x @ weight.T + bias, classifier(transform(x)))
    plain_weight, plain_bias = ops.head_weights(classifier, torch.nn.Identity())
    assert plain_weight is classifier.weight and plain_bias is classifier.bias


# --------------------------------------------------------------------------- explain_last_block


def check_last_block_identity(network: Network, images: torch.Tensor, class_index: int | None) -> cams.Explanation:
    result = cams.explain_last_block(network, images, class_index)
    with torch.no_grad():
        logits = network(images)
        features = network.features(images)
    classes = logits.argmax(1) if class_index is None else torch.full((len(images),), class_index)
    linear = network.classifier[-1]
    torch.testing.assert_close(result.logits, logits)
    assert result.class_index.tolist() == classes.tolist()
    expected_cam = loop_cam(features, linear.weight[classes].detach())
    torch.testing.assert_close(result.cam.double(), expected_cam, rtol=RTOL, atol=ATOL)
    picked = logits[torch.arange(len(images)), classes]
    torch.testing.assert_close(result.cam.mean(dim=(1, 2)) + linear.bias[classes], picked, rtol=RTOL, atol=ATOL)
    return result


def test_explain_last_block_identity_predicted_and_counterfactual():
    network = random_network(Network, seed=3)
    images = random_images(3, 4, 64)
    predicted = check_last_block_identity(network, images, None)
    assert predicted.cam.shape == (4, 4, 4)
    assert predicted.heatmap.shape == (4, 64, 64)
    # A counterfactual class: the one NOT predicted for image 0.
    other = 1 - int(predicted.class_index[0])
    counter = check_last_block_identity(network, images, other)
    assert counter.class_index.tolist() == [other] * 4
    # Two classes: the two CAMs differ (w0 - w1 != 0), so the class really changes the map.
    assert not torch.allclose(counter.cam[0], predicted.cam[0])


def test_explain_last_block_heatmap_is_upsampled_normalised_cam():
    network = random_network(Network, seed=4)
    images = random_images(4, 2, 32)
    result = cams.explain_last_block(network, images)
    up = F.interpolate(result.cam[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    low = up.flatten(1).min(1).values[:, None, None]
    high = up.flatten(1).max(1).values[:, None, None]
    torch.testing.assert_close(result.heatmap, (up - low) / (high - low), rtol=1e-5, atol=1e-5)
    assert float(result.heatmap.min()) >= 0.0 and float(result.heatmap.max()) <= 1.0
    torch.testing.assert_close(result.probabilities.sum(1), torch.ones(2))


def test_explain_last_block_rejects_a_class_out_of_range():
    network = random_network(Network, seed=5)
    with pytest.raises(ValueError, match="outside"):
        cams.explain_last_block(network, random_images(5, 1, 16), 2)


def test_explain_last_block_on_multi_loss_network_uses_its_last_block():
    network = random_network(NetworkMultiLoss, seed=6)
    images = random_images(6, 2, 32)
    result = cams.explain_last_block(network, images)
    with torch.no_grad():
        logits = network(images)
    torch.testing.assert_close(result.logits, logits)
    bias = network.classifier[-1].bias[result.class_index]
    picked = logits[torch.arange(2), result.class_index]
    torch.testing.assert_close(result.cam.mean(dim=(1, 2)) + bias, picked, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- explain_every_block


def check_every_block_identity(network: NetworkMultiLoss, images: torch.Tensor, class_index: int | None):
    result = cams.explain_every_block(network, images, class_index)
    with torch.no_grad():
        outputs = network(images, return_outputs=True)
        final = network(images)
    torch.testing.assert_close(result.logits, final, rtol=RTOL, atol=ATOL)
    classes = final.argmax(1) if class_index is None else torch.full((len(images),), class_index)
    assert result.class_index.tolist() == classes.tolist()
    rows = torch.arange(len(images))
    size = images.shape[-1]
    for i, (block, block_logits) in enumerate(outputs):
        # The block's logit comes from the network's own forward, not from cams.py.
        torch.testing.assert_close(result.block_logits[i], block_logits, rtol=RTOL, atol=ATOL)
        expected = block_logits[rows, classes]
        torch.testing.assert_close(
            result.cams[i].mean(dim=(1, 2)) + result.block_bias[i], expected, rtol=RTOL, atol=ATOL
        )
        scale = size // 2 ** (i + 1)
        assert result.cams[i].shape == (len(images), scale, scale)
        torch.testing.assert_close(result.means[i], block.mean(dim=1))
        for maps in (result.heatmaps[i], result.mean_heatmaps[i]):
            assert maps.shape == (len(images), size, size)
            assert not torch.isnan(maps).any()
            assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    return result


def test_explain_every_block_identity_for_every_block():
    network = random_network(NetworkMultiLoss, seed=7)
    images = random_images(7, 3, 64)
    predicted = check_every_block_identity(network, images, None)
    assert len(predicted.cams) == len(predicted.block_logits) == len(predicted.block_bias) == 4
    other = 1 - int(predicted.class_index[0])
    counter = check_every_block_identity(network, images, other)
    assert counter.class_index.tolist() == [other] * 3


def test_explain_every_block_block1_cam_matches_an_explicit_loop():
    network = random_network(NetworkMultiLoss, seed=8)
    images = random_images(8, 2, 32)
    result = cams.explain_every_block(network, images, 1)
    with torch.no_grad():
        block1 = network.block_outputs(images)[0]
        # Block 1's class weights through transform1: W[c] @ T1.
        weights = network.classifier[-1].weight[1] @ network.transform1.weight
    expected = loop_cam(block1, weights.expand(2, -1))
    torch.testing.assert_close(result.cams[0].double(), expected, rtol=RTOL, atol=ATOL)


def test_explain_every_block_refuses_a_plain_network():
    with pytest.raises(TypeError, match="NetworkMultiLoss"):
        cams.explain_every_block(random_network(Network, seed=9), random_images(9, 1, 16))


def test_a_batch_gives_the_same_maps_as_one_image_at_a_time():
    last, every = random_network(Network, seed=10), random_network(NetworkMultiLoss, seed=10)
    images = random_images(10, 3, 32)
    batch_last = cams.explain_last_block(last, images)
    batch_every = cams.explain_every_block(every, images)
    for i in range(3):
        one = cams.explain_last_block(last, images[i : i + 1])
        torch.testing.assert_close(one.cam[0], batch_last.cam[i], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(one.heatmap[0], batch_last.heatmap[i], rtol=RTOL, atol=ATOL)
        one_every = cams.explain_every_block(every, images[i : i + 1])
        for b in range(4):
            torch.testing.assert_close(one_every.cams[b][0], batch_every.cams[b][i], rtol=RTOL, atol=ATOL)
            torch.testing.assert_close(one_every.heatmaps[b][0], batch_every.heatmaps[b][i], rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- normalize / heatmap


def test_normalize_known_values():
    maps = torch.tensor([[[-2.0, 0.0], [2.0, 6.0]]])
    assert ops.normalize(maps).flatten().tolist() == [0.0, 0.25, 0.5, 1.0]


def test_normalize_each_map_on_its_own():
    maps = torch.stack([torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 100.0]])])
    assert ops.normalize(maps).flatten().tolist() == [0.0, 1.0, 0.0, 1.0]


def test_normalize_constant_map_is_zeros_not_nan():
    result = ops.normalize(torch.full((2, 4, 4), 3.5))
    assert result.shape == (2, 4, 4)
    assert torch.equal(result, torch.zeros(2, 4, 4))


def test_normalize_negative_maps_lie_in_unit_interval():
    torch.manual_seed(11)
    maps = -torch.rand(3, 5, 5) * 50 - 10
    result = ops.normalize(maps)
    assert float(result.min()) == 0.0 and float(result.max()) == 1.0
    # Order is kept: the largest (least negative) value maps to 1.
    assert torch.equal(result.flatten(1).argmax(1), maps.flatten(1).argmax(1))


def test_heatmap_shape_and_range():
    cam = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(12))
    result = ops.heatmap(cam, 32)
    assert result.shape == (2, 32, 32)
    assert float(result.min()) >= 0.0 and float(result.max()) <= 1.0


def test_average_heatmap_is_the_pixel_mean():
    maps = torch.stack([torch.zeros(2, 2), torch.ones(2, 2), torch.full((2, 2), 0.5)])
    torch.testing.assert_close(ops.average_heatmap(maps), torch.full((2, 2), 0.5))


# --------------------------------------------------------------------------- properties (hypothesis)

seeds = st.integers(min_value=0, max_value=2**31 - 1)
batches = st.integers(min_value=1, max_value=4)
sizes = st.sampled_from([16, 32, 48, 64])


@PROPERTY
@given(seed=seeds, batch=batches, size=sizes, counterfactual=st.booleans())
def test_property_last_block_cam_identity(seed, batch, size, counterfactual):
    network = random_network(Network, seed)
    images = random_images(seed, batch, size)
    result = cams.explain_last_block(network, images, 0 if counterfactual else None)
    with torch.no_grad():
        logits = network(images)
    rows = torch.arange(batch)
    bias = network.classifier[-1].bias[result.class_index]
    torch.testing.assert_close(
        result.cam.mean(dim=(1, 2)) + bias, logits[rows, result.class_index], rtol=RTOL, atol=ATOL
    )
    assert result.heatmap.shape == (batch, size, size)
    assert not torch.isnan(result.heatmap).any()
    assert float(result.heatmap.min()) >= 0.0 and float(result.heatmap.max()) <= 1.0


@PROPERTY
@given(seed=seeds, batch=batches, size=sizes, counterfactual=st.booleans())
def test_property_every_block_cam_identity(seed, batch, size, counterfactual):
    network = random_network(NetworkMultiLoss, seed)
    images = random_images(seed, batch, size)
    result = cams.explain_every_block(network, images, 1 if counterfactual else None)
    with torch.no_grad():
        outputs = network(images, return_outputs=True)
    rows = torch.arange(batch)
    for i, (_, block_logits) in enumerate(outputs):
        expected = block_logits[rows, result.class_index]
        torch.testing.assert_close(
            result.cams[i].mean(dim=(1, 2)) + result.block_bias[i], expected, rtol=RTOL, atol=ATOL
        )


finite = st.floats(min_value=-1e30, max_value=1e30, allow_nan=False)


@PROPERTY
@given(
    batch=batches,
    height=st.integers(1, 8),
    width=st.integers(1, 8),
    kind=st.sampled_from(["constant", "negative", "huge", "any"]),
    value=finite,
    seed=seeds,
)
def test_property_normalize_never_nan_and_in_unit_interval(batch, height, width, kind, value, seed):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand((batch, height, width), generator=generator)
    if kind == "constant":
        maps = torch.full((batch, height, width), value)
    elif kind == "negative":
        maps = -noise * (abs(value) + 1.0) - 1.0
    elif kind == "huge":
        maps = torch.where(noise > 0.5, torch.tensor(1e30), torch.tensor(-1e30))
    else:
        maps = noise * value
    result = ops.normalize(maps)
    assert result.shape == maps.shape
    assert not torch.isnan(result).any()
    assert float(result.min()) >= 0.0 and float(result.max()) <= 1.0
    flat = maps.flatten(1).double()
    for b in range(batch):
        if float(flat[b].max() - flat[b].min()) > 1e-12:
            # A map that is not (numerically) constant spans the whole [0, 1].
            assert float(result[b].max()) == 1.0 and float(result[b].min()) == 0.0
        else:
            # A span below normalize's eps counts as constant: (x - min) is left unscaled, so ~0.
            assert float(result[b].max()) <= 1e-12
    if kind == "constant":
        assert torch.equal(result, torch.zeros_like(result))


# --------------------------------------------------------------------------- fusing block maps


def bump(side: int, row: float, col: float, width: float) -> torch.Tensor:
    """A Gaussian bump on a side x side grid, centred at (row, col) given as fractions of the image."""
    centres = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    rows, cols = torch.meshgrid(centres, centres, indexing="ij")
    return torch.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * width**2))


@PROPERTY
@given(
    cell=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    scales=st.lists(st.floats(0.1, 100.0), min_size=4, max_size=4),
    probabilities=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
    seed=seeds,
)
def test_property_every_rule_points_where_all_blocks_point(cell, scales, probabilities, seed):
    # Four blocks at 32, 16, 8, 4 px (a 64 px input), each with its own scale, offset and noise, all peaking at
    # one spot; block 1 also answers the cell's border, as the real block 1 does, but less than at the spot.
    # The spot is the centre of one of the coarsest block's inner 16 px cells, so that block can point at it.
    row, col = (cell[0] + 0.5) / 4, (cell[1] + 0.5) / 4
    generator = torch.Generator().manual_seed(seed)
    maps = []
    for side, scale in zip((32, 16, 8, 4), scales):
        spot = bump(side, row, col, 0.08)
        if side == 32:
            ring = torch.zeros(side, side)
            ring[[0, -1], :] = ring[:, [0, -1]] = 0.5
            spot = torch.maximum(spot, ring)
        noise = 0.01 * torch.rand((side, side), generator=generator)
        maps.append((scale * (spot + noise) - 3.0)[None])
    chances = torch.tensor([probabilities], dtype=torch.float32)
    for rule in fusion.FUSION_RULES:
        fused = fusion.fuse(maps, 64, rule, chances)
        assert fused.shape == (1, 64, 64) and float(fused.min()) == 0.0 and float(fused.max()) == 1.0
        peak = int(fused.flatten().argmax())
        found = torch.tensor([peak // 64 + 0.5, peak % 64 + 0.5])
        # The spot falls between two cells of the finer blocks: their upsampled maps are flat over up to 8 px
        # around it, so the peak may lie anywhere on that plateau (at most 4 px per axis off), nowhere else.
        assert float((found - 64 * torch.tensor([row, col])).norm()) <= 6.0, rule


def test_fusion_rules_follow_their_formulas():
    torch.manual_seed(3)
    maps = [torch.rand(2, 16, 16), torch.rand(2, 8, 8) * 5, torch.rand(2, 4, 4) - 7, torch.rand(2, 2, 2)]
    n = torch.stack([ops.heatmap(m, 16) for m in maps]).double()
    probabilities = torch.tensor([[0.2, 0.9, 0.6, 0.3], [0.5, 0.5, 0.5, 0.5]])
    expected = {
        "max": n.max(0).values,
        "mean": n.mean(0),
        "mean234": n[1:].mean(0),
        "product": n.prod(0) ** (1 / 4),
        "product234": n[1:].prod(0) ** (1 / 3),
        "confidence": (n ** (probabilities.double().T / probabilities.double().sum(1))[:, :, None, None]).prod(0),
    }
    assert set(expected) == set(fusion.FUSION_RULES)
    for rule, formula in expected.items():
        torch.testing.assert_close(fusion.fuse(maps, 16, rule, probabilities), ops.normalize(formula).float())
    # Equal confidences weigh every block the same: the geometric mean of all four.
    torch.testing.assert_close(
        fusion.fuse(maps, 16, "confidence", probabilities)[1], fusion.fuse(maps, 16, "product")[1], rtol=1e-5, atol=1e-5
    )
    # A block whose head gives the class no probability at all is left out.
    silent = torch.tensor([[0.0, 0.7, 0.7, 0.7]]).expand(2, 4)
    torch.testing.assert_close(fusion.fuse(maps, 16, "confidence", silent), fusion.fuse(maps, 16, "product234"))


def test_fuse_defaults_to_the_finest_resolution_of_the_blocks_it_uses_and_checks_its_arguments():
    maps = [torch.rand(3, 32, 32), torch.rand(3, 16, 16), torch.rand(3, 8, 8), torch.rand(3, 4, 4)]
    assert fusion.fuse(maps, rule="product").shape == (3, 32, 32)
    assert fusion.fuse(maps, rule="product234").shape == (3, 16, 16)
    assert fusion.fuse(maps[:1], rule="product234").shape == (3, 32, 32)  # one map: that block alone
    torch.testing.assert_close(fusion.fuse(maps[:1], 32, "mean234"), ops.heatmap(maps[0], 32))
    assert registry.DEFAULT_FUSION in fusion.FUSION_RULES
    with pytest.raises(ValueError, match="unknown fusion rule"):
        fusion.fuse(maps, 32, "median")
    with pytest.raises(ValueError, match="at least one map"):
        fusion.fuse([], 32)
    with pytest.raises(ValueError, match="probability"):
        fusion.fuse(maps, 32, "confidence")
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        fusion.fuse(maps, 32, "confidence", torch.rand(3, 3))
    flat = [torch.zeros(1, 4, 4), torch.full((1, 2, 2), 7.0)]
    for rule in fusion.FUSION_RULES:  # constant maps: zeros, never NaN
        assert torch.equal(fusion.fuse(flat, 8, rule, torch.ones(1, 2)), torch.zeros(1, 8, 8))


def purple_every_block() -> NetworkMultiLoss:
    """A hand-built NetworkMultiLoss whose every block finds Giemsa purple and whose every head counts it.

    Block 1's channel 0 is (R + B) / 2 - 2 G, positive on purple only; blocks 2-4 pass channel 0
    on (max-pooled); each head reads channel 0 alone, so every block's CAM is hot on the parasite.
    """
    network = NetworkMultiLoss()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        for bn in (network.bn1, network.bn2, network.bn3, network.bn4):
            bn.weight.fill_(1.0)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
        network.conv1.weight[0, :, 1:4, 1:4] = torch.tensor([0.5, -2.0, 0.5])[:, None, None] / 9
        network.conv1.bias[0] = -0.02
        for conv in (network.conv2, network.conv3, network.conv4):
            conv.weight[0, 0, 2, 2] = 1.0
        for transform in (network.transform1, network.transform2, network.transform3):
            transform.weight[0, 0] = 1.0
        head = network.classifier[-1]
        head.weight[1, 0], head.weight[0, 0] = 300.0, -300.0
    return network.eval()


def test_the_fused_map_of_a_model_whose_blocks_all_find_the_parasite_points_at_it():
    import numpy as np
    from conftest import cell_image

    from wtl.metrics import localisation
    from wtl.metrics.stain import stain_mask

    rng = np.random.default_rng(5)
    images = torch.stack(
        [torch.from_numpy(np.array(cell_image(rng, True, 64))).permute(2, 0, 1).float() / 255 for _ in range(6)]
    )
    explanation = cams.explain_every_block(purple_every_block(), images, 1)
    assert (explanation.logits.argmax(1) == 1).all()
    masks = [stain_mask(image) for image in images]
    assert all(mask.any() for mask in masks)
    for rule in fusion.FUSION_RULES:
        fused = explanation.fused_heatmap(rule)
        torch.testing.assert_close(
            fused, fusion.fuse(explanation.cams, (64, 64), rule, explanation.block_probabilities)
        )
        for heat, mask in zip(fused, masks):
            # Within the pointing game's 8 px for every rule (block 4's 16 px cells blur a max); inside the stain
            # itself for the default rule.
            assert localisation.pointing_hit(heat, mask, 8.0), rule
            assert localisation.pointing_hit(heat, mask, 0.0) or rule != registry.DEFAULT_FUSION
        assert explanation.fused_cam(rule).shape[-1] == (16 if rule.endswith("234") else 32)
    torch.testing.assert_close(
        explanation.block_probabilities,
        torch.stack([logits.softmax(1)[:, 1] for logits in explanation.block_logits], 1),
    )
