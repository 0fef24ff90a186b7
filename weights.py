"""Checkpoints: write them atomically, load them safely, find them, download them.

A checkpoint is the original project's dict {"net_state_dict", "optim_state_dict",
"scheduler_state_dict", "best_val_acc", "epoch"}, plus optional keys this project
adds ("class_names", "image_size", "network", "loss", "dataset", "seed").
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import sys
import tempfile
import urllib.parse
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import nn

from model_network import build_network, network_kind, num_classes_of

# The class names of the original project's published checkpoints, which carry none.
DEFAULT_CLASS_NAMES = {
    "malaria": ["Uninfected", "Parasitized"],
    "gender": ["Female", "Male"],
}


class CheckpointError(Exception):
    """A checkpoint that is missing, corrupt or of the wrong kind; one line for the user."""


def save_checkpoint(content: dict[str, Any], path: str | Path) -> Path:
    """Write a checkpoint atomically: a temporary file in the same folder, then a rename.

    An interrupted write therefore leaves the previous checkpoint intact, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        # mkstemp creates the file readable by its owner only; a checkpoint is no secret.
        os.chmod(temporary, 0o644)
        with os.fdopen(handle, "wb") as stream:
            torch.save(content, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _unpickling_reason(error: pickle.UnpicklingError) -> str:
    """The useful part of torch's multi-paragraph weights_only error (what it refused)."""
    text = str(error)
    # torch's first line advises loading with weights_only=False, which is the wrong advice for a download.
    match = re.search(r"Unsupported global: GLOBAL (\S+)|(Unsupported operand \S+)", text)
    if match:
        return f"it would import {match.group(1)}" if match.group(1) else match.group(2)
    return "unsafe or unknown content"


def holds_training_state(path: str | Path) -> bool:
    """Whether `path` is a resumable checkpoint (optimizer state inside): a model someone trained, not a download."""
    try:
        return Path(path).is_file() and "optim_state_dict" in load_checkpoint(path)
    except CheckpointError:
        return False  # unreadable: nothing worth keeping


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with weights_only=True (a downloaded file must not run code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses any pickle that would import or call code.
        raise CheckpointError(
            f"{path}: refused to load, the file is not a plain weights file ({_unpickling_reason(error)})"
        ) from None
    except Exception as error:  # garbage bytes fail in many ways, e.g. a KeyError from a bad pickle memo
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    if (
        isinstance(content, dict)
        and "net_state_dict" not in content
        and all(isinstance(v, torch.Tensor) for v in content.values())
    ):
        content = {"net_state_dict": content}  # a bare state dict, as torch.save(net.state_dict()) writes
    if not isinstance(content, dict) or not isinstance(content.get("net_state_dict"), dict):
        raise CheckpointError(f"{path}: not a Where-to-look checkpoint (no net_state_dict)")
    return content


@dataclass
class LoadedModel:
    """A network ready for inference and what its checkpoint says about it."""

    network: nn.Module
    kind: str  # "last" (Network) or "every" (NetworkMultiLoss)
    class_names: list[str]
    image_size: int
    path: Path
    checkpoint: dict[str, Any]
    # How a picture becomes the network's square input; models from before this key were squashed.
    preprocess: str = "squash"


def guess_class_names(checkpoint: dict[str, Any], path: Path, num_classes: int) -> list[str]:
    """Class names from the checkpoint, else from a published file's name, else 'class 0'..."""
    names = checkpoint.get("class_names")
    if isinstance(names, (list, tuple)) and len(names) == num_classes:
        return [str(n) for n in names]
    dataset = checkpoint.get("dataset")
    if not isinstance(dataset, str):
        # The published checkpoints carry no names; their file names say which data set they are.
        stem = path.name.lower()
        dataset = next((d for d in DEFAULT_CLASS_NAMES if d in stem), "")
    defaults = DEFAULT_CLASS_NAMES.get(dataset)
    if defaults is not None and len(defaults) == num_classes:
        return list(defaults)
    return [f"class {i}" for i in range(num_classes)]


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Build the right network for a checkpoint (chosen by its keys) and load its weights."""
    path = Path(path)
    checkpoint = load_checkpoint(path)
    state = checkpoint["net_state_dict"]
    try:
        kind = network_kind(state)
        num_classes = num_classes_of(state)
        network = build_network(kind, num_classes)
        network.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path}: the weights do not fit Where-to-look's networks ({first})") from None
    network.to(device).eval()
    return LoadedModel(
        network=network,
        kind=kind,
        class_names=guess_class_names(checkpoint, path, num_classes),
        image_size=int(checkpoint.get("image_size", 128)),
        path=path,
        checkpoint=checkpoint,
        preprocess=str(checkpoint.get("preprocess", "squash")),
    )


# ---------------------------------------------------------------------------
# Finding and downloading checkpoints
# ---------------------------------------------------------------------------

# The original project's published checkpoints (a public Google Drive folder).
PUBLISHED_FOLDER_URL = "https://drive.google.com/drive/folders/1WUPvRI-5E139TkvZ3a44O8c85U7jZQPW"
# An environment variable that replaces the published folder, e.g. with a mirror.
WEIGHTS_URL_ENV = "WTL_WEIGHTS_URL"
# (connect, between-bytes) seconds: without a timeout gdown waits forever on a stalled server.
DOWNLOAD_TIMEOUT = (15.0, 60.0)
# Extra attempts per file after a dropped connection; gdown resumes them with an HTTP Range request.
DOWNLOAD_RETRIES = 2

_WHAT_TO_DO = "train with `python model_main.py`, use the bundled weights in models/, or pass --model PATH"
_STAGING_PREFIX = ".wtl-download-"


class DownloadError(Exception):
    """Weights that could not be downloaded or installed; one line that also says what to do instead."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"{_one_line(problem).rstrip('. ')}; instead, {_WHAT_TO_DO}")


def _one_line(text: str, limit: int = 300) -> str:
    """Collapse a message to one line of at most `limit` characters (no terminal escape codes)."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def checkpoint_name(path: str | Path) -> str:
    """A checkpoint's model name: its file name without `.pt` and without the trainer's `.best`."""
    return Path(path).name.removesuffix(".pt").removesuffix(".best")


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
            name = checkpoint_name(path)
            # The trainer's `x.pt` is the resume state; `x.best.pt` holds the best-validation weights.
            if name and (name not in here or path.name.endswith(".best.pt")):
                here[name] = path
        for name, path in here.items():
            found.setdefault(name, path)
    return dict(sorted(found.items()))


def find_model(name: str, folders: Sequence[Path]) -> Path | None:
    """The checkpoint for a model name (or a file name such as `x.best.pt`) in `folders`, or None."""
    return find_checkpoints(folders).get(checkpoint_name(name) if name.endswith(".pt") else name)


def download_weights(url: str | None, dest: Path, quiet: bool = False) -> list[Path]:
    """Download checkpoints (Drive folder or file, or an http(s) .pt or .zip), validate them, install in dest."""
    # Imported here: gdown brings requests and bs4, which only a download needs.
    import gdown
    import urllib3

    url = (url or os.environ.get(WEIGHTS_URL_ENV) or PUBLISHED_FOLDER_URL).strip()
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Staging beside dest (same file system, so os.replace is an atomic rename) and never inside
        # it, so that nothing half-downloaded is ever where the tool looks for models.
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=dest.parent))
    except OSError as error:
        raise DownloadError(f"cannot write into {dest.parent} ({error.strerror or error})") from None
    try:
        fetched, unpacked = staging / "fetched", staging / "unpacked"
        fetched.mkdir()
        unpacked.mkdir()
        try:
            _fetch(url, fetched, dest, quiet)
        except (OSError, gdown.exceptions.DownloadError, urllib3.exceptions.HTTPError) as error:
            # OSError covers requests' exceptions; gdown raises instead of returning None since 5.x.
            raise DownloadError(f"could not download weights from {url}: {_network_reason(error, staging)}") from None

        refused: list[str] = []
        valid: dict[str, Path] = {}
        for candidate, target_name in _candidates(fetched, unpacked, refused):
            try:
                load_model(candidate)  # weights_only=True, and the weights must fit one of our networks
            except CheckpointError as error:
                refused.append(str(error).replace(str(candidate), candidate.name))
                continue
            if target_name in valid:
                refused.append(f"{candidate.name}: a second file with the same name, skipped")
                continue
            valid[target_name] = candidate

        if not valid:
            reason = f" ({refused[0]})" if refused else ""
            raise DownloadError(f"{url} held no usable Where-to-look checkpoint{reason}")
        if refused and not quiet:
            for line in refused:
                print(f"skipped {_one_line(line)}", file=sys.stderr)

        installed: list[Path] = []
        for target_name, candidate in valid.items():
            target = dest / target_name
            if holds_training_state(target):
                # A run the user trained (resumable): a download must never destroy it.
                print(
                    f"kept {target}: it holds a training run's state, so the downloaded {target_name} was not "
                    "installed over it (pass --models-dir DIR to install the download elsewhere)",
                    file=sys.stderr,
                )
                continue
            try:
                dest.mkdir(parents=True, exist_ok=True)
                os.chmod(candidate, 0o644)  # gdown's temporary files are private; a model is no secret
                os.replace(candidate, target)
            except OSError as error:
                done = f" (installed so far: {', '.join(p.name for p in installed)})" if installed else ""
                raise DownloadError(f"cannot install {target} ({error.strerror or error}){done}") from None
            installed.append(target)
        return installed
    finally:
        # Also on errors and Ctrl-C: gdown keeps partial `.part` files for resuming, we never do.
        shutil.rmtree(staging, ignore_errors=True)


def _fetch(url: str, folder: Path, dest: Path, quiet: bool) -> None:
    """Download `url` into `folder` with gdown (Drive folder, Drive file or plain http(s) URL)."""
    import gdown

    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise DownloadError(f"{url!r} is not an http(s) or Google Drive URL")
    options: dict[str, Any] = {"quiet": quiet, "timeout": DOWNLOAD_TIMEOUT, "retries": DOWNLOAD_RETRIES}
    if gdown.parse_url.is_google_drive_url(url):
        if "/folders/" in parsed.path:
            # Without a trailing separator gdown puts the folder's files right into `folder`.
            gdown.download_folder(url=url, output=str(folder), **options)
            return
        if gdown.parse_url.parse_url(url)[0] is None:
            raise DownloadError(f"cannot tell which Google Drive file {url} points to (expected .../file/d/ID/...)")
        # A trailing separator makes gdown name the file as Drive does (Content-Disposition).
        gdown.download(
            url=url, output=str(folder) + os.sep, log_messages={"output": f"To: {dest}{os.sep}\n"}, **options
        )
        return
    # Named from the URL's path, not gdown's basename of the whole URL, which would keep a `?query`.
    name = _safe_name(urllib.parse.unquote(PurePosixPath(parsed.path).name)) or "download"
    gdown.download(url=url, output=str(folder / name), log_messages={"output": f"To: {dest}{os.sep}\n"}, **options)


def _safe_name(name: str) -> str:
    """A file name with no directory part (a zip member's or URL's), or '' for hidden and empty ones."""
    name = PurePosixPath(name.replace("\\", "/")).name
    return "" if name.startswith(".") else name


def _network_reason(error: BaseException, staging: Path) -> str:
    """A short reason for a failed download, without gdown's advice about resuming (we delete partials)."""
    import gdown
    import requests

    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"the server answered HTTP {error.response.status_code} {error.response.reason or ''}".strip()
    if isinstance(error, gdown.exceptions.FileURLRetrievalError):
        return "Google Drive did not hand out the file (not shared with 'Anyone with the link', or over its quota)"
    text = str(error)
    retried = re.match(r"Download failed after (\d+) retries", text)
    if retried and isinstance(error.__cause__, requests.RequestException):
        # gdown wraps the last attempt's error once its retries are spent.
        return f"{_network_reason(error.__cause__, staging)} (after {retried.group(1)} retries)"
    if isinstance(error, requests.ConnectionError):
        host = urllib.parse.urlparse(str(error.request.url)).hostname if error.request is not None else None
        where = str(host) if host else "the server"
        if re.search(r"NameResolution|Failed to resolve|Name or service not known|getaddrinfo", text):
            return f"cannot resolve {where} (no internet connection, or a wrong host name?)"
        if "Connection refused" in text:
            return f"{where} refused the connection"
    if isinstance(error, requests.Timeout):
        return "the server stopped answering (timed out)"
    if isinstance(error, gdown.exceptions.DownloadError) and "did not honor the requested byte range" in text:
        return "the download broke off and the server could not resume it (no HTTP Range support)"
    if isinstance(error, gdown.exceptions.DownloadError):
        # "Download is incomplete: ...\nThe received bytes are kept in <partial>...": keep the first line.
        lines = [line for line in text.splitlines() if line.strip()]
        text = lines[0] if lines and not lines[0].rstrip().endswith(":") else " ".join(lines)
    # The staging folder, and with it any partial file gdown says it kept, is deleted on return.
    text = re.sub(r"[;,.]? *the partial file is preserved\.?", "", text)
    return text.replace(f"{staging}{os.sep}", "") or type(error).__name__


def _candidates(fetched: Path, unpacked: Path, refused: list[str]) -> list[tuple[Path, str]]:
    """(file to validate, name to install it under) for every downloaded checkpoint, zips unpacked."""
    found: list[tuple[Path, str]] = []
    for path in sorted(p for p in fetched.rglob("*") if p.is_file()):
        if path.name.startswith(".") or path.suffix == ".part":
            continue  # gdown's partial files; a finished download has been renamed
        kind = _zip_kind(path)
        if kind == "bundle":
            found.extend(_extract_checkpoints(path, unpacked, refused))
        elif path.suffix == ".pt" or kind == "checkpoint":
            found.append((path, path.name if path.suffix == ".pt" else f"{path.name}.pt"))
        else:
            refused.append(f"{path.name}: neither a .pt checkpoint nor a .zip of them")
    return found


def _zip_kind(path: Path) -> str:
    """'checkpoint' for torch's zip format, 'bundle' for a zip holding .pt files, else ''."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return ""
    # torch.save writes a zip too: `<archive>/data.pkl` tells it from a zip of checkpoints.
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "checkpoint"
    return "bundle" if any(_safe_name(n).endswith(".pt") for n in names) else ""


def _extract_checkpoints(path: Path, unpacked: Path, refused: list[str]) -> list[tuple[Path, str]]:
    """Extract a zip's .pt members by base name only, so that `../x.pt` cannot land outside `unpacked`."""
    found: list[tuple[Path, str]] = []
    # A folder per archive: two archives may hold members of the same name.
    target_folder = Path(tempfile.mkdtemp(dir=unpacked))
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            name = _safe_name(member.filename)
            if member.is_dir() or not name.endswith(".pt"):
                continue
            target = target_folder / name
            try:
                with archive.open(member) as source, open(target, "xb") as sink:
                    shutil.copyfileobj(source, sink)
            except FileExistsError:
                refused.append(f"{path.name}: {member.filename}: a second member with the same name, skipped")
                continue
            except (zipfile.BadZipFile, OSError, EOFError) as error:
                target.unlink(missing_ok=True)
                refused.append(f"{path.name}: {member.filename}: corrupt in the archive ({_one_line(str(error))})")
                continue
            found.append((target, name))
    return found
