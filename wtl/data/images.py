"""Pictures as the networks' input: decode any image file, centre-crop or squash, resize; batch them.

Images come out as uint8 (3, size, size) tensors (cheap to cache) and as float tensors in
[0, 1] (what the networks take). Decoding and resizing are Pillow's alone (no torchvision),
so that the visualizer starts without importing torchvision.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from wtl.data.registry import PREPROCESS
from wtl.errors import ImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# Larger than any photo a user would explain here; stops decompression bombs early.
MAX_PIXELS = 64_000_000
MAX_FILE_BYTES = 256 * 1024 * 1024


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB, scaling high-bit-depth images instead of clipping them."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # PIL's own convert() clips 16-bit values at 255, which turns most
        # 16-bit pictures white; scale by the depth the values actually use.
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if image.mode == "F" and values.max(initial=0) <= 1.0:
            peak = 1.0
        gray = np.clip(values / peak * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, as a viewer shows them, not black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _center_square(image: Image.Image) -> Image.Image:
    """The largest centred square of a picture."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def check_preprocess(preprocess: str) -> None:
    if preprocess not in PREPROCESS:
        raise ValueError(f"preprocess must be one of {PREPROCESS}, not {preprocess!r}")


def _open_rgb(path: Path) -> Image.Image:
    """Decode a file to an 8-bit RGB PIL image, with one-line errors for anything unusable."""
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ImageError(f"{path}: file is larger than {MAX_FILE_BYTES // 2**20} MB, not loading it")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"{path}: {width}x{height} pixels is too large an image")
            rgb = _to_rgb(image)
            # A copy, never the opened image itself: leaving the `with` closes it and frees its pixels.
            rgb = rgb.copy() if rgb is image else rgb
            rgb.load()
            return rgb
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path}: cannot read image ({error})") from None


def picture_tensor(picture: Image.Image, size: int = 128, preprocess: str = "squash") -> torch.Tensor:
    """A PIL picture of any mode as the network sees it: uint8 (3, size, size), centre-cropped or squashed."""
    check_preprocess(preprocess)
    rgb = _to_rgb(picture)
    if preprocess == "center-crop":
        rgb = _center_square(rgb)
    # Pillow's bilinear filter widens with the scale factor (antialiasing), as torchvision's antialias=True does.
    resized = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def display_picture(picture: Image.Image, preprocess: str = "squash") -> np.ndarray:
    """What the network saw of a PIL picture, at its own resolution, as RGB uint8 (H, W, 3), for drawing."""
    check_preprocess(preprocess)
    rgb = _to_rgb(picture)
    return np.asarray(_center_square(rgb) if preprocess == "center-crop" else rgb)


def read_image_uint8(path: str | Path, size: int = 128, preprocess: str = "squash") -> torch.Tensor:
    """Decode any image file to a uint8 tensor (3, size, size): optional centre crop, antialiased resize."""
    check_preprocess(preprocess)
    return picture_tensor(_open_rgb(Path(path)), size, preprocess)


def load_image(path: str | Path, size: int = 128, preprocess: str = "squash") -> torch.Tensor:
    """Load any image as the networks' input: float (3, size, size) in [0, 1]."""
    return read_image_uint8(path, size, preprocess).float().div_(255.0)


def original_image(path: str | Path, preprocess: str = "squash") -> np.ndarray:
    """The picture the network saw, at its own resolution, as RGB uint8 (H, W, 3), for drawing.

    With 'center-crop' that is the centred square (the rest never reached the network).
    """
    check_preprocess(preprocess)
    return display_picture(_open_rgb(Path(path)), preprocess)


def list_images(folder: str | Path) -> list[Path]:
    """Image files in a folder (not recursive), sorted; other files (Thumbs.db...) skipped."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def resolve_images(paths: Sequence[Path]) -> list[Path]:
    """Expand folders into their image files; every named file must exist."""
    found: list[Path] = []
    for path in paths:
        path = Path(path).expanduser()
        if path.is_dir():
            images = list_images(path)
            if not images:
                raise ImageError(f"{path}: the folder holds no image files")
            found.extend(images)
        elif path.is_file():
            found.append(path)
        else:
            raise ImageError(f"{path}: no such image file or folder")
    return found


def load_batch(paths: Sequence[Path], size: int, preprocess: str = "squash") -> torch.Tensor:
    """Image files as one input batch (B, 3, size, size) in [0, 1], preprocessed as the model was trained."""
    return torch.stack([load_image(p, size, preprocess) for p in paths])


def chunks(items: Sequence, size: int) -> list[Sequence]:
    """Consecutive chunks of at most `size` items (the batches of a command)."""
    if size < 1:
        raise ValueError(f"a batch holds at least one item, not {size}")
    return [items[start : start + size] for start in range(0, len(items), size)]
