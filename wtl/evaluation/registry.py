"""The choices of evaluate's flags that name evaluation parts, torch-free so that parsing flags stays fast."""

from __future__ import annotations

# evaluate --gallery: true/false positives/negatives (evaluation.galleries.outcome_galleries).
OUTCOMES = ("tp", "tn", "fp", "fn")
