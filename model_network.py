"""The original project's two networks under their original names (the code lives in wtl.nets).

`from model_network import Network, NetworkMultiLoss` keeps working, and so do the published
checkpoints: their state-dict keys load into these classes with strict=True.
"""

from wtl.nets.registry import BLOCK_DROPOUT, DROPOUT
from wtl.nets.seed import BLOCK_CHANNELS, Down, Network, NetworkMultiLoss, build_network, network_kind, num_classes_of

__all__ = [
    "BLOCK_CHANNELS",
    "BLOCK_DROPOUT",
    "DROPOUT",
    "Down",
    "Network",
    "NetworkMultiLoss",
    "build_network",
    "network_kind",
    "num_classes_of",
]
