"""Where a command's pictures go: one folder, names that never overwrite each other, PNG and npz side by side."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from wtl.errors import UsageError
from wtl.plot.maps import save


@dataclass
class Outputs:
    """Names PNGs (and npz files) in one folder without two inputs overwriting each other."""

    folder: Path
    save_npz: bool = False
    quiet: bool = False  # the commands say what they saved; a notebook's `wtl.draw` does not
    written: list[Path] = field(default_factory=list)
    _used: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / ".write_test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise UsageError(f"{self.folder}: cannot write pictures there ({error.strerror or error})") from None

    def path(self, name: str) -> Path:
        """A fresh PNG path for this run: name.png, or name_2.png if taken already."""
        candidate, number = name, 1
        while candidate in self._used:
            number += 1
            candidate = f"{name}_{number}"
        self._used.add(candidate)
        return self.folder / f"{candidate}.png"

    def save(
        self, fig: Figure, name: str, numbers: Mapping[str, object] | None = None, always_npz: bool = False
    ) -> Path:
        """Save the figure (and its numbers as .npz when asked, or always), print and remember the path."""
        path = save(fig, self.path(name))
        self.written.append(path)
        self._say(f"saved {path}")
        if numbers is not None and (self.save_npz or always_npz):
            npz = path.with_suffix(".npz")
            arrays: dict[str, Any] = {k: np.asarray(v) for k, v in numbers.items()}
            np.savez_compressed(npz, **arrays)
            self._say(f"saved {npz}")
        return path

    def _say(self, line: str) -> None:
        if not self.quiet:
            print(line)

    def json(self, content: object, name: str) -> Path:
        """Write a JSON file beside the pictures, print and return its path."""
        path = self.folder / f"{name}.json"
        path.write_text(json.dumps(content, indent=1) + "\n")
        self._say(f"saved {path}")
        return path
