"""Finding checkpoints: by model name in the folders the tool looks in, and their test-split manifests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from wtl import names, resources


def find_checkpoints(folders: Sequence[Path]) -> dict[str, Path]:
    """Checkpoints in `folders` by model name; `.best.pt` beats `.pt`, earlier folders beat later ones."""
    found: dict[str, Path] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        here: dict[str, Path] = {}
        for path in sorted(folder.glob("*.pt")):
            # Hidden files are atomic writes or downloads in progress (save_checkpoint's `.x.pt.*.part`).
            if path.name.startswith(".") or not path.is_file():
                continue
            name = names.checkpoint_name(path)
            # The trainer's `x.pt` is the resume state; `x.best.pt` holds the best-validation weights.
            if name and (name not in here or path.name.endswith(".best.pt")):
                here[name] = path
        for name, path in here.items():
            found.setdefault(name, path)
    return dict(sorted(found.items()))


def find_model(name: str, folders: Sequence[Path]) -> Path | None:
    """The checkpoint for a model name (or a file name such as `x.best.pt`) in `folders`, or None."""
    return find_checkpoints(folders).get(names.checkpoint_name(name) if name.endswith(".pt") else name)


def model_folders(models_dir: Path) -> list[Path]:
    """Where checkpoints are looked for, in order: the user's models/, the published folder, then the bundled ones."""
    return [Path(models_dir), *resources.published_folders(Path(models_dir)), resources.bundled_dir()]


def is_bundled(path: Path) -> bool:
    """True for a checkpoint shipped with the tool (models/bundled/)."""
    return Path(path).resolve().parent == resources.bundled_dir().resolve()


def shown_path(path: Path) -> str:
    """Which file a command uses, said once: 'models/bundled/x.pt (bundled)', relative where it can be."""
    try:
        shown = str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        shown = str(path)
    return f"{shown} (bundled)" if is_bundled(path) else shown


def bundled_checkpoint(alias: str) -> Path | None:
    """The bundled checkpoint for a short name ('malaria-every') or a model name ('model_gender_last'), or None."""
    return find_model(names.BUNDLED_ALIASES.get(alias, alias), [resources.bundled_dir()])


def test_manifest(checkpoint: Path) -> Path | None:
    """A model's test-split file list: beside its checkpoint, else the original project's name in data/."""
    beside = names.manifest_file(checkpoint)
    if beside.is_file():
        return beside
    seed = resources.seed_manifest_dir() / names.seed_manifest_of(names.checkpoint_name(checkpoint))
    return seed if seed.is_file() else None
