"""``inferkit data fetch`` / ``list`` / ``path`` and the ``--data-dir`` default, against a local HTTP
server in a thread (nothing here reaches the internet).

The server serves the files of a temporary folder; :data:`inferkit.data.catalog.CHECKSUMS` is
patched to the digests of those files, computed here with :mod:`hashlib` (the code under test never
derives a checksum from what it downloads).
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import one_line_error, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from inferkit.data import catalog
from inferkit.data.catalog import CHECKSUMS, SOURCES, Checksum, default_data_dir
from inferkit.data.fetch import file_digest
from inferkit.data.mnist import MNISTDataset
from inferkit.errors import UserError

MNIST_FILES = list(SOURCES["mnist"].files)


def idx_gz(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes, gzip-compressed, holding ``array``."""
    magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def tiny_mnist(n: int = 6) -> dict[str, bytes]:
    """The four MNIST files with ``n`` images each: image i has pixel (0, 0) = 10 i, label i % 10."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n) * 10
    labels = (np.arange(n) % 10).astype(np.uint8)
    return {"train-images-idx3-ubyte.gz": idx_gz(images), "train-labels-idx1-ubyte.gz": idx_gz(labels),
            "t10k-images-idx3-ubyte.gz": idx_gz(images[::-1].copy()), "t10k-labels-idx1-ubyte.gz": idx_gz(labels)}


class Server:
    """A threaded HTTP server over ``folder``; ``requests`` lists the paths asked for, and a path in
    ``cut`` is answered with its full Content-Length but only half its bytes, then the connection closes."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.requests, self.cut = folder, [], set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                path = server.folder / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path.lstrip("/") in server.cut:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path, monkeypatch, no_fetched_data):
    """A server over a folder holding the tiny MNIST files, INFERKIT_MIRROR pointing at it, and
    CHECKSUMS['mnist'] holding their MD5s (computed here); yields ``(server, files)``."""
    folder = tmp_path / "served"
    folder.mkdir()
    files = tiny_mnist()
    for name, body in files.items():
        (folder / name).write_bytes(body)
    monkeypatch.setitem(CHECKSUMS, "mnist", {name: Checksum("md5", hashlib.md5(body).hexdigest())
                                             for name, body in files.items()})
    server = Server(folder)
    monkeypatch.setenv("INFERKIT_MIRROR", server.url)
    yield server, files
    server.close()


def leftovers(folder: Path) -> list[str]:
    """Every name in ``folder`` (temporary ``.part`` files included)."""
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_fetch_downloads_and_verifies_every_file(served, tmp_path, capsys):
    server, files = served
    root = tmp_path / "root"
    code, out, err = run_cli(["data", "fetch", "mnist", "--root", root, "--quiet"], capsys)
    assert code == 0, err
    assert out.strip() == str(root / "mnist")
    assert leftovers(root / "mnist") == sorted(files)
    for name, body in files.items():
        assert (root / "mnist" / name).read_bytes() == body
    assert sorted(server.requests) == sorted("/" + name for name in files)


def test_fetch_reports_each_file_verified(served, tmp_path, capsys):
    code, _, err = run_cli(["data", "fetch", "mnist", "--root", tmp_path / "root"], capsys)
    assert code == 0, err
    for name in MNIST_FILES:
        assert f"{name}: fetched, md5 verified" in err


def test_fetched_mnist_loads_through_the_data_set(served, tmp_path, capsys):
    """What was fetched is what MNISTDataset reads: the pixels written above come back."""
    root = tmp_path / "root"
    assert run_cli(["data", "fetch", "mnist", "--root", root, "--quiet"], capsys)[0] == 0
    data = MNISTDataset(str(root / "mnist"))
    assert (len(data.train), len(data.test)) == (6, 6)
    expected = torch.tensor([10.0 * i for i in range(6)]) * 2 / 255 - 1
    assert torch.allclose(data.train.x[:, 0, 0, 0], expected)
    assert torch.allclose(data.test.x[:, 0, 0, 0], expected.flip(0))


def test_mirror_flag_wins_over_the_environment(served, tmp_path, capsys, monkeypatch):
    server, _ = served
    monkeypatch.setenv("INFERKIT_MIRROR", "http://127.0.0.1:9/nowhere/")
    code, _, err = run_cli(["data", "fetch", "mnist", "--root", tmp_path / "r", "--mirror", server.url.rstrip("/"),
                            "--quiet"], capsys)
    assert code == 0, err


def test_root_defaults_to_inferkit_data_then_the_cache(served, no_fetched_data, tmp_path, capsys, monkeypatch):
    """Without --root: $INFERKIT_DATA/mnist; without it too: XDG_CACHE_HOME/inferkit/mnist."""
    cache = no_fetched_data
    assert run_cli(["data", "fetch", "mnist", "--quiet"], capsys)[0] == 0
    assert leftovers(cache / "mnist") == sorted(MNIST_FILES)
    monkeypatch.setenv("INFERKIT_DATA", str(tmp_path / "data"))
    assert run_cli(["data", "fetch", "mnist", "--quiet"], capsys)[0] == 0
    assert leftovers(tmp_path / "data" / "mnist") == sorted(MNIST_FILES)


def test_corrupt_download_is_refused_and_not_kept(served, tmp_path, capsys):
    server, files = served
    bad = "t10k-images-idx3-ubyte.gz"
    (server.folder / bad).write_bytes(files[bad][:-1] + bytes([files[bad][-1] ^ 0xFF]))
    root = tmp_path / "root"
    code, _, err = run_cli(["data", "fetch", "mnist", "--root", root, "--quiet"], capsys)
    line = one_line_error(code, err)
    assert bad in line and "md5" in line and "not kept" in line, line
    assert bad not in leftovers(root / "mnist")
    assert not [name for name in leftovers(root / "mnist") if name.endswith(".part")]


def test_interrupted_download_leaves_nothing(served, tmp_path, capsys):
    server, _ = served
    cut = "train-images-idx3-ubyte.gz"
    server.cut.add(cut)
    root = tmp_path / "root"
    code, _, err = run_cli(["data", "fetch", "mnist", "--root", root, "--quiet"], capsys)
    line = one_line_error(code, err)
    assert cut in line, line
    assert cut not in leftovers(root / "mnist")
    assert not [name for name in leftovers(root / "mnist") if name.endswith(".part")]


def test_keyboard_interrupt_mid_file_leaves_nothing(served, tmp_path, monkeypatch):
    """Ctrl-C while a file streams in removes its temporary file; the final name never appears."""
    from inferkit.data import fetch as fetch_module

    def interrupt(n: int) -> None:
        raise KeyboardInterrupt

    folder = tmp_path / "root" / "mnist"
    with pytest.raises(KeyboardInterrupt):
        fetch_module.fetch("mnist", root=tmp_path / "root", progress=lambda name, total: interrupt)
    assert leftovers(folder) == []


def test_refetch_of_verified_files_makes_no_request(served, tmp_path, capsys):
    server, _ = served
    root = tmp_path / "root"
    assert run_cli(["data", "fetch", "mnist", "--root", root, "--quiet"], capsys)[0] == 0
    asked = len(server.requests)
    code, _, err = run_cli(["data", "fetch", "mnist", "--root", root], capsys)
    assert code == 0, err
    assert len(server.requests) == asked
    assert all(f"{name}: already here, md5 verified" in err for name in MNIST_FILES), err


def test_a_damaged_file_already_there_is_fetched_again(served, tmp_path, capsys):
    server, files = served
    root = tmp_path / "root"
    assert run_cli(["data", "fetch", "mnist", "--root", root, "--quiet"], capsys)[0] == 0
    damaged = root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    damaged.write_bytes(b"not the file")
    asked = len(server.requests)
    assert run_cli(["data", "fetch", "mnist", "--root", root, "--quiet"], capsys)[0] == 0
    assert server.requests[asked:] == ["/t10k-labels-idx1-ubyte.gz"]
    assert damaged.read_bytes() == files["t10k-labels-idx1-ubyte.gz"]


def test_file_without_published_checksum_is_kept_and_shown_unverified(served, tmp_path, capsys, monkeypatch):
    _, files = served
    name = "t10k-labels-idx1-ubyte.gz"
    table = dict(CHECKSUMS["mnist"])
    del table[name]
    monkeypatch.setitem(CHECKSUMS, "mnist", table)
    root = tmp_path / "root"
    code, _, err = run_cli(["data", "fetch", "mnist", "--root", root], capsys)
    assert code == 0, err
    assert f"{name}: fetched, unverified (no published checksum; sha256 {hashlib.sha256(files[name]).hexdigest()})" \
        in err
    code, out, _ = run_cli(["data", "list", "--root", root], capsys)
    mnist = next(line for line in out.splitlines() if line.startswith("mnist "))
    assert code == 0 and f"unverified: {name}" in mnist, out


def test_network_error_is_one_line(no_fetched_data, tmp_path, capsys):
    code, _, err = run_cli(["data", "fetch", "svhn", "--root", tmp_path, "--mirror", "http://127.0.0.1:9/",
                            "--quiet"], capsys)
    line = one_line_error(code, err)
    assert "cannot download http://127.0.0.1:9/train_32x32.mat" in line, line
    assert leftovers(tmp_path / "svhn") == []


def test_missing_file_on_the_mirror_is_one_line(served, tmp_path, capsys):
    server, _ = served
    (server.folder / "t10k-images-idx3-ubyte.gz").unlink()
    code, _, err = run_cli(["data", "fetch", "mnist", "--root", tmp_path / "r", "--quiet"], capsys)
    line = one_line_error(code, err)
    assert "HTTP 404" in line and "t10k-images-idx3-ubyte.gz" in line, line


@pytest.mark.parametrize("args, words", [
    (["data", "fetch", "cifar", "--quiet"], "unknown data set 'cifar'"),
    (["data", "fetch", "mnist", "--mirror", "ftp://example.org/", "--quiet"], "--mirror"),
    (["data", "path", "cifar"], "unknown data set 'cifar'"),
])
def test_user_mistakes_are_one_line(no_fetched_data, capsys, args, words):
    code, _, err = run_cli(args, capsys)
    line = one_line_error(code, err)
    assert words in line, line
    assert not no_fetched_data.exists()


def test_list_shows_what_is_here(served, tmp_path, capsys):
    root = tmp_path / "root"
    code, out, _ = run_cli(["data", "list", "--root", root], capsys)
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(SOURCES) <= set(rows), out
    assert all("no" in rows[name] and "to fetch" in rows[name] for name in SOURCES), out
    assert run_cli(["data", "fetch", "mnist", "--root", root, "--quiet"], capsys)[0] == 0
    code, out, _ = run_cli(["data", "list", "--root", root], capsys)
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "yes" in rows["mnist"] and "verified (md5)" in rows["mnist"], out
    assert "no" in rows["svhn"]


def test_list_flags_a_mismatch(served, tmp_path, capsys):
    root = tmp_path / "root"
    assert run_cli(["data", "fetch", "mnist", "--root", root, "--quiet"], capsys)[0] == 0
    (root / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"x")
    code, out, _ = run_cli(["data", "list", "--root", root], capsys)
    assert code == 0 and "MISMATCH" in out


# -- the --data-dir default ---------------------------------------------------------------------------------
def write_tiny_mnist(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    files = tiny_mnist()
    for name, body in files.items():
        (folder / name).write_bytes(body)
    return files


def test_default_data_dir_prefers_inferkit_data_then_the_cache(no_fetched_data, tmp_path, monkeypatch):
    write_tiny_mnist(no_fetched_data / "mnist")
    assert default_data_dir("mnist") == str((no_fetched_data / "mnist").resolve())
    monkeypatch.setenv("INFERKIT_DATA", str(tmp_path / "data"))
    assert default_data_dir("mnist") == str((no_fetched_data / "mnist").resolve())  # nothing there yet
    write_tiny_mnist(tmp_path / "data" / "mnist")
    assert default_data_dir("mnist") == str((tmp_path / "data" / "mnist").resolve())


def test_default_data_dir_ignores_a_folder_without_the_files(no_fetched_data):
    (no_fetched_data / "mnist").mkdir(parents=True)
    (no_fetched_data / "mnist" / "notes.txt").write_text("empty")
    with pytest.raises(UserError, match=r"^MNIST is not here; run: inferkit data fetch mnist"):
        default_data_dir("mnist")


def test_default_data_dir_of_other_data_sets_names_their_fetch(no_fetched_data):
    for name in ("svhn", "binarized-mnist"):
        with pytest.raises(UserError, match=f"is not here; run: inferkit data fetch {name}"):
            default_data_dir(name)


def test_cache_root_honours_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert catalog.cache_root() == tmp_path / "inferkit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert catalog.cache_root() == Path.home() / ".cache" / "inferkit"


TINY_RUN = ["--model", "ladder", "--sampler", "shortrun", "--tuner", "fixed", "--model-opt", "num_layers=2",
            "--model-opt", "latent_dims=4,2", "--model-opt", "nf=4", "--model-opt", "image_size=28",
            "--model-opt", "channels=1", "--sampler-opt", "num_steps=2", "--batch-size", "2", "--iterations", "1",
            "--tune-every", "0", "--quiet", "--train-opt", "eval_examples=2"]


def test_run_with_data_mnist_reads_the_cache(no_fetched_data, tmp_path, capsys):
    write_tiny_mnist(no_fetched_data / "mnist")
    out = tmp_path / "run"
    code, _, err = run_cli(["run", *TINY_RUN, "--data", "mnist", "--out", out], capsys)
    assert code == 0, err
    assert (out / "summary.json").is_file()


def test_run_with_data_mnist_and_nothing_fetched_names_the_fetch_command(no_fetched_data, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["run", *TINY_RUN, "--data", "mnist", "--out", out], capsys)
    line = one_line_error(code, err)
    assert line.startswith("error: MNIST is not here; run: inferkit data fetch mnist"), line
    assert not out.exists() and not no_fetched_data.exists()


def test_data_path_prints_the_folder(no_fetched_data, capsys):
    write_tiny_mnist(no_fetched_data / "mnist")
    code, out, _ = run_cli(["data", "path", "mnist"], capsys)
    assert code == 0 and out.strip() == str((no_fetched_data / "mnist").resolve())


def test_published_mnist_checksums_match_the_real_test_files(mnist_dir):
    """The MD5s in the table are those of the real files (the shared copy of MNIST's t10k pair)."""
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        path = Path(mnist_dir) / name
        if not path.is_file():
            pytest.skip(f"{path} not present")
        checksum = CHECKSUMS["mnist"][name]
        assert file_digest(path, checksum.algorithm) == checksum.digest


def test_every_source_file_has_a_published_checksum_of_the_right_length():
    lengths = {"md5": 32, "sha256": 64}
    for name, src in SOURCES.items():
        assert set(CHECKSUMS[name]) == set(src.files), name
        for checksum in CHECKSUMS[name].values():
            assert len(checksum.digest) == lengths[checksum.algorithm]
            int(checksum.digest, 16)
    assert CHECKSUMS["inception"]["pt_inception-2015-12-05-6726825d.pth"].digest.startswith("6726825d")


def test_inception_file_name_is_the_one_the_fid_loader_names():
    from inferkit.eval.inception import WEIGHTS_NAME

    assert list(SOURCES["inception"].files) == [WEIGHTS_NAME]


# -- atomicity as a property, over a file:// mirror ------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(body=st.binary(min_size=0, max_size=3000), flip=st.one_of(st.none(), st.integers(0, 2999)),
       again=st.booleans())
def test_a_download_is_kept_exactly_when_its_bytes_are_the_published_ones(body, flip, again):
    """Serve ``body`` (one byte flipped when ``flip`` falls inside it) under a checksum published for
    ``body``: the final name holds exactly ``body`` after a clean transfer, and nothing otherwise
    (no temporary file either); fetching again over a good file changes nothing."""
    import tempfile

    name = "t10k-labels-idx1-ubyte.gz"
    served = bytearray(body)
    corrupt = flip is not None and flip < len(body)
    if corrupt:
        served[flip] ^= 0x5A
    with tempfile.TemporaryDirectory() as scratch, pytest.MonkeyPatch.context() as patch:
        mirror, root = Path(scratch) / "mirror", Path(scratch) / "root"
        mirror.mkdir()
        (mirror / name).write_bytes(bytes(served))
        patch.setitem(SOURCES, "tiny", catalog.Source("tiny", "tiny", "http://127.0.0.1:9/", {name: len(body)}))
        patch.setitem(CHECKSUMS, "tiny", {name: Checksum("sha256", hashlib.sha256(body).hexdigest())})
        from inferkit.data.fetch import fetch

        for _ in range(2 if again else 1):
            if corrupt:
                with pytest.raises(UserError, match="not the published"):
                    fetch("tiny", root=root, mirror=mirror.as_uri())
                assert leftovers(root / "tiny") == []
            else:
                fetch("tiny", root=root, mirror=mirror.as_uri())
                assert leftovers(root / "tiny") == [name]
                assert (root / "tiny" / name).read_bytes() == body


def test_mirror_urls_join_with_or_without_a_final_slash(monkeypatch):
    from inferkit.data.fetch import file_url, mirror_base

    assert file_url("http://h/a", "x.gz") == file_url("http://h/a/", "x.gz") == "http://h/a/x.gz"
    monkeypatch.delenv("INFERKIT_MIRROR", raising=False)
    assert mirror_base(None) is None
    monkeypatch.setenv("INFERKIT_MIRROR", "file:///srv/data")
    assert mirror_base(None) == "file:///srv/data"
    assert mirror_base("https://m/") == "https://m/"
    with pytest.raises(UserError, match="INFERKIT_MIRROR"):
        monkeypatch.setenv("INFERKIT_MIRROR", "s3://bucket")
        mirror_base(None)
