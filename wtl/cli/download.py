"""`download`: fetch the original project's published checkpoints (or --weights-url) into --models-dir."""

from __future__ import annotations

import argparse
from pathlib import Path

from wtl import resources

SUMMARY = "fetch the original project's published checkpoints (or --weights-url) into --models-dir"
EXAMPLE = "python where_to_look.py download"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `download`."""
    p.add_argument("--weights-url", help="Drive folder or file, or an http(s) .pt or .zip (default: the published)")
    p.add_argument(
        "--models-dir", type=Path, default=resources.default_models_dir(), help="where to install (default models/)"
    )


def run(args: argparse.Namespace) -> list[Path]:
    """Download, validate and install the checkpoints."""
    from wtl.checkpoints.download import download_weights

    for path in download_weights(args.weights_url, args.models_dir):
        print(f"installed {path}")
    return []
