"""The original project's trainers under their original names (the code lives in wtl.training)."""

from wtl.training.checkpointing import CheckpointTrainer
from wtl.training.trainer import Trainer

__all__ = ["CheckpointTrainer", "Trainer"]
