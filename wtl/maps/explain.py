"""`explain`: pictures in (paths, folders, PIL images, tensors), the model's prediction and maps out, batch first.

The pictures are prepared as the checkpoint says (its size, squash or centre crop), run through
the network in batches, and explained by one method of registry.METHODS, at the last block or
at every block. The result is what `single` and `multi` draw and save; `wtl.draw` draws it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from wtl.checkpoints.loading import LoadedModel
from wtl.data.images import display_picture, load_image, original_image, picture_tensor, resolve_images
from wtl.errors import UsageError
from wtl.maps import methods
from wtl.maps.cam import BlockExplanation
from wtl.maps.registry import DEFAULT_FUSION, DEFAULT_METHOD, FUSIONS
from wtl.maps.scale import shared_heatmap

# One picture to explain: a file or a folder of files, a PIL image, or an image tensor (3, H, W) or (B, 3, H, W).
Picture = str | Path | Image.Image | Tensor
BLOCK_CHOICES = ("last", "every")


@dataclass
class Inputs:
    """Prepared pictures: the network's input batch and, per row, where it came from."""

    images: Tensor  # (B, 3, S, S) float in [0, 1]
    sources: list[Path | np.ndarray | None]  # the file, the PIL picture as seen (H, W, 3), or None for a tensor
    names: list[str]  # a stem per row for file names: the file's, else image_<i>
    preprocess: str = "squash"

    def picture(self, row: int) -> np.ndarray:
        """Row `row` as it is drawn, RGB uint8 (H, W, 3): the file at its own resolution, else the input itself."""
        source = self.sources[row]
        if isinstance(source, Path):
            return original_image(source, self.preprocess)
        if source is not None:
            return source
        return (self.images[row].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def prepare(pictures: Picture | Sequence[Picture], size: int, preprocess: str = "squash") -> Inputs:
    """Pictures as one input batch, prepared as a checkpoint of `size` and `preprocess` was trained.

    Files and folders are read (folders: every image file in them, sorted); PIL images are
    converted like files; tensors in [0, 1] (or uint8) are taken as the network's input, cut to
    their centred square for 'center-crop' and resized to `size` where they are another size.
    """
    items: list[Picture] = [pictures] if isinstance(pictures, (str, Path, Image.Image, Tensor)) else list(pictures)
    rows: list[Tensor] = []
    sources: list[Path | np.ndarray | None] = []
    for item in items:
        if isinstance(item, (str, Path)):
            for path in resolve_images([Path(item)]):
                rows.append(load_image(path, size, preprocess))
                sources.append(path)
        elif isinstance(item, Image.Image):
            rows.append(picture_tensor(item, size, preprocess).float() / 255.0)
            sources.append(display_picture(item, preprocess))
        elif isinstance(item, Tensor):
            batch = item.unsqueeze(0) if item.ndim == 3 else item
            if batch.ndim != 4 or batch.shape[1] != 3:
                raise UsageError(f"an image tensor is (3, H, W) or (B, 3, H, W), not {tuple(item.shape)}")
            batch = _as_input(batch.detach().cpu(), size, preprocess)
            rows.extend(batch)
            sources.extend([None] * len(batch))
        else:
            raise UsageError(f"cannot explain a {type(item).__name__}: give paths, PIL images or image tensors")
    if not rows:
        raise UsageError("no pictures to explain")
    names = [s.stem if isinstance(s, Path) else f"image_{i}" for i, s in enumerate(sources)]
    return Inputs(torch.stack(rows), sources, names, preprocess)


def _as_input(batch: Tensor, size: int, preprocess: str) -> Tensor:
    """A (B, 3, H, W) tensor as network input: float in [0, 1], centre square (if asked), `size` px."""
    batch = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
    if preprocess == "center-crop" and batch.shape[-1] != batch.shape[-2]:
        side = min(batch.shape[-2:])
        top, left = (batch.shape[-2] - side) // 2, (batch.shape[-1] - side) // 2
        batch = batch[..., top : top + side, left : left + side]
    if tuple(batch.shape[-2:]) != (size, size):
        batch = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return batch.clamp(0.0, 1.0)


@dataclass
class Result:
    """What `explain` returns: per picture the prediction and its maps, batch first (B pictures).

    Attributes (tensors on the CPU):
        logits: (B, C) the final prediction's logits.
        class_index: (B,) the class every map explains.
        cam: (B, h, w) the last block's raw map.
        heatmap: (B, S, S) the last block's map normalised to [0, 1] at the input size: what `single` draws.
        blocks: the every-block view (blocks="every"): per block maps, mean activations, head logits.
        evidence: (B, h, w) CAM only: the last block's per-position log-odds of the explained class
            against the other (the logit for other than two classes); None for the Grad-CAM family.
        evidence_bias: (B,) with evidence.mean((1, 2)) + evidence_bias == that log-odds (or logit).
        ood_score, out_of_distribution: (B,) how unlike the training pictures each picture is, and whether
            that is above the model's threshold (None where the model has no statistics or none were asked for).
    """

    model: LoadedModel
    method: str
    inputs: Inputs
    logits: Tensor
    class_index: Tensor
    cam: Tensor
    heatmap: Tensor
    blocks: BlockExplanation | None = None
    fusion: str = DEFAULT_FUSION
    class_names: list[str] = field(default_factory=list)
    bias: Tensor | None = None  # (B,) exact CAM of the last block: the head's bias of each explained class
    layer: str | None = None  # the Grad-CAM family's target layer, where one was named
    # Is each picture like the training pictures? Filled by wtl.metrics.ood.assess where the model has statistics.
    ood_score: Tensor | None = None  # (B,) the deciding score (higher: less like the training data)
    out_of_distribution: Tensor | None = None  # (B,) bool: ood_score above ood_threshold
    ood_threshold: float | None = None
    ood_method: str | None = None  # which score (wtl.metrics.ood.SCORES)
    evidence: Tensor | None = None
    evidence_bias: Tensor | None = None

    def __len__(self) -> int:
        return len(self.logits)

    @property
    def probabilities(self) -> Tensor:
        """(B, C) softmax of the logits."""
        return self.logits.softmax(dim=1)

    @property
    def predictions(self) -> Tensor:
        """(B,) the predicted class of each picture."""
        return self.logits.argmax(dim=1)

    @property
    def heatmaps(self) -> list[Tensor]:
        """Per block (block 1 first) the (B, S, S) heatmap; only the last block's without blocks='every'."""
        return list(self.blocks.heatmaps) if self.blocks is not None else [self.heatmap]

    def raw_maps(self) -> dict[str, Tensor]:
        """The maps a shared scale applies to, by view: 'last' and, with blocks='every', 'block1'...

        CAM: the evidence in log-odds; the Grad-CAM family: the method's raw map. (B, h_i, w_i) each.
        """
        if self.blocks is None:
            return {"last": self.evidence if self.evidence is not None else self.cam}
        maps = self.blocks.evidences if self.blocks.evidences is not None else self.blocks.cams
        out = {f"block{i}": m for i, m in enumerate(maps, start=1)}
        return {**out, "last": maps[-1]}

    def scale(self, view: str = "last") -> float | None:
        """The model's shared scale of this method's view (the colour bar's end), None without a scale file."""
        scale = self.model.scale
        return scale.of(self.method, view) if scale is not None else None

    @cached_property
    def shared_heatmaps(self) -> dict[str, Tensor]:
        """Per view the (B, S, S) map the shared-scale picture draws: raw_maps upsampled, in their own units."""
        size = tuple(self.inputs.images.shape[-2:])
        return {view: shared_heatmap(raw, size) for view, raw in self.raw_maps().items()}

    @property
    def heatmap_shared(self) -> Tensor:
        """(B, S, S) the last block's map as `--scale model` draws it (log-odds for CAM), against scale()."""
        return self.shared_heatmaps["last"]

    @cached_property
    def fused(self) -> Tensor:
        """(B, S, S) in [0, 1]: the blocks' maps fused by `fusion` (blocks='every' only)."""
        if self.blocks is None:
            raise UsageError("the fused map needs every block's maps: explain with blocks='every'")
        return self.blocks.fused_heatmap(self.fusion)

    @cached_property
    def fused_cam(self) -> Tensor:
        """(B, h, w) in [0, 1]: the same fusion at the finest resolution of the blocks the rule uses."""
        if self.blocks is None:
            raise UsageError("the fused map needs every block's maps: explain with blocks='every'")
        return self.blocks.fused_cam(self.fusion)


def explain(
    model: LoadedModel,
    pictures: Picture | Sequence[Picture],
    method: str = DEFAULT_METHOD,
    blocks: str = "last",
    class_index: int | Tensor | None = None,
    fusion: str = DEFAULT_FUSION,
    batch_size: int = 32,
    layer: str | None = None,
) -> Result:
    """Explain pictures with a model: prediction, and where the evidence for a class lies.

    Args:
        model: a loaded checkpoint (`wtl.load_model`).
        pictures: image files, folders of them, PIL images, or tensors (3, H, W) / (B, 3, H, W) in [0, 1].
        method: a name of wtl.maps.registry.METHODS ('cam' is exact for the GAP head).
        blocks: 'last' (the single view) or 'every' (every block, and their fusion).
        class_index: the class to explain (index or per-picture indices); None explains each prediction.
        fusion: the fusion rule of the every-block view (registry.FUSIONS).
        batch_size: pictures per forward pass (and Score-CAM's masked batch).
        layer: blocks='last' with a Grad-CAM method: the target layer, a dotted module name (torchvision's
            own for a torchvision network, e.g. 'layer3' or 'layer4.0.conv2'); default the last block or stage.

    Returns:
        Result: logits (B, C), class_index (B,), cam (B, h, w), heatmap (B, S, S), and for
        blocks='every' the per-block maps (result.blocks, result.heatmaps, result.fused).
    """
    if blocks not in BLOCK_CHOICES:
        raise UsageError(f"blocks must be one of {', '.join(BLOCK_CHOICES)}, not {blocks!r}")
    if fusion not in FUSIONS:
        raise UsageError(f"unknown fusion rule {fusion!r} (expected one of {', '.join(FUSIONS)})")
    methods.check_method(method)
    inputs = prepare(pictures, model.image_size, model.preprocess)
    device = next(model.network.parameters()).device
    rows = [slice(start, start + batch_size) for start in range(0, len(inputs.images), batch_size)]
    if blocks == "last":
        lasts = [
            methods.last_block(
                model.network, method, inputs.images[r].to(device), _chunk(class_index, r), batch_size, layer
            )
            for r in rows
        ]
        biases = [p.bias for p in lasts]
        return Result(
            model,
            method,
            inputs,
            logits=torch.cat([p.logits for p in lasts]).cpu(),
            class_index=torch.cat([p.class_index for p in lasts]).cpu(),
            cam=torch.cat([p.cam for p in lasts]).cpu(),
            heatmap=torch.cat([p.heatmap for p in lasts]).cpu(),
            fusion=fusion,
            class_names=list(model.class_names),
            bias=torch.cat([b for b in biases if b is not None]).cpu() if all(b is not None for b in biases) else None,
            layer=layer,
            evidence=_cat_optional([p.evidence for p in lasts]),
            evidence_bias=_cat_optional([p.evidence_bias for p in lasts]),
        )
    if layer is not None:
        raise UsageError("layer is for blocks='last': the every-block view shows every block's (or stage's) output")
    every = _merge(
        [
            methods.every_block(model.network, method, inputs.images[r].to(device), _chunk(class_index, r), batch_size)
            for r in rows
        ]
    )
    return Result(
        model,
        method,
        inputs,
        logits=every.logits,
        class_index=every.class_index,
        cam=every.cams[-1],
        heatmap=every.heatmaps[-1],
        blocks=every,
        fusion=fusion,
        class_names=list(model.class_names),
        evidence=every.evidences[-1] if every.evidences is not None else None,
        evidence_bias=every.evidence_biases[-1] if every.evidence_biases is not None else None,
    )


def _cat_optional(parts: Sequence[Tensor | None]) -> Tensor | None:
    """The chunks' tensors concatenated on the CPU, or None where a chunk has none."""
    if any(part is None for part in parts):
        return None
    return torch.cat([part for part in parts if part is not None]).cpu()


def _chunk(class_index: int | Tensor | None, rows: slice) -> int | Tensor | None:
    """The class indices of a chunk of rows: one index for all, or the chunk's part of per-picture indices."""
    if isinstance(class_index, Tensor) and class_index.numel() > 1:
        return class_index.reshape(-1)[rows]
    return class_index


def _merge(parts: Sequence[BlockExplanation]) -> BlockExplanation:
    """One BlockExplanation of the whole batch from those of its chunks, on the CPU."""

    def cat(lists: Sequence[list[Tensor] | None]) -> list[Tensor] | None:
        if any(part is None for part in lists):
            return None
        return [torch.cat([part[i] for part in lists if part is not None]).cpu() for i in range(len(lists[0] or []))]

    return BlockExplanation(
        logits=torch.cat([p.logits for p in parts]).cpu(),
        class_index=torch.cat([p.class_index for p in parts]).cpu(),
        cams=cat([p.cams for p in parts]) or [],
        means=cat([p.means for p in parts]) or [],
        size=parts[0].size,
        block_logits=cat([p.block_logits for p in parts]),
        block_bias=cat([p.block_bias for p in parts]),
        labels=parts[0].labels,
        evidences=cat([p.evidences for p in parts]),
        evidence_biases=cat([p.evidence_biases for p in parts]),
    )
