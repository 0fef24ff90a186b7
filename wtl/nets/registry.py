"""The networks a flag can name, and their knobs' defaults, torch-free so that parsing flags stays fast."""

from __future__ import annotations

# --network: the original project's two (CAM of the last block only, or of every block).
NETWORKS = ("last", "every")
# The original project's dropout: 0.5 before the classifier, 0.2 (whole channels) after blocks 1-3.
# Dropout has no weights, so other rates (model_main's --dropout, --block-dropout) load the same checkpoints.
DROPOUT, BLOCK_DROPOUT = 0.5, 0.2
