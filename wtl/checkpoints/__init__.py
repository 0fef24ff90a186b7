"""Checkpoints: atomic writes, safe loading, finding them by name, and downloading them."""
