"""Where the shipped files are: the bundled checkpoints, the demo cells and the original layout's data/ folder.

Two layouts are supported, looked up in this order:

- a checkout of the repository (also `pip install -e .`): `models/bundled/` and `data/demo/` beside `wtl/`;
- an installed package (`pip install .`): the same files as package data, `wtl/bundled/` and `wtl/demo/`.

Trained models go to `models/` of the checkout, or to `./models` of the working directory when the
package is installed (site-packages is no place for a user's runs).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent


def in_checkout() -> bool:
    """True when wtl/ runs from a checkout of the repository (the entry scripts beside it)."""
    return (CHECKOUT / "where_to_look.py").is_file() and (CHECKOUT / "models" / "bundled").is_dir()


def bundled_dir() -> Path:
    """The folder of the bundled checkpoints (models/bundled/ of a checkout, else the package data)."""
    return CHECKOUT / "models" / "bundled" if in_checkout() else PACKAGE / "bundled"


def demo_dir() -> Path:
    """The folder of the bundled demo cells, Parasitized/ and Uninfected/."""
    return CHECKOUT / "data" / "demo" if in_checkout() else PACKAGE / "demo"


def default_models_dir() -> Path:
    """Where training writes and the visualizer looks first: models/ of the checkout, else ./models."""
    return CHECKOUT / "models" if in_checkout() else Path("models")


def seed_manifest_dir() -> Path:
    """Where the original project's layout keeps the test-split manifests (data/), the fallback for them."""
    return CHECKOUT / "data" if in_checkout() else Path("data")


def published_folders(models_dir: Path) -> list[Path]:
    """The folders the original project's download instructions put checkpoints in (Where-to-look_models/)."""
    return [models_dir.parent / "Where-to-look_models", CHECKOUT / "Where-to-look_models"]
