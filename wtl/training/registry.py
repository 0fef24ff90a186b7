"""The training choices a flag offers, torch-free so that parsing flags stays fast."""

from __future__ import annotations

SCHEDULES = ("exponential", "cosine")  # per-epoch learning-rate decay
