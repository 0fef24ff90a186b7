"""Downloading checkpoints: the original project's Google Drive folder, a Drive file, or any http(s) .pt or .zip.

Everything is staged beside the destination, validated (weights_only=True, and the weights must fit
one of our networks), and only then renamed into place; a model the user trained is never replaced.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import urllib.parse
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from wtl.checkpoints.io import holds_training_state
from wtl.checkpoints.loading import load_model
from wtl.errors import CheckpointError, DownloadError

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


def _problem(text: str) -> DownloadError:
    """The one-line DownloadError for a problem, with what to do instead."""
    return DownloadError(f"{_one_line(text).rstrip('. ')}; instead, {_WHAT_TO_DO}")


def _one_line(text: str, limit: int = 300) -> str:
    """Collapse a message to one line of at most `limit` characters (no terminal escape codes)."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        raise _problem(f"cannot write into {dest.parent} ({error.strerror or error})") from None
    try:
        fetched, unpacked = staging / "fetched", staging / "unpacked"
        fetched.mkdir()
        unpacked.mkdir()
        try:
            _fetch(url, fetched, dest, quiet)
        except (OSError, gdown.exceptions.DownloadError, urllib3.exceptions.HTTPError) as error:
            # OSError covers requests' exceptions; gdown raises instead of returning None since 5.x.
            raise _problem(f"could not download weights from {url}: {_network_reason(error, staging)}") from None

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
            raise _problem(f"{url} held no usable Where-to-look checkpoint{reason}")
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
                raise _problem(f"cannot install {target} ({error.strerror or error}){done}") from None
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
        raise _problem(f"{url!r} is not an http(s) or Google Drive URL")
    options: dict[str, Any] = {"quiet": quiet, "timeout": DOWNLOAD_TIMEOUT, "retries": DOWNLOAD_RETRIES}
    if gdown.parse_url.is_google_drive_url(url):
        if "/folders/" in parsed.path:
            # Without a trailing separator gdown puts the folder's files right into `folder`.
            gdown.download_folder(url=url, output=str(folder), **options)
            return
        if gdown.parse_url.parse_url(url)[0] is None:
            raise _problem(f"cannot tell which Google Drive file {url} points to (expected .../file/d/ID/...)")
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
