"""Where does the network look? Render CAM heatmaps: answer the prompts, or script it.

python where_to_look.py                       # asks, in the original project's order
python where_to_look.py demo                  # bundled cells and weights, offline
python where_to_look.py single --image cell.png [--class Uninfected]
python where_to_look.py multi --loss every --image cells/
python where_to_look.py gender100 --data-dir ~/gender/Dataset [--count 100]
python where_to_look.py overlay --image male100.png female100.png
python where_to_look.py download [--weights-url URL]
python where_to_look.py single --method gradcam++ --image cell.png
python where_to_look.py evaluate --model models/model_malaria_last.pt --data-dir ~/cell_images
python where_to_look.py compare --model a.pt --model b.pt --data-dir ~/gender/Dataset
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import cams
import charts
import evaluation
import gradcams
import render
from model_data import (
    DatasetError,
    FolderSet,
    GenderSet,
    ImageError,
    ImageListSet,
    MalariaSet,
    list_images,
    load_image,
    original_image,
)
from prompts import NoAnswer, ask
from runtime import DEVICE_CHOICES, pick_device
from weights import (
    CheckpointError,
    DownloadError,
    LoadedModel,
    download_weights,
    find_checkpoints,
    load_model,
)

PROJECT = Path(__file__).resolve().parent
DEMO_DIR = PROJECT / "data" / "demo"
MANIFEST_DIR = PROJECT / "data"
COMMANDS = ("single", "multi", "gender100", "overlay", "download", "demo", "evaluate", "compare")
METHODS = ("cam", *gradcams.METHODS)
# Which checkpoint each view uses when no --model is given (the original file names).
MODEL_NAMES = {
    "gender": "model_gender_last",
    "malaria": "model_malaria_last",
    "multi-last": "model_malaria_every_single_loss",
    "multi-every": "model_malaria_every_multi_loss",
}
MANIFESTS = {
    "model_malaria_last": "malaria_testing_filenames_last.json",
    "model_malaria_every_single_loss": "malaria_testing_filenames_every.json",
    "model_malaria_every_multi_loss": "malaria_testing_filenames_every_every.json",
}
BATCH = 32


class UsageError(Exception):
    """A request that cannot be carried out as asked; one line for the user."""


# --------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The scriptable form: a command and flags; with no command, prompts ask."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", choices=COMMANDS, help="what to render (asked if left out)")
    p.add_argument(
        "--model", type=Path, action="append", help="checkpoint (default: found in models/); compare: two or more"
    )
    p.add_argument("--method", choices=METHODS, default="cam", help="heatmap method (default cam: exact for GAP)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=["cam", "gradcam"], help="evaluate: methods")
    p.add_argument("--split", choices=["train", "val", "test"], default="test", help="evaluate/compare: split")
    p.add_argument("--max-images", type=int, help="evaluate/compare: use at most this many images")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (and Score-CAM's masked batch)")
    p.add_argument("--dataset", choices=["malaria", "gender"], help="for single without --model: which model")
    p.add_argument("--loss", choices=["last", "every"], help="for multi without --model: the model's training loss")
    p.add_argument("--image", type=Path, nargs="+", help="image file(s) or folder(s); overlay: two saved maps")
    p.add_argument("--data-dir", type=Path, help="data-set folder (gender100, gender demo pictures, malaria demo)")
    p.add_argument("--class", dest="class_", help="explain this class (name or index) instead of the prediction")
    p.add_argument("--count", type=int, default=100, help="gender100: images per gender (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random picks of test images")
    p.add_argument("--out", type=Path, default=Path("outputs"), help="folder for the PNGs (default outputs/)")
    p.add_argument("--save-npz", action="store_true", help="also write the numbers beside each PNG")
    p.add_argument("--show", action="store_true", help="also open windows (where a display exists)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="auto picks CUDA, then MPS, then CPU")
    p.add_argument("--models-dir", type=Path, default=PROJECT / "models", help="where checkpoints are looked for")
    p.add_argument("--weights-url", help="download source (Drive folder/file, or HTTP(S) .pt/.zip)")
    args = p.parse_args(argv)
    if args.count <= 0 or args.batch_size <= 0:
        p.error("--count and --batch-size must be positive")
    if args.model and len(args.model) > 1 and args.command != "compare":
        p.error("--model is given more than once; only compare takes several models")
    return args


def model_folders(models_dir: Path) -> list[Path]:
    """Where checkpoints are looked for: models/, then the published folder's name beside it."""
    return [models_dir, models_dir.parent / "Where-to-look_models", PROJECT / "Where-to-look_models"]


def resolve_images(paths: Sequence[Path]) -> list[Path]:
    """Expand folders into their image files; every named file must exist."""
    found: list[Path] = []
    for path in paths:
        path = path.expanduser()
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


def class_index_of(answer: str | None, class_names: Sequence[str]) -> int | None:
    """--class as a class index: a name (any case) or a number; None explains the prediction."""
    if answer is None:
        return None
    lowered = [name.lower() for name in class_names]
    if answer.lower() in lowered:
        return lowered.index(answer.lower())
    if answer.isdigit() and int(answer) < len(class_names):
        return int(answer)
    raise UsageError(
        f"--class {answer}: the model's classes are {', '.join(class_names)} (or 0..{len(class_names) - 1})"
    )


# --------------------------------------------------------------------------- output helpers


@dataclass
class Outputs:
    """Names PNGs (and npz files) in one folder without two inputs overwriting each other."""

    folder: Path
    save_npz: bool
    written: list[Path] = field(default_factory=list)
    _used: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
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

    def save(self, fig: object, name: str, numbers: dict[str, object] | None = None) -> Path:
        """Save the figure (and its numbers as .npz when asked), print and remember the path."""
        path = render.save(fig, self.path(name))  # type: ignore[arg-type]
        self.written.append(path)
        print(f"saved {path}")
        if self.save_npz and numbers is not None:
            npz = path.with_suffix(".npz")
            np.savez_compressed(npz, **{k: np.asarray(v) for k, v in numbers.items()})
            print(f"saved {npz}")
        return path


def _method_suffix(method: str) -> str:
    """'' for CAM (the original names), else e.g. '_gradcampp' so methods never overwrite each other."""
    return "" if method == "cam" else "_" + method.replace("+", "p")


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _load_batch(paths: Sequence[Path], size: int, device: torch.device) -> torch.Tensor:
    return torch.stack([load_image(p, size) for p in paths]).to(device)


def explain(
    model: LoadedModel, images: torch.Tensor, method: str, class_index: int | None, batch_size: int = BATCH
) -> cams.Explanation:
    """The last block's map by `method`: exact CAM, or a Grad-CAM-family method at the same layer."""
    if method == "cam":
        return cams.explain_last_block(model.network, images, class_index)
    options = {"batch_size": batch_size} if method == "scorecam" else {}
    result = gradcams.make_method(method, model.network, **options)(images, class_index)
    maps = result.maps.detach()
    return cams.Explanation(result.logits.detach(), result.class_index, maps, cams.heatmap(maps, images.shape[-2:]))


def _batches(items: Sequence[Path], size: int = BATCH):
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------- the views


def render_single(
    model: LoadedModel,
    images: Sequence[Path],
    outputs: Outputs,
    class_index: int | None,
    device: torch.device,
    truths: Sequence[str | None] | None = None,
    method: str = "cam",
) -> list[dict]:
    """PredictSingle: last-block map of each image (CAM or `method`), batched; one PNG per image."""
    rows = []
    truths = list(truths) if truths is not None else [None] * len(images)
    names = model.class_names
    for start, chunk in zip(range(0, len(images), BATCH), _batches(images)):
        result = explain(model, _load_batch(chunk, model.image_size, device), method, class_index)
        probabilities = result.probabilities
        for i, path in enumerate(chunk):
            predicted = int(result.logits[i].argmax())
            shown = int(result.class_index[i])
            title = f"{names[shown]} {probabilities[i, shown]:.1%}"
            caption = path.name if method == "cam" else f"{path.name} ({method})"
            if shown != predicted:
                predicted_text = f"{names[predicted]} {probabilities[i, predicted]:.1%}"
                caption += f"\npredicted {predicted_text}, showing where it sees {names[shown]}"
            truth = truths[start + i]
            if truth is not None:
                caption += f"  (true class: {truth})"
            heat = _np(result.heatmap[i])
            fig = render.single_figure(original_image(path), heat, title, caption)
            numbers = {
                "logits": _np(result.logits[i]),
                "probabilities": _np(probabilities[i]),
                "class_index": shown,
                "predicted_index": predicted,
                "class_names": np.array(names),
                "cam": _np(result.cam[i]),
                "heatmap": heat,
                "method": method,
                "image": str(path),
            }
            png = outputs.save(fig, f"{path.stem}_single{_method_suffix(method)}", numbers)
            rows.append(
                {
                    "image": path,
                    "png": png,
                    "predicted": names[predicted],
                    "probability": float(probabilities[i, predicted]),
                    "heatmap": heat,
                    "truth": truth,
                }
            )
    return rows


@dataclass
class BlockMaps:
    """Every block's map for a batch (exact CAM or another method), with what the titles need."""

    logits: torch.Tensor  # (B, C) the final prediction
    class_index: torch.Tensor  # (B,) the class every map explains
    block_logits: list[torch.Tensor] | None  # each block's own head (NetworkMultiLoss only)
    block_bias: list[torch.Tensor] | None  # each head's bias for the explained class (exact CAM only)
    maps: list[torch.Tensor]  # 4 x (B, h_i, w_i) raw maps
    heatmaps: list[torch.Tensor]  # 4 x (B, H, W) normalised
    means: list[torch.Tensor]  # 4 x (B, h_i, w_i) channel means (the original project's view)
    mean_heatmaps: list[torch.Tensor]
    fused: torch.Tensor  # (B, H, W) the blocks' maps fused into one


def explain_blocks(
    model: LoadedModel, images: torch.Tensor, method: str, class_index: int | None, batch_size: int = BATCH
) -> BlockMaps:
    """The every-block view: exact per-block CAMs for a NetworkMultiLoss, or `method` on each block of either net."""
    network, size = model.network, tuple(images.shape[-2:])
    if method == "cam":
        if model.kind != "every":
            raise UsageError(
                f"{model.path}: the exact every-block CAM needs a NetworkMultiLoss checkpoint (trained with "
                "--network every); for this Network pass --method gradcam (or another) to explain every block"
            )
        r = cams.explain_every_block(network, images, class_index)
        fused = gradcams.fuse_maps(r.cams, size)
        return BlockMaps(
            r.logits, r.class_index, r.block_logits, r.block_bias, r.cams, r.heatmaps, r.means, r.mean_heatmaps, fused
        )
    with torch.no_grad():
        blocks = network.block_outputs(images)
        block_logits = cams.explain_every_block(network, images).block_logits if model.kind == "every" else None
        logits = block_logits[-1] if block_logits else network(images)
    classes = gradcams.pick_classes(logits, class_index)
    options = {"batch_size": batch_size} if method == "scorecam" else {}
    maps = [
        gradcams.make_method(method, network, layer, **options)(images, classes).maps.detach()
        for layer in gradcams.block_layers(network)
    ]
    means = [b.mean(dim=1) for b in blocks]
    return BlockMaps(
        logits=logits,
        class_index=classes,
        block_logits=block_logits,
        block_bias=None,
        maps=maps,
        heatmaps=[cams.heatmap(m, size) for m in maps],
        means=means,
        mean_heatmaps=[cams.heatmap(m, size) for m in means],
        fused=gradcams.fuse_maps(maps, size),
    )


def render_multi(
    model: LoadedModel,
    images: Sequence[Path],
    outputs: Outputs,
    class_index: int | None,
    device: torch.device,
    method: str = "cam",
    batch_size: int = BATCH,
) -> list[Path]:
    """PredictMulti: per block the mean activation and the map through that block, plus their fusion."""
    names = model.class_names
    loss_text = {"every": "every-block loss", "last": "last-block loss"}.get(str(model.checkpoint.get("loss")), "")
    label = "CAM" if method == "cam" else method
    written = []
    for chunk in _batches(images):
        result = explain_blocks(model, _load_batch(chunk, model.image_size, device), method, class_index, batch_size)
        for i, path in enumerate(chunk):
            shown = int(result.class_index[i])
            titles = []
            for b in range(4):
                title = f"block {b + 1} {label}: {names[shown]}"
                if result.block_logits is not None:
                    probs = result.block_logits[b][i].softmax(0)
                    guess = int(probs.argmax())
                    title += f"\nblock predicts {names[guess]} {probs[guess]:.1%}"
                titles.append(title)
            final = result.logits[i].softmax(0)
            predicted = int(final.argmax())
            heading = f"{path.name}: prediction {names[predicted]} {final[predicted]:.1%}"
            if shown != predicted:
                heading += f", maps explain {names[shown]}"
            heading += f"  ({model.path.name}{', ' + loss_text if loss_text else ''})"
            heats = [_np(h[i]) for h in result.heatmaps]
            mean_heats = [_np(h[i]) for h in result.mean_heatmaps]
            fused = _np(result.fused[i])
            fig = render.blocks_figure(original_image(path), mean_heats, heats, titles, heading, fused)
            numbers: dict[str, object] = {
                "logits": _np(result.logits[i]),
                "class_index": shown,
                "predicted_index": predicted,
                "class_names": np.array(names),
                "method": method,
                "fused": fused,
                "image": str(path),
            }
            for b in range(4):
                numbers[f"cam_block{b + 1}"] = _np(result.maps[b][i])
                numbers[f"mean_block{b + 1}"] = _np(result.means[b][i])
                numbers[f"heatmap_block{b + 1}"] = heats[b]
                numbers[f"mean_heatmap_block{b + 1}"] = mean_heats[b]
                if result.block_logits is not None:
                    numbers[f"logits_block{b + 1}"] = _np(result.block_logits[b][i])
                if result.block_bias is not None:
                    numbers[f"bias_block{b + 1}"] = _np(result.block_bias[b][i])
            name = f"{path.stem}_multi_{model.path.name.split('.')[0]}{_method_suffix(method)}"
            written.append(outputs.save(fig, name, numbers))
    return written


@dataclass
class GenderMaps:
    """Gender100's result: per gender the averaged heatmap, the mean face and the files used."""

    heatmaps: dict[str, np.ndarray]
    faces: dict[str, np.ndarray]
    files: dict[str, list[str]]


def gender100_maps(
    model: LoadedModel,
    data_dir: Path,
    count: int,
    seed: int,
    class_index: int | None,
    device: torch.device,
    method: str = "cam",
) -> GenderMaps:
    """Average the maps of `count` seeded-random test faces per gender, in batches, one model load."""
    test = GenderSet(data_dir, "test", max_samples_per_class=count, seed=seed, size=model.image_size)
    heatmaps, faces, files = {}, {}, {}
    for label, gender in enumerate(GenderSet.CLASSES):
        paths = [p for p, y in test.samples if y == label]
        if not paths:
            raise DatasetError(f"{data_dir}: no {gender} test images")
        total_heat = torch.zeros((model.image_size, model.image_size))
        total_face = torch.zeros((3, model.image_size, model.image_size))
        for chunk in _batches(paths):
            images = _load_batch(chunk, model.image_size, device)
            result = explain(model, images, method, class_index)
            total_heat += result.heatmap.sum(0).cpu()
            total_face += images.sum(0).cpu()
        heatmaps[gender] = (total_heat / len(paths)).numpy()
        faces[gender] = (total_face / len(paths)).permute(1, 2, 0).numpy()
        files[gender] = [p.name for p in paths]
    return GenderMaps(heatmaps, faces, files)


def render_gender100(maps: GenderMaps, outputs: Outputs, model: LoadedModel) -> Path:
    """The two averaged maps side by side over their mean faces."""
    genders = list(maps.heatmaps)
    titles = [f"{g}: mean CAM of {len(maps.files[g])} test faces" for g in genders]
    fig = render.gender100_figure(
        [maps.faces[g] for g in genders], [maps.heatmaps[g] for g in genders], titles, f"Gender100 ({model.path.name})"
    )
    numbers = {f"heatmap_{g.lower()}": maps.heatmaps[g] for g in genders}
    numbers.update({f"files_{g.lower()}": np.array(maps.files[g]) for g in genders})
    return outputs.save(fig, "gender100", numbers)


def render_overlay_from_maps(maps: GenderMaps, outputs: Outputs) -> Path:
    """OverlayMaleFemale from maps just made: their blend, and male minus female."""
    male, female = maps.heatmaps["Male"], maps.heatmaps["Female"]
    from matplotlib import colormaps

    jet = colormaps[render.CMAP]
    blended = (jet(male)[..., :3] + jet(female)[..., :3]) / 2
    face = (maps.faces["Male"] + maps.faces["Female"]) / 2
    fig = render.blend_figure(blended, "Gender100 maps blended (male + female) / 2", male - female, face)
    return outputs.save(
        fig, "gender_overlay", {"heatmap_male": male, "heatmap_female": female, "difference": male - female}
    )


def render_overlay_from_files(first: Path, second: Path, outputs: Outputs) -> Path:
    """OverlayMaleFemale from two saved pictures of the same size: their pixel average."""
    import matplotlib.image as mpimg

    pictures = []
    for path in (first, second):
        try:
            pictures.append(mpimg.imread(path)[..., :3].astype(np.float32))
        except (OSError, ValueError, SyntaxError) as error:
            raise ImageError(f"{path}: cannot read image ({error})") from None
    if pictures[0].shape != pictures[1].shape:
        sizes = f"{pictures[0].shape[:2]} vs {pictures[1].shape[:2]}"
        raise ImageError(f"{first} and {second} differ in size ({sizes}); blend two outputs of one run")
    scale = 255.0 if pictures[0].max() > 1.0 else 1.0
    blended = np.clip((pictures[0] + pictures[1]) / 2 / scale, 0, 1)
    fig = render.blend_figure(blended, f"{first.name} + {second.name}")
    return outputs.save(fig, "overlay", {"blended": blended})


# --------------------------------------------------------------------------- models


def choose_model(args: argparse.Namespace, view: str, device: torch.device) -> LoadedModel:
    """--model if given, else the view's checkpoint from models/ (or the published folder)."""
    if args.model:
        return load_model(args.model[0], device)
    name = MODEL_NAMES[view]
    found = find_checkpoints(model_folders(args.models_dir))
    if name not in found:
        raise CheckpointError(
            f"no {name}.pt in {args.models_dir}: train it with model_main.py, run 'where_to_look.py download', "
            "or pass --model PATH"
        )
    return load_model(found[name], device)


# --------------------------------------------------------------------------- numbers


def evaluation_set(model: LoadedModel, data_dir: Path | None, split: str) -> ImageListSet:
    """The split of the data set a model was trained on: malaria, gender, or a class folder."""
    if data_dir is None:
        raise UsageError("pass the data set with --data-dir PATH")
    names = list(model.class_names)
    kind = model.checkpoint.get("dataset")
    if kind == "malaria" or names == list(MalariaSet.CLASSES):
        return MalariaSet(data_dir, split, size=model.image_size)
    if kind == "gender" or names == list(GenderSet.CLASSES):
        return GenderSet(data_dir, split, size=model.image_size)
    return FolderSet(data_dir, split, size=model.image_size)


def run_evaluate(args: argparse.Namespace, outputs: Outputs, device: torch.device) -> list[Path]:
    """How good are the model and its heatmaps: a table, a JSON file and a chart."""
    model = choose_model(args, "malaria", device)
    dataset = evaluation_set(model, args.data_dir, args.split)
    result = evaluation.evaluate(model, dataset, args.methods, device, args.batch_size, args.max_images)
    result.update(model=str(model.path), data_dir=str(args.data_dir), split=args.split)
    print(evaluation.format_table(result))
    stem = f"evaluate_{model.path.name.split('.')[0]}_{args.split}"
    json_path = outputs.folder / f"{stem}.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"saved {json_path}")
    outputs.save(charts.metrics_chart(result, f"{model.path.name} on {args.split} ({args.data_dir})"), stem)
    return outputs.written


def run_compare(args: argparse.Namespace, outputs: Outputs, device: torch.device) -> list[Path]:
    """Do two models trained alike look at the same places? Numbers per image pair, maps side by side."""
    if not args.model or len(args.model) < 2:
        raise UsageError("compare needs two or more models: --model A.pt --model B.pt")
    models = [load_model(path, device) for path in args.model]
    names = {m.class_names == models[0].class_names for m in models}
    if names != {True}:
        raise UsageError("compare needs models of the same classes")
    dataset = evaluation_set(models[0], args.data_dir, args.split)
    class_index = class_index_of(args.class_, models[0].class_names)
    result = evaluation.compare_models(
        models, dataset, args.method, device, args.batch_size, args.max_images, class_index
    )
    numbers = result["numbers"]
    for pair, values in numbers["pairs"].items():
        rho = "n/a" if values["spearman"] is None else f"{values['spearman']:.3f}"
        print(f"{pair}: mean Spearman rho {rho}, mean top-10% IoU {values['top10_iou']:.3f}")
    json_path = outputs.folder / "compare.json"
    json_path.write_text(json.dumps(numbers, indent=1) + "\n")
    print(f"saved {json_path}")
    arrays = {f"{m}_{c}": a for m, per in result["maps"].items() for c, a in per.items()}
    arrays.update({f"std_{c}": a for c, a in result["std"].items()})
    outputs.save(charts.compare_figure(result, f"{args.method} maps on {args.split}"), "compare", arrays)
    return outputs.written


# --------------------------------------------------------------------------- demo


def demo_cells(folder: Path = DEMO_DIR) -> list[tuple[Path, str]]:
    """The bundled demo cells as (path, true class)."""
    cells = (
        [(p, cls) for cls in ("Parasitized", "Uninfected") for p in list_images(folder / cls)]
        if folder.is_dir()
        else []
    )
    if not cells:
        raise DatasetError(
            f"{folder}: the bundled demo cells are missing (data/demo/Parasitized, data/demo/Uninfected)"
        )
    return cells


def run_demo(args: argparse.Namespace, device: torch.device) -> list[Path]:
    """Single-block heatmaps of every demo cell, every-block ones for a few, and a contact sheet."""
    outputs = Outputs(args.out, args.save_npz)
    cells = demo_cells()
    model = choose_model(args, "malaria", device)
    rows = render_single(model, [p for p, _ in cells], outputs, None, device, [t for _, t in cells])
    correct = 0
    print(f"\n{'cell':<52}{'true':<13}{'predicted':<22}")
    for row in rows:
        ok = row["predicted"] == row["truth"]
        correct += ok
        verdict = "" if ok else "  <- wrong"
        print(f"{row['image'].name:<52}{row['truth']:<13}{row['predicted']} {row['probability']:.1%}{verdict}")
    print(f"{correct} of {len(rows)} demo cells classified correctly by {model.path.name}\n")
    fig = render.contact_sheet(
        [original_image(r["image"]) for r in rows],
        [r["heatmap"] for r in rows],
        [f"true {r['truth']}\npred {r['predicted']} {r['probability']:.0%}" for r in rows],
        [r["predicted"] == r["truth"] for r in rows],
    )
    fig.suptitle(f"Where the network looks: last-block CAM of the demo cells ({model.path.name})")
    outputs.save(fig, "demo_contact_sheet")
    few = [p for p, t in cells if t == "Parasitized"][:2] + [p for p, t in cells if t == "Uninfected"][:1]
    for view in ("multi-last", "multi-every"):
        render_multi(choose_model(args, view, device), few, outputs, None, device)
    return outputs.written


# --------------------------------------------------------------------------- prompts


def ensure_models(args: argparse.Namespace) -> None:
    """The seed's first question: offer the download when no checkpoint is found at all."""
    if args.model or find_checkpoints(model_folders(args.models_dir)):
        return
    answer = ask(
        "No trained models found. Download the pretrained models from Google Drive? (Y/N)",
        "'download' or --model PATH",
        ["Y", "N"],
    )
    if answer == "N":
        raise CheckpointError("no models: train one with model_main.py, or pass --model PATH")
    download_weights(args.weights_url, args.models_dir)


def _folder(answer: str) -> str | None:
    return None if Path(answer).expanduser().is_dir() else f"{answer}: no such folder, please try again."


def _file(answer: str) -> str | None:
    return None if Path(answer).expanduser().exists() else f"{answer}: no such file or folder, please try again."


def complete_with_prompts(args: argparse.Namespace) -> argparse.Namespace:
    """Ask, in the seed's order, for the command and whatever it still needs."""
    ensure_models(args)
    letter = ask(
        "Gender (A), Malaria (B), or other features (C: Gender100 / OverlayMaleFemale)?",
        "a command: single, multi, gender100 or overlay",
        ["A", "B", "C"],
    )
    if letter == "C":
        other = ask("Gender100 (A) or OverlayMaleFemale (B)?", "gender100 or overlay", ["A", "B"])
        args.command = "gender100" if other == "A" else "overlay"
        if args.command == "gender100" and args.data_dir is None:
            args.data_dir = Path(
                ask(
                    "Path to the gender data set (the Dataset/ folder or its parent):", "--data-dir PATH", check=_folder
                )
            ).expanduser()
        if args.command == "overlay" and args.image is None:
            first = ask("Path of the saved male Gender100 picture:", "--image MALE.png FEMALE.png", check=_file)
            second = ask("Path of the saved female Gender100 picture:", "--image MALE.png FEMALE.png", check=_file)
            args.image = [Path(first).expanduser(), Path(second).expanduser()]
        return args
    args.dataset = "gender" if letter == "A" else "malaria"
    own = ask("Your own picture (A) or the demo pictures (B)?", "--image PATH", ["A", "B"]) == "A"
    if own and args.image is None:
        args.image = [
            Path(ask("Path of your picture (or a folder of pictures):", "--image PATH", check=_file)).expanduser()
        ]
    args.command = "single"
    if args.dataset == "malaria":
        every = (
            ask("Heatmap of the last conv layer only (A) or of every layer (B)?", "single or multi", ["A", "B"]) == "B"
        )
        if every:
            args.command = "multi"
            if args.loss is None:
                loss = ask(
                    "The model trained with last-layer loss (A) or with every-layer loss (B)?",
                    "--loss {last,every}",
                    ["A", "B"],
                )
                args.loss = "last" if loss == "A" else "every"
    if not own:
        args.demo_pictures = True
    return args


def demo_pictures(args: argparse.Namespace, model: LoadedModel) -> tuple[list[Path], list[str | None]]:
    """The seed's demo pictures: manifest test cells (malaria) or 10 random test faces per gender."""
    if args.dataset == "gender":
        if args.data_dir is None:
            args.data_dir = Path(
                ask(
                    "Path to the gender data set (the Dataset/ folder or its parent):", "--data-dir PATH", check=_folder
                )
            ).expanduser()
        test = GenderSet(args.data_dir, "test", max_samples_per_class=10, seed=args.seed)
        return [p for p, _ in test.samples], [test.class_names[y] for _, y in test.samples]
    if args.data_dir is None:
        answer = ask(
            "Path to the malaria data set (press Enter for the bundled demo cells):",
            "--data-dir PATH",
            check=lambda a: None if not a else _folder(a),
        )
        if not answer:
            cells = demo_cells()
            return [p for p, _ in cells], [t for _, t in cells]
        args.data_dir = Path(answer).expanduser()
    manifest = MANIFEST_DIR / MANIFESTS.get(model.path.name.split(".")[0], "malaria_testing_filenames_last.json")
    if not manifest.is_file():
        raise DatasetError(f"{manifest}: no test-split manifest; train the model with model_main.py first")
    listed = json.loads(manifest.read_text())
    rng = np.random.default_rng(args.seed)
    picked: list[Path] = []
    truths: list[str | None] = []
    for key, cls in (("InfectedFilenames", "Parasitized"), ("UninfectedFilenames", "Uninfected")):
        names = sorted(listed.get(key, []))
        chosen = [names[i] for i in sorted(rng.permutation(len(names))[:10])]
        folder = next((f for f in (args.data_dir / cls, args.data_dir / "cell_images" / cls) if f.is_dir()), None)
        if folder is None:
            raise DatasetError(f"{args.data_dir}: expected {cls}/ (or cell_images/{cls}/) in it")
        picked += [folder / n for n in chosen]
        truths += [cls] * len(chosen)
    return picked, truths


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> list[Path]:
    """Carry out one command; returns the PNGs written."""
    if args.command == "download":
        installed = download_weights(args.weights_url, args.models_dir)
        for path in installed:
            print(f"installed {path}")
        return []
    device = pick_device(args.device)
    if args.command == "demo":
        if args.out == Path("outputs"):
            args.out = Path("outputs") / "demo"  # keep the demo's pictures apart from the user's own
        return run_demo(args, device)
    outputs = Outputs(args.out, args.save_npz)
    if args.command == "overlay":
        if not args.image or len(args.image) != 2:
            raise UsageError("overlay needs two saved pictures: --image MALE.png FEMALE.png (or run gender100)")
        render_overlay_from_files(args.image[0], args.image[1], outputs)
        return outputs.written
    if args.command in ("evaluate", "compare"):
        return run_evaluate(args, outputs, device) if args.command == "evaluate" else run_compare(args, outputs, device)
    if args.command == "gender100":
        if args.data_dir is None:
            raise UsageError("gender100 needs the gender data set: pass --data-dir PATH")
        model = choose_model(args, "gender", device)
        class_index = class_index_of(args.class_, model.class_names)
        maps = gender100_maps(model, args.data_dir, args.count, args.seed, class_index, device, args.method)
        render_gender100(maps, outputs, model)
        render_overlay_from_maps(maps, outputs)
        return outputs.written
    view = args.dataset or "malaria"
    if args.command == "multi":
        view = "multi-every" if args.loss == "every" else "multi-last"
    model = choose_model(args, view, device)
    class_index = class_index_of(args.class_, model.class_names)
    truths: list[str | None] | None = None
    if getattr(args, "demo_pictures", False):
        images, truths = demo_pictures(args, model)
    elif args.image:
        images = resolve_images(args.image)
    else:
        raise UsageError(f"{args.command} needs pictures: pass --image FILE|FOLDER")
    if args.command == "multi":
        render_multi(model, images, outputs, class_index, device, args.method, args.batch_size)
    else:
        render_single(model, images, outputs, class_index, device, truths, args.method)
    return outputs.written


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: prompts for what flags left open; one line and exit 2 on any bad input."""
    args = parse_args(argv)
    try:
        if args.command is None:
            args = complete_with_prompts(args)
        written = run(args)
        if args.show and written and not render.show_files(written):
            print("no display found: the pictures are saved, not shown")
    except (
        NoAnswer,
        ImageError,
        DatasetError,
        CheckpointError,
        DownloadError,
        UsageError,
        RuntimeError,
        OSError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
