"""The picture commands of where_to_look.py: single, multi, gender100, overlay, demo, download.

Each `run_<command>(args)` takes the parsed flags of its sub-command and returns the
files it wrote. Data flows one way: image files -> tensors (model_data) -> network ->
maps (cams, gradcams) -> figures (render) and npz files. Only what a command needs is
imported: the Grad-CAM family inside the functions that use it, gdown only to download.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import cams
import render
from model_data import (
    DatasetError,
    GenderSet,
    ImageError,
    MalariaSet,
    list_images,
    load_image,
    original_image,
)
from runtime import pick_device
from weights import CheckpointError, LoadedModel, checkpoint_name, find_checkpoints, load_model

PROJECT = Path(__file__).resolve().parent
DEMO_DIR = PROJECT / "data" / "demo"
BUNDLED_DIR = PROJECT / "models" / "bundled"
# Where the original project's layout keeps the test-split manifests (the fallback).
MANIFEST_DIR = PROJECT / "data"
# Which checkpoint each view uses when no --model is given (the original file names).
MODEL_NAMES = {
    "gender": "model_gender_last",
    "malaria": "model_malaria_last",
    "multi-last": "model_malaria_every_single_loss",
    "multi-every": "model_malaria_every_multi_loss",
}
# The original project's manifest names in data/, for checkpoints that have none beside them.
SEED_MANIFESTS = {
    "model_malaria_last": "malaria_testing_filenames_last.json",
    "model_malaria_every_single_loss": "malaria_testing_filenames_every.json",
    "model_malaria_every_multi_loss": "malaria_testing_filenames_every_every.json",
    "model_gender_last": "gender_testing_filenames_last.json",
}
BATCH = 32


class UsageError(Exception):
    """A request that cannot be carried out as asked; one line for the user."""


# --------------------------------------------------------------------------- inputs


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


def load_batch(paths: Sequence[Path], model: LoadedModel, device: torch.device) -> torch.Tensor:
    """Images as the model's input batch, preprocessed as in its training (squash or centre crop)."""
    return torch.stack([load_image(p, model.image_size, model.preprocess) for p in paths]).to(device)


def batches(items: Sequence[Path], size: int = BATCH) -> Iterator[Sequence[Path]]:
    """Consecutive chunks of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------- models


def model_folders(models_dir: Path) -> list[Path]:
    """Where checkpoints are looked for, in order: the user's models/, the published folder, then the bundled ones."""
    return [models_dir, models_dir.parent / "Where-to-look_models", PROJECT / "Where-to-look_models", BUNDLED_DIR]


def is_bundled(path: Path) -> bool:
    """True for a checkpoint shipped in models/bundled/."""
    return path.resolve().parent == BUNDLED_DIR.resolve()


def describe(model: LoadedModel) -> str:
    """Which file a command uses, said once: 'models/bundled/x.pt (bundled)'."""
    try:
        shown = str(model.path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        shown = str(model.path)
    return f"{shown} (bundled)" if is_bundled(model.path) else shown


def choose_model(args: argparse.Namespace, view: str, device: torch.device, bundled_only: bool = False) -> LoadedModel:
    """--model if given, else the view's checkpoint: one the user trained or downloaded first, the bundled one after."""
    if getattr(args, "model", None):
        model = load_model(args.model[0] if isinstance(args.model, list) else args.model, device)
    else:
        name = MODEL_NAMES[view]
        folders = [BUNDLED_DIR] if bundled_only else model_folders(args.models_dir)
        found = find_checkpoints(folders)
        if name not in found:
            where = "models/bundled/" if bundled_only else f"{args.models_dir} or models/bundled/"
            raise CheckpointError(
                f"no {name}.pt in {where}: train it with model_main.py, run 'where_to_look.py download', "
                "or pass --model PATH"
            )
        model = load_model(found[name], device)
    print(f"model: {describe(model)}")
    return model


def model_manifest(model: LoadedModel) -> Path | None:
    """A model's test-split file list: beside its checkpoint, else the original project's name in data/."""
    name = checkpoint_name(model.path)
    beside = model.path.with_name(f"{name}.test_files.json")
    if beside.is_file():
        return beside
    seed = MANIFEST_DIR / SEED_MANIFESTS.get(name, f"{name}_testing_filenames.json")
    return seed if seed.is_file() else None


# --------------------------------------------------------------------------- output


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

    def save(self, fig: object, name: str, numbers: dict[str, object] | None = None, always_npz: bool = False) -> Path:
        """Save the figure (and its numbers as .npz when asked, or always), print and remember the path."""
        path = render.save(fig, self.path(name))  # type: ignore[arg-type]
        self.written.append(path)
        print(f"saved {path}")
        if numbers is not None and (self.save_npz or always_npz):
            npz = path.with_suffix(".npz")
            np.savez_compressed(npz, **{k: np.asarray(v) for k, v in numbers.items()})
            print(f"saved {npz}")
        return path

    def json(self, content: object, name: str) -> Path:
        """Write a JSON file beside the pictures, print and return its path."""
        path = self.folder / f"{name}.json"
        path.write_text(json.dumps(content, indent=1) + "\n")
        print(f"saved {path}")
        return path


def method_suffix(method: str) -> str:
    """'' for CAM (the original names), else e.g. '_gradcampp' so methods never overwrite each other."""
    return "" if method == "cam" else "_" + method.replace("+", "p")


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a float numpy array on the CPU."""
    return tensor.detach().float().cpu().numpy()


# --------------------------------------------------------------------------- single


def explain(
    model: LoadedModel, images: torch.Tensor, method: str, class_index: int | None, batch_size: int = BATCH
) -> cams.Explanation:
    """The last block's map by `method`: exact CAM, or a Grad-CAM-family method at the same layer."""
    if method == "cam":
        return cams.explain_last_block(model.network, images, class_index)
    import gradcams  # the Grad-CAM family only where a command asks for it

    options = {"batch_size": batch_size} if method == "scorecam" else {}
    result = gradcams.make_method(method, model.network, **options)(images, class_index)
    maps = result.maps.detach()
    return cams.Explanation(result.logits.detach(), result.class_index, maps, cams.heatmap(maps, images.shape[-2:]))


def render_single(
    model: LoadedModel,
    images: Sequence[Path],
    outputs: Outputs,
    class_index: int | None,
    device: torch.device,
    truths: Sequence[str | None] | None = None,
    method: str = "cam",
    batch_size: int = BATCH,
) -> list[dict]:
    """PredictSingle: last-block map of each image (CAM or `method`), batched; one PNG per image."""
    rows = []
    truths = list(truths) if truths is not None else [None] * len(images)
    names = model.class_names
    for start, chunk in zip(range(0, len(images), BATCH), batches(images)):
        result = explain(model, load_batch(chunk, model, device), method, class_index, batch_size)
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
            heat = as_numpy(result.heatmap[i])
            picture = original_image(path, model.preprocess)
            fig = render.single_figure(picture, heat, title, caption)
            numbers = {
                "logits": as_numpy(result.logits[i]),
                "probabilities": as_numpy(probabilities[i]),
                "class_index": shown,
                "predicted_index": predicted,
                "class_names": np.array(names),
                "cam": as_numpy(result.cam[i]),
                "heatmap": heat,
                "method": method,
                "image": str(path),
            }
            png = outputs.save(fig, f"{path.stem}_single{method_suffix(method)}", numbers)
            rows.append(
                {
                    "image": path,
                    "png": png,
                    "picture": picture,
                    "predicted": names[predicted],
                    "probability": float(probabilities[i, predicted]),
                    "heatmap": heat,
                    "truth": truth,
                }
            )
    return rows


# --------------------------------------------------------------------------- multi


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
    fused: torch.Tensor  # (B, H, W) in [0, 1]: the blocks' maps fused by `rule` at the input's size
    fused_cam: torch.Tensor  # (B, h, w): the same fusion at the finest resolution of the blocks it uses
    rule: str  # the fusion rule (cams.FUSION_RULES)


def explain_blocks(
    model: LoadedModel,
    images: torch.Tensor,
    method: str,
    class_index: int | None,
    batch_size: int = BATCH,
    fuse: str = cams.DEFAULT_FUSION,
) -> BlockMaps:
    """The every-block view: exact per-block CAMs for a NetworkMultiLoss, or `method` on each block of either net."""
    import gradcams

    network, size = model.network, tuple(images.shape[-2:])
    if method == "cam":
        if model.kind != "every":
            raise UsageError(
                f"{model.path}: the exact every-block CAM needs a NetworkMultiLoss checkpoint (trained with "
                "--network every); for this Network pass --method gradcam (or another) to explain every block"
            )
        r = cams.explain_every_block(network, images, class_index)
        weights = r.block_probabilities
        return BlockMaps(
            r.logits,
            r.class_index,
            r.block_logits,
            r.block_bias,
            r.cams,
            r.heatmaps,
            r.means,
            r.mean_heatmaps,
            fused=cams.fuse(r.cams, size, fuse, weights),
            fused_cam=cams.fuse(r.cams, None, fuse, weights),
            rule=fuse,
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
    # A Network has one head: every block gets its probability, so 'confidence' weighs them alike.
    weights = cams.block_probabilities(block_logits or [logits] * len(maps), classes)
    return BlockMaps(
        logits=logits,
        class_index=classes,
        block_logits=block_logits,
        block_bias=None,
        maps=maps,
        heatmaps=[cams.heatmap(m, size) for m in maps],
        means=means,
        mean_heatmaps=[cams.heatmap(m, size) for m in means],
        fused=cams.fuse(maps, size, fuse, weights),
        fused_cam=cams.fuse(maps, None, fuse, weights),
        rule=fuse,
    )


def render_multi(
    model: LoadedModel,
    images: Sequence[Path],
    outputs: Outputs,
    class_index: int | None,
    device: torch.device,
    method: str = "cam",
    batch_size: int = BATCH,
    fuse: str = cams.DEFAULT_FUSION,
) -> list[Path]:
    """PredictMulti: per block the mean activation and the map through that block, plus their fusion (rule `fuse`)."""
    names = model.class_names
    loss_text = {"every": "every-block loss", "last": "last-block loss"}.get(str(model.checkpoint.get("loss")), "")
    label = "CAM" if method == "cam" else method
    written = []
    for chunk in batches(images):
        result = explain_blocks(model, load_batch(chunk, model, device), method, class_index, batch_size, fuse)
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
            heats = [as_numpy(h[i]) for h in result.heatmaps]
            mean_heats = [as_numpy(h[i]) for h in result.mean_heatmaps]
            fused = as_numpy(result.fused[i])
            picture = original_image(path, model.preprocess)
            fig = render.blocks_figure(
                picture, mean_heats, heats, titles, heading, fused, fused_title=f"fused ({fuse})"
            )
            numbers: dict[str, object] = {
                "logits": as_numpy(result.logits[i]),
                "probabilities": as_numpy(final),
                "class_index": shown,
                "predicted_index": predicted,
                "class_names": np.array(names),
                "method": method,
                "image": str(path),
                # The last block's map under the single view's names, so that both views' files read alike.
                "cam": as_numpy(result.maps[-1][i]),
                "heatmap": heats[-1],
                "cam_fused": as_numpy(result.fused_cam[i]),
                "heatmap_fused": fused,
                "fusion_rule": fuse,
            }
            for b in range(4):
                numbers[f"cam_block{b + 1}"] = as_numpy(result.maps[b][i])
                numbers[f"mean_block{b + 1}"] = as_numpy(result.means[b][i])
                numbers[f"heatmap_block{b + 1}"] = heats[b]
                numbers[f"mean_heatmap_block{b + 1}"] = mean_heats[b]
                if result.block_logits is not None:
                    numbers[f"logits_block{b + 1}"] = as_numpy(result.block_logits[b][i])
                if result.block_bias is not None:
                    numbers[f"bias_block{b + 1}"] = as_numpy(result.block_bias[b][i])
            name = f"{path.stem}_multi_{checkpoint_name(model.path)}{method_suffix(method)}"
            written.append(outputs.save(fig, name, numbers))
    return written


# --------------------------------------------------------------------------- gender100 and overlay

GENDERS = GenderSet.CLASSES  # ("Female", "Male"), the class order of the gender models


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
    for label, gender in enumerate(GENDERS):
        paths = [p for p, y in test.samples if y == label]
        if not paths:
            raise DatasetError(f"{data_dir}: no {gender} test images (expected Dataset/Test/{gender}/)")
        if len(paths) < count:
            print(f"note: only {len(paths)} {gender} test faces in {data_dir}: averaging all {len(paths)}")
        total_heat = torch.zeros((model.image_size, model.image_size))
        total_face = torch.zeros((3, model.image_size, model.image_size))
        for chunk in batches(paths):
            images = load_batch(chunk, model, device)
            result = explain(model, images, method, class_index)
            total_heat += result.heatmap.sum(0).cpu()
            total_face += images.sum(0).cpu()
        heatmaps[gender] = (total_heat / len(paths)).numpy()
        faces[gender] = (total_face / len(paths)).permute(1, 2, 0).numpy()
        files[gender] = [str(p) for p in paths]
    return GenderMaps(heatmaps, faces, files)


def _display_face(face: np.ndarray, aspect: float) -> np.ndarray:
    """A mean face at the pictures' own width/height ratio (a squashed input is drawn unsquashed)."""
    if abs(aspect - 1.0) < 1e-3:
        return face
    from PIL import Image

    height = face.shape[0]
    width = max(1, round(height * aspect))
    picture = Image.fromarray(np.clip(face * 255, 0, 255).astype(np.uint8))
    return np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR)).astype(np.float32) / 255


def _aspect(model: LoadedModel, files: Sequence[str]) -> float:
    """Width/height of what the network saw: 1 for a centre crop, else the first picture's own ratio."""
    if model.preprocess == "center-crop" or not files:
        return 1.0
    picture = original_image(files[0])
    return picture.shape[1] / picture.shape[0]


def render_gender100(maps: GenderMaps, outputs: Outputs, model: LoadedModel) -> list[Path]:
    """The two averaged maps side by side over their mean faces, and each gender's alone with its numbers.

    Each gender's numbers are always saved (gender100_male.npz, gender100_female.npz): overlay reads them.
    """
    aspect = _aspect(model, maps.files[GENDERS[0]])
    faces = {g: _display_face(maps.faces[g], aspect) for g in GENDERS}
    titles = [f"{g}: mean map of {len(maps.files[g])} test faces" for g in GENDERS]
    heading = f"Gender100 ({model.path.name})"
    fig = render.gender100_figure([faces[g] for g in GENDERS], [maps.heatmaps[g] for g in GENDERS], titles, heading)
    numbers: dict[str, object] = {f"heatmap_{g.lower()}": maps.heatmaps[g] for g in GENDERS}
    numbers.update({f"face_{g.lower()}": maps.faces[g] for g in GENDERS})
    numbers.update({f"files_{g.lower()}": np.array(maps.files[g]) for g in GENDERS})
    written = [outputs.save(fig, "gender100", numbers, always_npz=True)]
    for gender, title in zip(GENDERS, titles):
        fig = render.gender100_figure([faces[gender]], [maps.heatmaps[gender]], [title], heading)
        one = {
            "gender": gender,
            "heatmap": maps.heatmaps[gender],
            "face": maps.faces[gender],
            "aspect": aspect,
            "files": np.array(maps.files[gender]),
            "model": str(model.path),
        }
        written.append(outputs.save(fig, f"gender100_{gender.lower()}", one, always_npz=True))
    return written


def render_overlay(male: np.ndarray, female: np.ndarray, face: np.ndarray, outputs: Outputs, source: str) -> Path:
    """OverlayMaleFemale: both maps blended over the mean face of both genders, and male minus female."""
    blended = (male + female) / 2
    fig = render.blend_figure(face, blended, male - female, f"Gender100 maps blended, (male + female) / 2 ({source})")
    numbers = {"heatmap_male": male, "heatmap_female": female, "blended": blended, "difference": male - female}
    return outputs.save(fig, "gender_overlay", numbers)


def read_gender100(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(male map, female map, mean face of both, as drawn) from gender100's results; anything else is refused.

    Accepts gender100.npz (both maps), or gender100_male.npz and gender100_female.npz,
    or the PNGs that gender100 wrote beside those npz files.
    """
    needs = (
        "overlay needs Gender100 results: gender100_male.npz and gender100_female.npz (or gender100.npz, or the "
        "PNGs beside them) as written by `where_to_look.py gender100`"
    )
    maps: dict[str, np.ndarray] = {}
    faces: dict[str, np.ndarray] = {}
    aspect = 1.0
    for path in paths:
        npz = path.with_suffix(".npz")
        if not npz.is_file():
            raise UsageError(f"{path}: no Gender100 numbers ({npz.name} missing); {needs}")
        try:
            with np.load(npz) as data:
                content = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError) as error:
            raise UsageError(f"{npz}: cannot read it ({error}); {needs}") from None
        if "heatmap_male" in content and "heatmap_female" in content:
            maps.update(Male=content["heatmap_male"], Female=content["heatmap_female"])
            faces.update({g: content[f"face_{g.lower()}"] for g in GENDERS if f"face_{g.lower()}" in content})
        elif "gender" in content and "heatmap" in content:
            gender = str(content["gender"])
            maps[gender] = content["heatmap"]
            if "face" in content:
                faces[gender] = content["face"]
            aspect = float(content.get("aspect", 1.0))
        else:
            raise UsageError(f"{npz}: not a Gender100 result; {needs}")
    if set(maps) != set(GENDERS):
        missing = ", ".join(sorted(set(GENDERS) - set(maps)))
        raise UsageError(f"the {missing} map is missing; {needs}")
    if maps["Male"].shape != maps["Female"].shape:
        raise UsageError(f"the two maps differ in size ({maps['Male'].shape} vs {maps['Female'].shape}); {needs}")
    if len(faces) == 2:
        face = (faces["Male"] + faces["Female"]) / 2
    else:
        face = np.full((*maps["Male"].shape, 3), 0.5, dtype=np.float32)  # mid grey where no face was saved
    return maps["Male"], maps["Female"], _display_face(face, aspect)


# --------------------------------------------------------------------------- demo pictures


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


def manifest_cells(model: LoadedModel, data_dir: Path, seed: int, per_class: int = 10) -> list[tuple[Path, str]]:
    """`per_class` seeded test cells per class from the model's test-split manifest, found in data_dir.

    When the manifest is missing, or none of its cells are in data_dir (a user's own cells),
    they come from data_dir's own test split instead: `split_cells`.
    """
    manifest = model_manifest(model)
    if manifest is None:
        return split_cells(data_dir, seed, per_class, f"{model.path.name} has no test-split manifest")
    listed = json.loads(manifest.read_text())
    rng = np.random.default_rng(seed)
    picked: list[tuple[Path, str]] = []
    for key, cls in (("InfectedFilenames", "Parasitized"), ("UninfectedFilenames", "Uninfected")):
        names = sorted(listed.get(key, []))
        chosen = [names[i] for i in sorted(rng.permutation(len(names))[:per_class])]
        folder = next((f for f in (data_dir / cls, data_dir / "cell_images" / cls) if f.is_dir()), None)
        if folder is None:
            raise DatasetError(f"{data_dir}: expected {cls}/ (or cell_images/{cls}/) in it")
        present = [name for name in chosen if (folder / name).is_file()]
        if present and len(present) < len(chosen):
            print(f"note: {len(chosen) - len(present)} {cls} test cells of {manifest.name} are not in {folder}")
        picked += [(folder / name, cls) for name in present]
    if not picked:
        return split_cells(data_dir, seed, per_class, f"none of the test cells listed in {manifest.name} are there")
    return picked


def split_cells(data_dir: Path, seed: int, per_class: int, why: str) -> list[tuple[Path, str]]:
    """`per_class` seeded cells per class of data_dir's own test split (the trainer's patient rule), else of all."""
    dataset = MalariaSet(data_dir, "test")
    where = "its own test split (patients picked by the same rule as in training)"
    if not dataset.samples:
        dataset = MalariaSet(data_dir, "all")
        where = "all its cells (none of its patients falls in the test split: the model may have seen them)"
    print(f"note: {why}: the demo cells come from {where}")
    rng = np.random.default_rng(seed)
    picked: list[tuple[Path, str]] = []
    for cls in ("Parasitized", "Uninfected"):
        label = MalariaSet.CLASSES.index(cls)
        paths = sorted(path for path, target in dataset.samples if target == label)
        picked += [(paths[i], cls) for i in sorted(rng.permutation(len(paths))[:per_class])]
    if not picked:
        raise DatasetError(f"{data_dir}: no cells in Parasitized/ or Uninfected/")
    return picked


def gender_test_faces(data_dir: Path, seed: int, per_class: int = 10) -> list[tuple[Path, str]]:
    """`per_class` seeded test faces per gender from a gender data set (no faces ship with the tool)."""
    test = GenderSet(data_dir, "test", max_samples_per_class=per_class, seed=seed)
    if not test.samples:
        raise DatasetError(f"{data_dir}: no test faces (expected Dataset/Test/Female/ and .../Male/)")
    return [(p, test.class_names[y]) for p, y in test.samples]


# --------------------------------------------------------------------------- commands


def run_single(args: argparse.Namespace) -> list[Path]:
    """`single`: the last block's map of each picture (or of demo pictures the prompts chose)."""
    device = pick_device(args.device)
    model = choose_model(args, args.dataset or "malaria", device)
    class_index = class_index_of(args.class_, model.class_names)
    pictures = _pictures(args, model)
    outputs = Outputs(args.out, args.save_npz)
    render_single(
        model,
        [p for p, _ in pictures],
        outputs,
        class_index,
        device,
        [t for _, t in pictures],
        args.method,
        args.batch_size,
    )
    return outputs.written


def run_multi(args: argparse.Namespace) -> list[Path]:
    """`multi`: every block's map of each picture through an every-block model."""
    device = pick_device(args.device)
    model = choose_model(args, "multi-every" if args.loss == "every" else "multi-last", device)
    class_index = class_index_of(args.class_, model.class_names)
    pictures = _pictures(args, model)
    outputs = Outputs(args.out, args.save_npz)
    render_multi(model, [p for p, _ in pictures], outputs, class_index, device, args.method, args.batch_size, args.fuse)
    return outputs.written


def _pictures(args: argparse.Namespace, model: LoadedModel) -> list[tuple[Path, str | None]]:
    """--image files, or the demo pictures the prompts asked for (with their true classes)."""
    demo = getattr(args, "demo_pictures", None)
    if demo == "bundled":
        return list(demo_cells())
    if demo == "manifest":
        if model.class_names == list(GENDERS) or args.dataset == "gender":
            return list(gender_test_faces(args.data_dir, getattr(args, "seed", 0)))
        return list(manifest_cells(model, args.data_dir, getattr(args, "seed", 0)))
    if not args.image:
        raise UsageError(f"{args.command} needs pictures: pass --image FILE|FOLDER")
    return [(p, None) for p in resolve_images(args.image)]


def print_regions(maps: GenderMaps, model: LoadedModel, outputs: Outputs) -> dict[str, dict]:
    """Where each gender's averaged map lies: its share and density per face region; printed and saved."""
    import faces

    masks = faces.region_masks(model.image_size, model.preprocess)
    shares = {g: faces.region_shares(torch.from_numpy(maps.heatmaps[g]), masks) for g in GENDERS}
    print(f"\n{'region':<17}{'area':>7}" + "".join(f"{g + ' share':>14}{'density':>9}" for g in GENDERS))
    for region in masks:
        row = f"{region:<17}{shares[GENDERS[0]][region]['area']:>7.1%}"
        for g in GENDERS:
            row += f"{shares[g][region]['share']:>14.1%}{shares[g][region]['density']:>9.2f}"
        print(row)
    print("(share: of the averaged map's total; density: share / area, above 1 = more than an average pixel)\n")
    outputs.json({"regions": faces.REGIONS, "preprocess": model.preprocess, "shares": shares}, "gender100_regions")
    return shares


def stability(
    model: LoadedModel, maps: GenderMaps, args: argparse.Namespace, class_index: int | None, device: torch.device
) -> dict[str, float]:
    """Spearman's rho between each gender's map and the map of as many other test faces (a disjoint draw)."""
    import evaluation  # Spearman's rho; imported only when asked for

    test = GenderSet(args.data_dir, "test", size=model.image_size)
    rhos: dict[str, float] = {}
    for label, gender in enumerate(GENDERS):
        used = set(maps.files[gender])
        rest = sorted(str(p) for p, y in test.samples if y == label and str(p) not in used)
        if len(rest) < len(used):
            print(f"note: {gender}: only {len(rest)} other test faces, fewer than the {len(used)} averaged")
        if not rest:
            continue
        pick = [Path(rest[i]) for i in sorted(np.random.default_rng(args.seed + 1).permutation(len(rest))[: len(used)])]
        total = torch.zeros((model.image_size, model.image_size))
        for chunk in batches(pick):
            total += explain(model, load_batch(chunk, model, device), args.method, class_index).heatmap.sum(0).cpu()
        other = total / len(pick)
        rhos[gender] = evaluation.spearman(torch.from_numpy(maps.heatmaps[gender]), other)
        print(
            f"{gender}: the map of {len(pick)} other test faces agrees with this one at Spearman rho {rhos[gender]:.3f}"
        )
    return rhos


def run_gender100(args: argparse.Namespace) -> list[Path]:
    """`gender100`: the maps of `--count` test faces per gender averaged, and their overlay."""
    if args.data_dir is None:
        raise UsageError("gender100 needs the gender data set: pass --data-dir PATH")
    device = pick_device(args.device)
    model = choose_model(args, "gender", device)
    if model.class_names != list(GENDERS):
        raise UsageError(f"{model.path.name}: gender100 needs a gender model (classes Female, Male)")
    class_index = class_index_of(args.class_, model.class_names)
    maps = gender100_maps(model, args.data_dir, args.count, args.seed, class_index, device, args.method)
    outputs = Outputs(args.out, args.save_npz)
    render_gender100(maps, outputs, model)
    shares = print_regions(maps, model, outputs)
    faces_drawn = {g: _display_face(maps.faces[g], _aspect(model, maps.files[g])) for g in GENDERS}
    outputs.save(render.regions_figure(faces_drawn, shares, model.image_size, model.preprocess), "gender100_regions")
    if args.stability:
        stability(model, maps, args, class_index, device)
    face = _display_face((maps.faces["Male"] + maps.faces["Female"]) / 2, _aspect(model, maps.files["Male"]))
    render_overlay(maps.heatmaps["Male"], maps.heatmaps["Female"], face, outputs, model.path.name)
    return outputs.written


def run_overlay(args: argparse.Namespace) -> list[Path]:
    """`overlay`: blend two Gender100 results (their npz files, or the PNGs beside them) over the mean face."""
    if not args.image:
        raise UsageError("overlay needs gender100's results: --image gender100_male.npz gender100_female.npz")
    male, female, face = read_gender100(args.image)
    outputs = Outputs(args.out, args.save_npz)
    render_overlay(male, female, face, outputs, ", ".join(p.name for p in args.image))
    return outputs.written


def run_download(args: argparse.Namespace) -> list[Path]:
    """`download`: fetch the published (or --weights-url) checkpoints into --models-dir."""
    from weights import download_weights

    for path in download_weights(args.weights_url, args.models_dir):
        print(f"installed {path}")
    return []


def run_demo(args: argparse.Namespace) -> list[Path]:
    """`demo`: the bundled cells (or 10 + 10 test cells of --data-dir) with the bundled models (or --model)."""
    device = pick_device(args.device)
    outputs = Outputs(args.out, args.save_npz)
    model = choose_model(args, "malaria", device, bundled_only=True)
    cells = manifest_cells(model, args.data_dir, args.seed) if args.data_dir else demo_cells()
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
        [r["picture"] for r in rows],
        [r["heatmap"] for r in rows],
        [f"true {r['truth']}\npred {r['predicted']} {r['probability']:.0%}" for r in rows],
        [r["predicted"] == r["truth"] for r in rows],
    )
    fig.suptitle(f"Where the network looks: last-block CAM of the demo cells ({model.path.name})")
    outputs.save(fig, "demo_contact_sheet")
    few = [p for p, t in cells if t == "Parasitized"][:2] + [p for p, t in cells if t == "Uninfected"][:1]
    if args.model:
        if model.kind == "every":
            render_multi(model, few, outputs, None, device)
        else:
            print(f"note: {model.path.name} is a last-block Network: the every-block pictures need a NetworkMultiLoss")
    else:
        for view in ("multi-last", "multi-every"):
            render_multi(choose_model(args, view, device, bundled_only=True), few, outputs, None, device)
    return outputs.written


# --------------------------------------------------------------------------- features: what the network looks for


def _feature_images(args: argparse.Namespace, model: LoadedModel) -> list[Path]:
    """The real pictures of the features view: --image, --data-dir (every image, or a sample), or the demo cells."""
    if args.image:
        return resolve_images(args.image)
    if args.data_dir:
        from scoring import evaluation_set

        dataset = evaluation_set(model, args.data_dir, "all", args.seed)
        samples = dataset.samples
        if args.max_images is not None and args.max_images < len(samples):
            from model_data import balanced_sample

            samples = balanced_sample(samples, args.max_images, args.seed)
        return [path for path, _ in samples]
    if model.class_names == ["Uninfected", "Parasitized"]:
        return [path for path, _ in demo_cells()]
    raise UsageError("pass pictures with --image or --data-dir (only cells ship with the tool)")


def _default_class(model: LoadedModel) -> int:
    """Parasitized for a cell model (what a user wants to see found), else the first class."""
    return model.class_names.index("Parasitized") if "Parasitized" in model.class_names else 0


def run_features(args: argparse.Namespace) -> list[Path]:
    """`features`: which channels carry a class's evidence in a block, and what drives each of them.

    Views (one PNG each): block 1's filters; the chosen channels' maps on the first picture;
    per channel its activation maximiser beside the real patches that drive it most; and the
    class's own maximiser through every head.
    """
    import charts
    import features

    device = pick_device(args.device)
    model = choose_model(args, args.dataset or "malaria", device)
    network = model.network
    class_index = class_index_of(args.class_, model.class_names)
    class_index = _default_class(model) if class_index is None else class_index
    name = model.class_names[class_index]
    try:
        features.check_block(args.block)
    except ValueError as error:
        raise UsageError(f"--block {args.block}: {error}") from None
    available = features.channel_count(network, args.block)
    if args.channels > available:
        raise UsageError(f"--channels {args.channels}: block {args.block} has 1..{available} channels")
    pictures = _feature_images(args, model)
    print(f"class {name}; {len(pictures)} pictures for the real examples; block {args.block}, {args.channels} channels")
    outputs = Outputs(args.out, args.save_npz)
    stem = f"features_{checkpoint_name(model.path)}"

    def picture_batches() -> Iterator[torch.Tensor]:
        for chunk in batches(pictures, 64):
            yield load_batch(chunk, model, device)

    head = features.block_head(network, args.block) is not None
    rank = None if head else torch.cat(list(picture_batches()))
    view = features.channel_view(
        network,
        args.block,
        class_index,
        args.channels,
        rank,
        picture_batches(),
        args.examples,
        args.steps,
        args.seed,
        model.image_size,
    )
    channels, weights, activations, examples = view.channels, view.weights, view.activations, view.examples
    assert examples is not None  # example pictures were given
    source = "head weight" if head else f"mean Grad-CAM weight over the {len(pictures)} pictures"
    print(f"\n{'channel':>8}{source:>44}{'maximiser':>11}{'best real':>11}  (mean activation after the ReLU)")
    for i, channel in enumerate(channels.tolist()):
        best = float(examples.best_mean[i])
        won = "" if float(activations[i]) > best else "  <- not converged: raise --steps"
        print(f"{channel:>8}{float(weights[i]):>+44.6f}{float(activations[i]):>11.3f}{best:>11.3f}{won}")

    kernels = features.filters(network)
    outputs.save(charts.filters_figure(kernels, f"block 1 filters ({model.path.name})"), f"{stem}_filters")
    first = load_batch(pictures[:1], model, device)[0]
    maps = features.feature_maps(network, args.block, channels, first)
    title = f"block {args.block}: the {len(channels)} channels for {name} on {pictures[0].name}"
    fig = charts.feature_maps_figure(first.cpu().numpy(), maps.numpy(), channels.tolist(), weights.tolist(), title)
    outputs.save(fig, f"{stem}_maps_block{args.block}_{pictures[0].stem}")
    blocks = features.head_blocks(network)
    class_images, class_logits = features.maximize_class(
        network, class_index, blocks, args.steps, args.seed, model.image_size
    )
    outputs.save(
        charts.class_maximizer_figure(class_images.numpy(), class_logits.tolist(), list(blocks), name),
        f"{stem}_class_{name}",
    )
    sheet = charts.channel_sheet(
        view.maximizers.numpy(),
        activations.tolist(),
        examples.patches.numpy(),
        examples.activations.numpy(),
        channels.tolist(),
        weights.tolist(),
        examples.best_mean.tolist(),
        f"{model.path.name}, block {args.block}: the {len(channels)} channels with the largest {source} for {name}",
    )
    numbers = {
        **view.arrays(),
        "filters": kernels.numpy(),
        "class_maximizer": class_images.numpy(),
        "class_maximizer_logits": class_logits.numpy(),
        "class_maximizer_blocks": np.array(blocks),
        "class_index": class_index,
        "class_names": np.array(model.class_names),
        "block": args.block,
    }
    outputs.save(sheet, f"{stem}_block{args.block}_{name}", numbers)
    return outputs.written
