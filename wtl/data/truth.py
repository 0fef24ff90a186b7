"""Ground truth of one's own: masks, boxes or points per picture, as masks at the model's input size.

A picture reaches the network squashed to size x size, or cut to its largest centred square first
(center-crop, as images.picture_tensor does). Its ground truth goes through the same geometry, so
that a box drawn on a 178 x 218 face lands where the network sees it:

- a mask file (any size, one per picture, matched by file name) is cut like the picture and
  resized with nearest neighbour (Pillow's, which samples at pixel centres);
- a box `x0,y0,x1,y1` (the picture's own pixels: columns x0 <= x < x1, rows y0 <= y < y1, as a
  slice or PIL's crop) covers the input pixels whose centres fall inside it once mapped; a box
  thinner than an input pixel still marks the pixel under its centre;
- a point `x,y` marks the input pixel it falls in.

Boxes reaching outside their picture are clipped to it and counted; points outside the picture
(or outside the centred square the network sees) are left out and counted. Nothing here reads a
model or draws: the evaluation and the report call `GroundTruth.mask`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from wtl.data.images import IMAGE_SUFFIXES, check_preprocess
from wtl.errors import DatasetError

Box = tuple[float, float, float, float]
Point = tuple[float, float]
KINDS = ("masks", "boxes", "points")
SINGULAR = {"masks": "mask", "boxes": "box", "points": "point"}
COLUMNS = {"boxes": ("file", "x0", "y0", "x1", "y1"), "points": ("file", "x", "y")}
# A mask file may be named as its picture or with one of these endings: cell_12.png or cell_12_mask.png.
MASK_ENDINGS = ("_mask", "-mask", ".mask")


@dataclass(frozen=True)
class Frame:
    """How a picture of width x height becomes the size x size input: the region kept, then the scale."""

    width: int
    height: int
    size: int
    preprocess: str = "squash"

    @property
    def kept(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the part of the picture the network sees (all of it, or its centred square)."""
        if self.preprocess != "center-crop":
            return 0, 0, self.width, self.height
        side = min(self.width, self.height)
        left, top = (self.width - side) // 2, (self.height - side) // 2  # images._center_square's rule
        return left, top, left + side, top + side

    def to_input(self, x: float, y: float) -> tuple[float, float]:
        """A point of the picture (its own pixels) in the input's continuous coordinates."""
        left, top, right, bottom = self.kept
        return (x - left) * self.size / (right - left), (y - top) * self.size / (bottom - top)


def mask_to_input(mask: np.ndarray, size: int, preprocess: str = "squash") -> torch.Tensor:
    """A (H, W) bool mask as the picture is prepared: cut like it, resized to (size, size) with nearest neighbour."""
    check_preprocess(preprocess)
    height, width = mask.shape
    picture = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    picture = picture.crop(Frame(width, height, size, preprocess).kept)
    resized = picture.resize((size, size), Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(resized) > 127)


def clip_box(box: Box, width: int, height: int) -> tuple[Box | None, bool]:
    """(the box clipped to the picture or None if nothing is left, whether clipping changed it)."""
    x0, y0, x1, y1 = min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])
    clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
    changed = clipped != (x0, y0, x1, y1)
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return None, True
    return clipped, changed


def boxes_to_input(boxes: Iterable[Box], frame: Frame) -> tuple[torch.Tensor, int]:
    """(mask (size, size) of the boxes at the input, how many boxes reached outside the picture and were clipped).

    Input pixel (i, j) is in a box when its centre (j + 1/2, i + 1/2), mapped back, lies in
    [x0, x1) x [y0, y1); a box covering no centre marks the pixel under its own centre.
    """
    size = frame.size
    mask = torch.zeros((size, size), dtype=torch.bool)
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    clipped = 0
    for box in boxes:
        kept, changed = clip_box(box, frame.width, frame.height)
        clipped += changed
        if kept is None:
            continue
        (a, b), (c, d) = frame.to_input(kept[0], kept[1]), frame.to_input(kept[2], kept[3])
        columns = (centres >= a) & (centres < c)
        rows = (centres >= b) & (centres < d)
        inside = rows[:, None] & columns[None, :]
        if not bool(inside.any()):
            x, y = (a + c) / 2, (b + d) / 2
            if 0 <= x < size and 0 <= y < size:
                inside[int(y), int(x)] = True
        mask |= inside
    return mask, clipped


def points_to_input(points: Iterable[Point], frame: Frame) -> tuple[torch.Tensor, int]:
    """(mask (size, size) of the input pixels the points fall in, how many points fell outside what it sees)."""
    size = frame.size
    mask = torch.zeros((size, size), dtype=torch.bool)
    outside = 0
    for x, y in points:
        a, b = frame.to_input(x, y)
        inside_picture = 0 <= x < frame.width and 0 <= y < frame.height
        if not inside_picture or not (0 <= a < size and 0 <= b < size):
            outside += 1
            continue
        mask[int(b), int(a)] = True
    return mask, outside


def read_mask(path: Path) -> np.ndarray:
    """A mask file as (H, W) bool: a pixel is in where its grey value exceeds half the file's maximum.

    0/1 and 0/255 masks both work, and so do JPEG masks with their compression noise;
    an all-black mask is empty. Transparent pixels count as out.
    """
    try:
        with Image.open(path) as picture:
            if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
                rgba = np.asarray(picture.convert("RGBA"), dtype=np.float64)
                values = rgba[..., :3].mean(-1) * (rgba[..., 3] > 0)
            else:
                values = np.asarray(picture.convert("F") if picture.mode.startswith("I") else picture.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DatasetError(f"{path}: not a readable mask image ({error})") from None
    values = np.asarray(values, dtype=np.float64)
    peak = float(values.max(initial=0.0))
    return values > peak / 2 if peak > 0 else np.zeros(values.shape, dtype=bool)


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}, line {line}: {column} is {text!r}, not a number") from None
    if not math.isfinite(value):
        raise DatasetError(f"{path}, line {line}: {column} is {text!r}, not a finite number")
    return value


def read_table(path: Path, kind: str) -> dict[str, list[tuple[float, ...]]]:
    """A boxes CSV (file,x0,y0,x1,y1) or points CSV (file,x,y) as file -> its rows; several rows per file allowed."""
    wanted = COLUMNS[kind]
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            columns = [c.strip().lower() for c in reader.fieldnames or []]
            if not set(wanted) <= set(columns):
                raise DatasetError(
                    f"{path}: a {kind} CSV needs the columns {','.join(wanted)} "
                    f"(found {','.join(columns) if columns else 'none'})"
                )
            rows: dict[str, list[tuple[float, ...]]] = {}
            for line, row in enumerate(reader, start=2):
                cells = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
                if not cells.get("file"):
                    raise DatasetError(f"{path}, line {line}: no file name")
                values = tuple(_number(cells.get(c, ""), path, line, c) for c in wanted[1:])
                rows.setdefault(cells["file"], []).append(values)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{path}: cannot read the {kind} CSV ({error})") from None
    if not rows:
        raise DatasetError(f"{path}: the {kind} CSV has no rows")
    return rows


def _keys(name: str) -> list[str]:
    """The keys a ground-truth entry is found by: its relative path without suffix, and its bare stem."""
    path = Path(name.replace("\\", "/"))
    stem = path.name.rsplit(".", 1)[0] if path.suffix.lower() in IMAGE_SUFFIXES else path.name
    for ending in MASK_ENDINGS:
        if stem.endswith(ending) and len(stem) > len(ending):
            stem = stem[: -len(ending)]
            break
    parent = path.parent.as_posix()
    return [f"{parent}/{stem}", stem] if parent not in ("", ".") else [stem]


def _picture_keys(picture: Path) -> list[str]:
    """A picture's keys: class-folder/stem (class folders may repeat file names), then the stem."""
    return [f"{picture.parent.name}/{picture.stem}", picture.stem]


@dataclass
class GroundTruth:
    """Masks, boxes or points of one's own, found by picture file name, and what happened to them.

    `mask(file)` is the ground truth of a picture at the model's input size (None: it has none);
    the counters say how many pictures had none, how many masks were empty, how many boxes were
    clipped or points left out, and the entries that matched no picture.
    """

    kind: str  # masks, boxes or points
    source: Path
    entries: dict[str, Path | list[tuple[float, ...]]]  # name as given -> mask file or rows
    size: int = 128
    preprocess: str = "squash"
    missing: list[str] = field(default_factory=list)  # pictures without ground truth
    empty: list[str] = field(default_factory=list)  # pictures whose ground truth is empty at the input size
    clipped: int = 0  # boxes clipped to their picture, points outside what the network sees
    used: set[str] = field(default_factory=set)  # entry names that matched a picture
    _index: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_preprocess(self.preprocess)
        for name in self.entries:
            for key in _keys(name):
                self._index.setdefault(key, []).append(name)

    @property
    def description(self) -> str:
        """What the ground truth is, for tables and the report: 'masks from DIR'."""
        return f"{self.kind} from {self.source}"

    def entry_for(self, picture: Path) -> str | None:
        """The entry name of a picture: by class-folder/stem, else by stem when that is unambiguous."""
        for key in _picture_keys(picture):
            names = self._index.get(key, [])
            if len(names) == 1:
                return names[0]
        return None

    def mask(self, file: str | Path | None, count: bool = True) -> torch.Tensor | None:
        """The picture's ground truth as a (size, size) bool mask at the model's input, or None.

        With `count` (the evaluation's pass) what is missing, empty or clipped is counted; the
        report's tiles read the same masks again without counting them twice.
        """
        if file is None:
            return None
        picture = Path(file)
        name = self.entry_for(picture)
        if name is None:
            if count:
                self.missing.append(picture.name)
            return None
        if count:
            self.used.add(name)
        entry = self.entries[name]
        if isinstance(entry, Path):
            mask = mask_to_input(read_mask(entry), self.size, self.preprocess)
        else:
            frame = self._frame(picture)
            if self.kind == "boxes":
                mask, changed = boxes_to_input([(r[0], r[1], r[2], r[3]) for r in entry], frame)
            else:
                mask, changed = points_to_input([(r[0], r[1]) for r in entry], frame)
            self.clipped += changed if count else 0
        if count and not bool(mask.any()):
            self.empty.append(picture.name)
        return mask

    def _frame(self, picture: Path) -> Frame:
        try:
            with Image.open(picture) as opened:  # the header only: its size
                width, height = opened.size
        except (UnidentifiedImageError, OSError) as error:
            raise DatasetError(f"{picture}: cannot read the picture's size ({error})") from None
        return Frame(width, height, self.size, self.preprocess)

    def unmatched(self) -> list[str]:
        """The entries no picture used (masks of other splits, or misnamed)."""
        return [name for name in self.entries if name not in self.used]

    def notes(self, pictures: str = "pictures") -> list[str]:
        """One line each: what matched, what was left out and why (printed by evaluate)."""
        used, total = len(self.used), len(self.used) + len(self.missing)
        lines = [f"ground truth: {self.description}, for {used} of the {total} {pictures}"]
        noun = SINGULAR[self.kind]
        if self.missing:
            lines.append(
                f"note: {len(self.missing)} of the {total} {pictures} have no {noun} (e.g. {self.missing[0]}): "
                "left out of the localisation figures"
            )
        if self.empty:
            lines.append(
                f"note: {len(self.empty)} of them have an empty {noun} at the model's input (e.g. "
                f"{self.empty[0]}): nothing to point at, left out of the localisation figures"
            )
        if self.clipped:
            what = (
                "boxes reached outside their picture and were clipped"
                if self.kind == "boxes"
                else ("points lie outside what the network sees and were left out")
            )
            lines.append(f"note: {self.clipped} {what}")
        extra = self.unmatched()
        if extra:
            lines.append(
                f"note: {len(extra)} {self.kind} match no picture of the evaluated images by file name "
                f"(e.g. {extra[0]})"
            )
        return lines


def load_truth(kind: str, source: Path, size: int, preprocess: str) -> GroundTruth:
    """Read --masks DIR, --boxes CSV or --points CSV; one-line DatasetError for a missing or malformed source."""
    if kind not in KINDS:
        raise ValueError(f"ground truth is one of {KINDS}, not {kind!r}")
    source = Path(source)
    entries: dict[str, Path | list[tuple[float, ...]]]
    if kind == "masks":
        if not source.is_dir():
            raise DatasetError(f"{source}: no such folder of masks")
        files = sorted(source.rglob("*"))
        found = [p for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not found:
            raise DatasetError(f"{source}: the folder holds no mask images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        entries = {p.relative_to(source).as_posix(): p for p in found}
    else:
        if not source.is_file():
            raise DatasetError(f"{source}: no such {kind} CSV")
        entries = dict(read_table(source, kind))
    return GroundTruth(kind, source, entries, size, preprocess)


def check_matches(truth: GroundTruth, pictures: Sequence[Path], split: str) -> None:
    """DatasetError in one line when not one picture of the split has an entry (misnamed files, another split)."""
    if any(truth.entry_for(Path(p)) is not None for p in pictures):
        return
    example = next(iter(truth.entries), "")
    picture = Path(pictures[0]).name if pictures else "none"
    where = "the data" if split == "all" else f"the {split} split"
    raise DatasetError(
        f"{truth.source}: none of its {len(truth.entries)} {truth.kind} matches a picture of {where} "
        f"by file name (e.g. {example} against the picture {picture}); name each after its picture"
    )
