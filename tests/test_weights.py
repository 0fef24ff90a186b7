"""Checkpoints: safe loading, finding, and downloading them over a local HTTP server (no internet needed)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import os
import pathlib
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from model_network import Network
from wtl import errors as wtl_errors
from wtl import names as naming
from wtl.checkpoints import download, finding, loading
from wtl.checkpoints import io as ckio

pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------------- helpers


def make_checkpoint(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Save a real checkpoint in the published dict format; return its state dict."""
    torch.manual_seed(seed)
    network = Network()
    optim = torch.optim.Adam(network.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optim, 0.9)
    content = {
        "net_state_dict": network.state_dict(),
        "optim_state_dict": optim.state_dict(),
        "scheduler_state_dict": scheduler.state_dict(),
        "best_val_acc": 91.5,
        "epoch": 3,
    }
    ckio.save_checkpoint(content, path)
    return network.state_dict()


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """True when two state dicts hold the same keys and equal tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class TouchMarker:
    """A pickle payload: unpickling it calls Path.touch(marker), i.e. runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def assert_one_line(error: BaseException) -> None:
    """The message is a single non-empty line that says what to do instead."""
    text = str(error)
    assert text and "\n" not in text, text
    assert "model_main.py" in text or not isinstance(error, wtl_errors.DownloadError)


def leftovers(folder: Path) -> list[str]:
    """Everything under `folder` (recursively), as relative paths."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------- local HTTP server


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files; /truncated/NAME announces NAME's full size but sends half of it and hangs up;
    /flaky/NAME does the same but answers a Range request (a resume) properly."""

    def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
        range_header = self.headers.get("Range")
        if self.path.startswith("/flaky/") and range_header:
            data = (Path(self.directory) / self.path.removeprefix("/flaky/")).read_bytes()
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])
            return
        if self.path.startswith("/flaky/"):
            self.path = self.path.replace("/flaky/", "/truncated/", 1)
        if self.path.startswith("/truncated/"):
            data = (Path(self.directory) / self.path.removeprefix("/truncated/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.close_connection = True
            # The client may hang up first (gdown stops reading a resume it cannot use).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- http.server's signature
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, served folder) of an HTTP server on 127.0.0.1."""
    root = tmp_path_factory.mktemp("served")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def no_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """gdown waits a random 0-2 s before a retry; the tests that want retries turn them back on."""
    monkeypatch.setattr(download, "DOWNLOAD_RETRIES", 0)
    monkeypatch.delenv(download.WEIGHTS_URL_ENV, raising=False)


def closed_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- load_checkpoint


def test_load_checkpoint_accepts_the_published_format_and_a_bare_state_dict(tmp_path: Path) -> None:
    state = make_checkpoint(tmp_path / "full.pt")
    assert same_weights(ckio.load_checkpoint(tmp_path / "full.pt")["net_state_dict"], state)
    torch.save(Network().state_dict(), tmp_path / "bare.pt")
    loaded = loading.load_model(tmp_path / "bare.pt")
    assert loaded.kind == "last" and loaded.class_names == ["class 0", "class 1"]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("garbage.pt", b"hello world, this is not a checkpoint at all"),
        ("zeros.pt", bytes(100)),
        ("empty.pt", b""),
        ("fake-zip.pt", b"PK\x03\x04 not really a zip"),
    ],
    ids=["garbage", "zeros", "empty", "fake-zip"],
)
def test_load_checkpoint_rejects_unreadable_files_in_one_line(tmp_path: Path, name: str, content: bytes) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(wtl_errors.CheckpointError) as info:
        ckio.load_checkpoint(tmp_path / name)
    assert_one_line(info.value)
    assert name in str(info.value)


def test_load_checkpoint_rejects_a_truncated_checkpoint(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(wtl_errors.CheckpointError, match="not a readable PyTorch checkpoint") as info:
        ckio.load_checkpoint(tmp_path / "cut.pt")
    assert_one_line(info.value)


def test_load_checkpoint_rejects_a_dict_without_weights_and_a_missing_file(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "best_val_acc": 0.5}, tmp_path / "meta.pt")
    with pytest.raises(wtl_errors.CheckpointError, match="no net_state_dict") as info:
        ckio.load_checkpoint(tmp_path / "meta.pt")
    assert_one_line(info.value)
    with pytest.raises(wtl_errors.CheckpointError, match="no such checkpoint"):
        ckio.load_checkpoint(tmp_path / "missing.pt")


def test_a_malicious_pickle_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"net_state_dict": TouchMarker(marker)}, tmp_path / "evil.pt")
    with pytest.raises(wtl_errors.CheckpointError, match="refused to load") as info:
        ckio.load_checkpoint(tmp_path / "evil.pt")
    assert_one_line(info.value)
    assert "weights_only=False" not in str(info.value)  # torch's advice, wrong for a downloaded file
    assert not marker.exists()
    # The payload is real: an unsafe load would have run it.
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------- find_checkpoints


def test_find_checkpoints_prefers_best_then_earlier_folders(tmp_path: Path) -> None:
    first, second = tmp_path / "models", tmp_path / "Where-to-look_models"
    first.mkdir()
    second.mkdir()
    for path in [
        first / "a.pt",
        first / "a.best.pt",
        first / "b.pt",
        second / "b.best.pt",  # first folder's b.pt wins: earlier folders beat later ones
        second / "c.pt",
        first / "d.pt.part",
        first / ".e.pt",
        first / ".f.pt.x1y2.part",
        first / "notes.txt",
    ]:
        path.write_bytes(b"x")
    (first / "dir.pt").mkdir()

    found = finding.find_checkpoints([first, second, tmp_path / "missing"])
    assert found == {"a": first / "a.best.pt", "b": first / "b.pt", "c": second / "c.pt"}
    assert finding.find_model("a", [first, second]) == first / "a.best.pt"
    assert finding.find_model("a.pt", [first, second]) == first / "a.best.pt"
    assert finding.find_model("c", [first, second]) == second / "c.pt"
    assert finding.find_model("d", [first, second]) is None
    assert naming.checkpoint_name("model_x.best.pt") == "model_x"


# --------------------------------------------------------------------------- download over local HTTP


def test_download_a_plain_pt_url(server: tuple[str, Path], tmp_path: Path) -> None:
    base, root = server
    state = make_checkpoint(root / "malaria_last.pt")
    dest = tmp_path / "models"
    installed = download.download_weights(f"{base}/malaria_last.pt?download=1", dest, quiet=True)
    assert installed == [dest / "malaria_last.pt"]
    loaded = loading.load_model(installed[0])
    assert same_weights(loaded.network.state_dict(), state)
    assert loaded.class_names == ["Uninfected", "Parasitized"]
    assert leftovers(tmp_path) == ["models", "models/malaria_last.pt"]


def test_download_a_zip_of_checkpoints_installs_only_valid_ones(server: tuple[str, Path], tmp_path: Path) -> None:
    base, root = server
    scratch = tmp_path / "scratch"
    one = make_checkpoint(scratch / "one.pt", seed=1)
    make_checkpoint(scratch / "two.pt", seed=2)
    with zipfile.ZipFile(root / "bundle.zip", "w") as archive:
        archive.write(scratch / "one.pt", "weights/one.pt")
        archive.write(scratch / "two.pt", "two.best.pt")
        archive.writestr("README.txt", "junk")
        archive.writestr("broken.pt", b"not a checkpoint")
        archive.writestr("../evil.pt", b"path traversal attempt")
        archive.writestr("__MACOSX/._one.pt", b"resource fork")
    dest = tmp_path / "out" / "models"

    installed = download.download_weights(f"{base}/bundle.zip", dest, quiet=True)

    assert sorted(installed) == [dest / "one.pt", dest / "two.best.pt"]
    assert same_weights(ckio.load_checkpoint(dest / "one.pt")["net_state_dict"], one)
    assert leftovers(tmp_path / "out") == ["models", "models/one.pt", "models/two.best.pt"]
    assert not (tmp_path / "out" / "evil.pt").exists() and not (tmp_path / "evil.pt").exists()


def test_an_interrupted_download_leaves_nothing_behind(server: tuple[str, Path], tmp_path: Path) -> None:
    base, root = server
    make_checkpoint(root / "cut.pt")
    with pytest.raises(wtl_errors.DownloadError, match="incomplete") as info:
        download.download_weights(f"{base}/truncated/cut.pt", tmp_path / "models", quiet=True)
    assert_one_line(info.value)
    assert ".part" not in str(info.value)  # gdown says it kept the partial file; we removed it
    assert leftovers(tmp_path) == []  # no .pt, no .part, no staging folder, not even an empty dest


def test_an_interrupted_download_with_retries_still_fails_cleanly(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = server
    make_checkpoint(root / "cut2.pt")
    monkeypatch.setattr(download, "DOWNLOAD_RETRIES", 1)
    # The server ignores Range and always breaks off, so the resumed attempt fails too.
    with pytest.raises(wtl_errors.DownloadError, match="could not resume") as info:
        download.download_weights(f"{base}/truncated/cut2.pt", tmp_path / "models", quiet=True)
    assert_one_line(info.value)
    with pytest.raises(wtl_errors.DownloadError, match=r"refused the connection \(after 1 retries\)") as info:
        download.download_weights(f"http://127.0.0.1:{closed_port()}/x.pt", tmp_path / "models", quiet=True)
    assert_one_line(info.value)
    assert leftovers(tmp_path) == []


def test_a_broken_off_download_is_resumed_when_the_server_allows(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = server
    state = make_checkpoint(root / "flaky.pt")
    monkeypatch.setattr(download, "DOWNLOAD_RETRIES", 1)
    installed = download.download_weights(f"{base}/flaky/flaky.pt", tmp_path / "models", quiet=True)
    assert installed == [tmp_path / "models" / "flaky.pt"]
    assert same_weights(ckio.load_checkpoint(installed[0])["net_state_dict"], state)
    assert leftovers(tmp_path) == ["models", "models/flaky.pt"]


def test_http_404_is_a_one_line_download_error(server: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(wtl_errors.DownloadError, match="HTTP 404") as info:
        download.download_weights(f"{base}/missing.pt", tmp_path / "models", quiet=True)
    assert_one_line(info.value)
    assert leftovers(tmp_path) == []


def test_connection_refused_is_a_one_line_download_error(tmp_path: Path) -> None:
    with pytest.raises(wtl_errors.DownloadError, match="refused the connection") as info:
        download.download_weights(f"http://127.0.0.1:{closed_port()}/x.pt", tmp_path / "models", quiet=True)
    assert_one_line(info.value)
    assert leftovers(tmp_path) == []


def test_a_downloaded_malicious_pickle_is_refused(server: tuple[str, Path], tmp_path: Path) -> None:
    base, root = server
    marker = tmp_path / "pwned"
    torch.save({"net_state_dict": TouchMarker(marker)}, root / "evil_model.pt")
    with pytest.raises(wtl_errors.DownloadError, match="refused to load") as info:
        download.download_weights(f"{base}/evil_model.pt", tmp_path / "models", quiet=True)
    assert_one_line(info.value)
    assert not marker.exists()
    assert leftovers(tmp_path) == []


def test_a_download_that_is_not_a_checkpoint_is_refused(server: tuple[str, Path], tmp_path: Path) -> None:
    base, root = server
    (root / "page.html").write_text("<html>Sign in to continue</html>")
    torch.save({"net_state_dict": {"some.other.weight": torch.zeros(2)}}, root / "other.pt")
    for name in ["page.html", "other.pt"]:
        with pytest.raises(wtl_errors.DownloadError, match="no usable Where-to-look checkpoint") as info:
            download.download_weights(f"{base}/{name}", tmp_path / "models", quiet=True)
        assert_one_line(info.value)
    assert leftovers(tmp_path) == []


def test_the_environment_variable_replaces_the_published_folder(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = server
    make_checkpoint(root / "gender_every_from_env.pt")
    monkeypatch.setenv(download.WEIGHTS_URL_ENV, f"{base}/gender_every_from_env.pt")
    installed = download.download_weights(None, tmp_path / "models", quiet=True)
    assert installed == [tmp_path / "models" / "gender_every_from_env.pt"]


def test_an_unwritable_destination_is_a_download_error(server: tuple[str, Path], tmp_path: Path) -> None:
    base, root = server
    make_checkpoint(root / "blocked.pt")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "blocked.pt").mkdir()  # a folder where the file should go
    with pytest.raises(wtl_errors.DownloadError, match="cannot install") as info:
        download.download_weights(f"{base}/blocked.pt", tmp_path / "models", quiet=True)
    assert_one_line(info.value)
    assert leftovers(tmp_path) == ["models", "models/blocked.pt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(wtl_errors.DownloadError, match="cannot write into"):
        download.download_weights(f"{base}/blocked.pt", tmp_path / "file" / "models", quiet=True)


def test_not_an_http_url_is_a_download_error(tmp_path: Path) -> None:
    for url in ["ftp://example.org/x.pt", "models/x.pt", "https://drive.google.com/drive/my-drive"]:
        with pytest.raises(wtl_errors.DownloadError) as info:
            download.download_weights(url, tmp_path / "models", quiet=True)
        assert_one_line(info.value)
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- Google Drive (gdown faked or offline)


def test_the_published_folder_is_the_default_and_goes_through_download_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gdown

    calls: list[dict[str, object]] = []

    def fake_download_folder(url: str, output: str, **options: object) -> list[str]:
        calls.append({"url": url, "output": output, **options})
        folder = Path(output)
        make_checkpoint(folder / "malaria_every.pt")
        make_checkpoint(folder / "sub" / "gender_last.pt")
        (folder / "notes.txt").write_text("not a model")
        (folder / "x.ptabcd1234.part").write_bytes(b"partial")
        return [str(p) for p in folder.rglob("*")]

    monkeypatch.setattr(gdown, "download_folder", fake_download_folder)
    installed = download.download_weights(None, tmp_path / "models", quiet=True)

    assert calls[0]["url"] == download.PUBLISHED_FOLDER_URL
    assert calls[0]["timeout"] == download.DOWNLOAD_TIMEOUT
    assert sorted(p.name for p in installed) == ["gender_last.pt", "malaria_every.pt"]
    assert leftovers(tmp_path) == ["models", "models/gender_last.pt", "models/malaria_every.pt"]


def test_a_drive_file_url_goes_through_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gdown

    calls: list[str] = []

    def fake_download(url: str, output: str, **options: object) -> str:
        calls.append(output)
        assert output.endswith(os.sep)  # so that gdown names the file as Drive does
        make_checkpoint(Path(output) / "model_every.best.pt")
        return str(Path(output) / "model_every.best.pt")

    monkeypatch.setattr(gdown, "download", fake_download)
    url = "https://drive.google.com/file/d/1AbCdEfGhIjKlMnOpQrStUvWxYz012345/view?usp=sharing"
    installed = download.download_weights(url, tmp_path / "models", quiet=True)
    assert installed == [tmp_path / "models" / "model_every.best.pt"]
    assert finding.find_model("model_every", [tmp_path / "models"]) == installed[0]


def test_ctrl_c_during_a_download_removes_the_staging_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gdown

    def interrupted(url: str, output: str, **options: object) -> list[str]:
        make_checkpoint(Path(output) / "half.pt")
        raise KeyboardInterrupt

    monkeypatch.setattr(gdown, "download_folder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download.download_weights(download.PUBLISHED_FOLDER_URL, tmp_path / "models", quiet=True)
    assert leftovers(tmp_path) == []


def test_gdown_errors_become_one_line_download_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gdown

    def failing(url: str, output: str, **options: object) -> list[str]:
        raise gdown.exceptions.FileURLRetrievalError("Failed to retrieve file url:\n\n\tCannot retrieve it.\n")

    monkeypatch.setattr(gdown, "download_folder", failing)
    with pytest.raises(wtl_errors.DownloadError, match="Google Drive did not hand out the file") as info:
        download.download_weights(download.PUBLISHED_FOLDER_URL, tmp_path / "models", quiet=True)
    assert_one_line(info.value)
    assert leftovers(tmp_path) == []


def _dns_answers(host: str, seconds: float) -> bool | None:
    """True if `host` resolves, False if not, None if the resolver hangs longer than `seconds`."""
    result: list[bool] = []

    def resolve() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=resolve, daemon=True)
    thread.start()
    thread.join(seconds)
    return result[0] if result else None


def test_the_published_folder_without_internet_is_a_quick_download_error(tmp_path: Path) -> None:
    resolves = _dns_answers("drive.google.com", 3.0)
    if resolves is None:
        pytest.skip("the DNS resolver hangs here; an offline download would only test its timeout")
    if resolves:
        pytest.skip("drive.google.com resolves here; this test checks the offline path and must not download")
    start = time.monotonic()
    with pytest.raises(wtl_errors.DownloadError, match="cannot resolve drive.google.com") as info:
        download.download_weights(download.PUBLISHED_FOLDER_URL, tmp_path / "models", quiet=True)
    assert time.monotonic() - start < 5
    assert_one_line(info.value)
    assert leftovers(tmp_path) == []


def test_download_progress_goes_to_stderr_when_not_quiet(
    server: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, root = server
    make_checkpoint(root / "loud.pt")
    dest = tmp_path / "models"
    download.download_weights(f"{base}/loud.pt", dest, quiet=False)
    err = capsys.readouterr().err
    assert f"To: {dest}{os.sep}" in err  # the final folder, not the staging one
    assert ".wtl-download-" not in err


def test_load_checkpoint_of_a_bundle_is_not_confused_with_torch_zip() -> None:
    buffer = io.BytesIO()
    torch.save({"x": torch.zeros(1)}, buffer)
    names = zipfile.ZipFile(io.BytesIO(buffer.getvalue())).namelist()
    assert any(n.endswith("/data.pkl") for n in names)  # what download._zip_kind relies on
