"""The two networks: shapes, the published checkpoints' exact keys, and an independent re-implementation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model_network import Network, NetworkMultiLoss, build_network, network_kind, num_classes_of
from wtl.checkpoints import loading
from wtl.nets import blocks as net_blocks
from wtl.nets.seed import Architecture, architecture_of

# --------------------------------------------------------------------------- the published layouts, literally

# Network (model_*_last.pt): three Down blocks at features.0/2/4 (conv at seq.0, batch norm at seq.2),
# block 4 spelled out as features.6 (conv) and features.8 (batch norm), the linear layer at classifier.2.
NETWORK_KEYS: dict[str, tuple[int, ...]] = {
    "features.0.seq.0.weight": (32, 3, 5, 5),
    "features.0.seq.0.bias": (32,),
    "features.0.seq.2.weight": (32,),
    "features.0.seq.2.bias": (32,),
    "features.0.seq.2.running_mean": (32,),
    "features.0.seq.2.running_var": (32,),
    "features.0.seq.2.num_batches_tracked": (),
    "features.2.seq.0.weight": (64, 32, 5, 5),
    "features.2.seq.0.bias": (64,),
    "features.2.seq.2.weight": (64,),
    "features.2.seq.2.bias": (64,),
    "features.2.seq.2.running_mean": (64,),
    "features.2.seq.2.running_var": (64,),
    "features.2.seq.2.num_batches_tracked": (),
    "features.4.seq.0.weight": (128, 64, 5, 5),
    "features.4.seq.0.bias": (128,),
    "features.4.seq.2.weight": (128,),
    "features.4.seq.2.bias": (128,),
    "features.4.seq.2.running_mean": (128,),
    "features.4.seq.2.running_var": (128,),
    "features.4.seq.2.num_batches_tracked": (),
    "features.6.weight": (256, 128, 5, 5),
    "features.6.bias": (256,),
    "features.8.weight": (256,),
    "features.8.bias": (256,),
    "features.8.running_mean": (256,),
    "features.8.running_var": (256,),
    "features.8.num_batches_tracked": (),
    "classifier.2.weight": (2, 256),
    "classifier.2.bias": (2,),
}

# NetworkMultiLoss (model_*_every_*.pt): flat conv1..4 / bn1..4, transform1..3 into 256, shared classifier.2.
MULTI_KEYS: dict[str, tuple[int, ...]] = {
    "conv1.weight": (32, 3, 5, 5),
    "conv1.bias": (32,),
    "bn1.weight": (32,),
    "bn1.bias": (32,),
    "bn1.running_mean": (32,),
    "bn1.running_var": (32,),
    "bn1.num_batches_tracked": (),
    "conv2.weight": (64, 32, 5, 5),
    "conv2.bias": (64,),
    "bn2.weight": (64,),
    "bn2.bias": (64,),
    "bn2.running_mean": (64,),
    "bn2.running_var": (64,),
    "bn2.num_batches_tracked": (),
    "conv3.weight": (128, 64, 5, 5),
    "conv3.bias": (128,),
    "bn3.weight": (128,),
    "bn3.bias": (128,),
    "bn3.running_mean": (128,),
    "bn3.running_var": (128,),
    "bn3.num_batches_tracked": (),
    "conv4.weight": (256, 128, 5, 5),
    "conv4.bias": (256,),
    "bn4.weight": (256,),
    "bn4.bias": (256,),
    "bn4.running_mean": (256,),
    "bn4.running_var": (256,),
    "bn4.num_batches_tracked": (),
    "classifier.2.weight": (2, 256),
    "classifier.2.bias": (2,),
    "transform1.weight": (256, 32),
    "transform1.bias": (256,),
    "transform2.weight": (256, 64),
    "transform2.bias": (256,),
    "transform3.weight": (256, 128),
    "transform3.bias": (256,),
}

# (conv, batch norm) key prefixes of the four blocks in each layout.
NETWORK_BLOCKS = [
    ("features.0.seq.0", "features.0.seq.2"),
    ("features.2.seq.0", "features.2.seq.2"),
    ("features.4.seq.0", "features.4.seq.2"),
    ("features.6", "features.8"),
]
MULTI_BLOCKS = [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("conv4", "bn4")]


def random_state(keys: dict[str, tuple[int, ...]], seed: int, num_classes: int = 2) -> dict[str, torch.Tensor]:
    """Random float32 tensors of exactly the given keys and shapes (positive running variances)."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in keys.items():
        if key.startswith("classifier.2."):
            shape = (num_classes, *shape[1:])
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(123, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        elif key.endswith(".weight") and len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=generator) / fan_in**0.5
        elif key.endswith(".weight") and len(shape) == 2:
            state[key] = torch.randn(shape, generator=generator) / shape[1] ** 0.5
        else:
            # Batch-norm scales included: some negative, so pooling before/after it is not interchangeable.
            state[key] = torch.randn(shape, generator=generator) * 0.5
    return state


def reference_blocks(state: dict[str, torch.Tensor], blocks, x: torch.Tensor) -> list[torch.Tensor]:
    """The original layout, written with torch.nn.functional only: conv 5x5 pad 2, max-pool 2, BN (eval), ReLU."""
    outputs = []
    for conv, bn in blocks:
        x = F.conv2d(x, state[f"{conv}.weight"].double(), state[f"{conv}.bias"].double(), padding=2)
        x = F.max_pool2d(x, 2)
        x = F.batch_norm(
            x,
            state[f"{bn}.running_mean"].double(),
            state[f"{bn}.running_var"].double(),
            state[f"{bn}.weight"].double(),
            state[f"{bn}.bias"].double(),
            training=False,
            eps=1e-5,
        )
        x = F.relu(x)
        outputs.append(x)
    return outputs


def reference_classifier(state: dict[str, torch.Tensor], pooled: torch.Tensor) -> torch.Tensor:
    return F.linear(pooled, state["classifier.2.weight"].double(), state["classifier.2.bias"].double())


def images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((batch, 3, size, size), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [64, 128, 160])
def test_network_shapes(size: int) -> None:
    network = Network().eval()
    x = images(2, size)
    logits = network(x)
    assert logits.shape == (2, 2)
    logits_cam, features = network(x, return_cam=True)
    assert features.shape == (2, 256, size // 16, size // 16)
    torch.testing.assert_close(logits_cam, logits)
    blocks = network.block_outputs(x)
    assert [tuple(b.shape) for b in blocks] == [
        (2, 32, size // 2, size // 2),
        (2, 64, size // 4, size // 4),
        (2, 128, size // 8, size // 8),
        (2, 256, size // 16, size // 16),
    ]
    torch.testing.assert_close(blocks[-1], features)


@pytest.mark.parametrize("size", [64, 128, 160])
def test_network_multi_loss_shapes(size: int) -> None:
    network = NetworkMultiLoss(num_classes=3).eval()
    x = images(2, size)
    assert network(x).shape == (2, 3)
    features = network(x, return_features=True)
    assert isinstance(features, tuple) and len(features) == 4
    expected = [(2, c, size // s, size // s) for c, s in ((32, 2), (64, 4), (128, 8), (256, 16))]
    assert [tuple(f.shape) for f in features] == expected
    outputs = network(x, return_outputs=True)
    assert isinstance(outputs, tuple) and len(outputs) == 4
    for (block, logits), feature, shape in zip(outputs, features, expected, strict=True):
        assert tuple(block.shape) == shape
        torch.testing.assert_close(block, feature)
        assert logits.shape == (2, 3)
    # The plain forward is the last block's head.
    torch.testing.assert_close(outputs[-1][1], network(x))


def test_build_network_and_kind_helpers() -> None:
    assert isinstance(build_network("last", 5), Network)
    assert isinstance(build_network("every", 5), NetworkMultiLoss)
    with pytest.raises(ValueError, match="unknown network kind"):
        build_network("first")
    assert network_kind(Network().state_dict()) == "last"
    assert network_kind(NetworkMultiLoss().state_dict()) == "every"
    with pytest.raises(ValueError):
        network_kind({"something.weight": torch.zeros(1)})
    assert num_classes_of(Network(7).state_dict()) == 7
    with pytest.raises(ValueError):
        num_classes_of({})


def test_gap_classifier_is_cam_ready() -> None:
    """Logits are the classifier applied to the mean of the last features: the CAM identity."""
    network = Network().eval()
    logits, features = network(images(3, 64, seed=1), return_cam=True)
    weight, bias = network.classifier[2].weight, network.classifier[2].bias
    torch.testing.assert_close(logits, features.mean((2, 3)) @ weight.T + bias)


# --------------------------------------------------------------------------- the published keys


def test_network_loads_published_keys_and_matches_reference() -> None:
    state = random_state(NETWORK_KEYS, seed=10)
    network = Network()
    assert set(network.state_dict()) == set(NETWORK_KEYS)
    network.load_state_dict(state, strict=True)
    network = network.double().eval()
    x = images(2, 64, seed=2).double()
    logits, features = network(x, return_cam=True)
    blocks = reference_blocks(state, NETWORK_BLOCKS, x)
    expected_logits = reference_classifier(state, blocks[-1].mean((2, 3)))
    torch.testing.assert_close(features, blocks[-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=0)
    for got, want in zip(network.block_outputs(x), blocks, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # The logits are not all alike: the comparison above could tell a wrong layout apart.
    assert expected_logits.std() > 1e-3


def test_network_multi_loss_loads_published_keys_and_matches_reference() -> None:
    state = random_state(MULTI_KEYS, seed=11)
    network = NetworkMultiLoss()
    assert set(network.state_dict()) == set(MULTI_KEYS)
    network.load_state_dict(state, strict=True)
    network = network.double().eval()
    x = images(2, 64, seed=3).double()
    blocks = reference_blocks(state, MULTI_BLOCKS, x)

    for got, want in zip(network(x, return_features=True), blocks, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)

    outputs = network(x, return_outputs=True)
    for i, ((block, logits), reference) in enumerate(zip(outputs, blocks, strict=True), start=1):
        pooled = reference.mean((2, 3))
        if i < 4:  # blocks 1-3 are lifted to 256 channels by a linear transform; block 4 is not
            pooled = F.linear(pooled, state[f"transform{i}.weight"].double(), state[f"transform{i}.bias"].double())
        torch.testing.assert_close(block, reference, atol=1e-5, rtol=0)
        torch.testing.assert_close(logits, reference_classifier(state, pooled), atol=1e-5, rtol=0)
    torch.testing.assert_close(network(x), reference_classifier(state, blocks[-1].mean((2, 3))), atol=1e-5, rtol=0)
    # The four heads differ, so mixing up transforms or blocks would be seen.
    assert not torch.allclose(outputs[0][1], outputs[1][1], atol=1e-3)


@pytest.mark.parametrize(
    ("keys", "network_class"), [(NETWORK_KEYS, NetworkMultiLoss), (MULTI_KEYS, Network)], ids=["last", "every"]
)
def test_other_layout_does_not_load(keys, network_class) -> None:
    with pytest.raises(RuntimeError):
        network_class().load_state_dict(random_state(keys, seed=0), strict=True)


@pytest.mark.parametrize(
    ("keys", "kind", "file_name"),
    [
        # The file names lie on purpose: the kind must come from the keys.
        (NETWORK_KEYS, "last", "model_malaria_every_multi_loss.pt"),
        (MULTI_KEYS, "every", "model_gender_last.pt"),
    ],
)
def test_load_model_reads_kind_and_classes_from_keys(tmp_path: Path, keys, kind: str, file_name: str) -> None:
    state = random_state(keys, seed=5, num_classes=3)
    path = tmp_path / file_name
    torch.save({"net_state_dict": state, "epoch": 4}, path)
    loaded = loading.load_model(path)
    assert loaded.kind == kind
    assert isinstance(loaded.network, NetworkMultiLoss if kind == "every" else Network)
    assert loaded.network.classifier[2].out_features == 3
    assert len(loaded.class_names) == 3
    assert not loaded.network.training
    for key, value in loaded.network.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_dropout_rates_do_not_change_the_weights_layout() -> None:
    """--dropout / --block-dropout only change regularisation: the same checkpoints load, eval is unchanged."""
    for kind in ("last", "every"):
        default = build_network(kind)
        other = build_network(kind, dropout=0.1, block_dropout=0.0)
        other.load_state_dict(default.state_dict(), strict=True)
        images = torch.rand(2, 3, 32, 32)
        torch.testing.assert_close(default.eval()(images), other.eval()(images))
    rates = [m.p for m in build_network("last", dropout=0.3, block_dropout=0.1).modules() if hasattr(m, "p")]
    assert sorted(rates) == [0.1, 0.1, 0.1, 0.3]


@pytest.mark.parametrize("kind", ["last", "every"])
@pytest.mark.parametrize("blocks, kernel, width", [(4, 5, 32), (3, 5, 32), (2, 3, 8), (3, 3, 16)])
def test_the_architecture_knobs_build_and_are_read_back_from_the_keys(kind, blocks, kernel, width):
    architecture = Architecture(blocks, kernel, width)
    network = build_network(kind, 3, architecture=architecture).eval()
    assert architecture_of(network.state_dict()) == architecture and network_kind(network.state_dict()) == kind
    outputs = network.block_outputs(torch.rand(2, 3, 32, 32))
    assert [o.shape[1] for o in outputs] == [width * 2**i for i in range(blocks)]
    assert [o.shape[-1] for o in outputs] == [32 // 2 ** (i + 1) for i in range(blocks)]
    assert [b.number for b in net_blocks.blocks(network)] == list(range(1, blocks + 1))
    assert net_blocks.kernel_of(network) == kernel
    # The original architecture keeps the published key names.
    if architecture == Architecture():
        assert set(network.state_dict()) == set(build_network(kind, 3).state_dict())
