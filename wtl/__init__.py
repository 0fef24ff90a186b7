"""Where to look: train small GAP CNNs and show where they look, block by block, and whether the maps are right.

    import wtl
    model = wtl.load_model("malaria-every")          # a bundled name, or a path to a checkpoint
    result = wtl.explain(model, "data/demo/Parasitized", method="cam", blocks="every")
    wtl.draw(result, "outputs/")                     # the same PNGs the CLI writes

`wtl.evaluate(model, data_dir)` scores a model and its maps; `wtl.erase(model, pictures, "background")`
classifies pictures again with a region removed. The names below are loaded on first
use, so that `import wtl` (and the command-line tools' --help) stays quick.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"
__all__ = [
    "EvaluateOptions",
    "EvaluationResult",
    "Erasure",
    "LoadedModel",
    "Result",
    "draw",
    "erase",
    "evaluate",
    "explain",
    "load_model",
]


def __getattr__(name: str) -> Any:
    """The API's names, imported from wtl.api when first asked for (it imports torch)."""
    if name in __all__:
        from wtl import api

        return getattr(api, name)
    raise AttributeError(f"module 'wtl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
