"""``inferkit data fetch``: download a data set's files, each checked against its published checksum.

Downloads use :mod:`urllib.request` from the standard library: a few files fetched once over
plain HTTP(S) need nothing more, and the package keeps no network dependency of its own. Each
file is written atomically: it is streamed into a temporary name in its final folder
(``.NAME.XXXXXXXX.part``), hashed on the way, checked against :data:`~inferkit.data.catalog.CHECKSUMS`,
and only then renamed onto its final name with :func:`os.replace`. A short read, a bad checksum,
a network error or Ctrl-C removes the temporary file, so a partial or corrupt download never has
the final name. A file already there that matches its checksum is not fetched again; one that does
not is removed and fetched again. A file without a published checksum is kept, reported as
unverified, with the SHA-256 of what was received.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inferkit.data.catalog import (
    CHECKSUMS,
    MIRROR_ENV,
    Checksum,
    data_root,
    holds_files,
    search_folders,
    source,
)
from inferkit.errors import UserError

__all__ = ["FileState", "download", "fetch", "file_digest", "file_url", "inspect", "locate", "mirror_base"]

CHUNK = 1 << 16
TIMEOUT_SECONDS = 60.0
MIRROR_SCHEMES = ("http", "https", "file")
VERIFIED, UNVERIFIED, MISMATCH, MISSING = "verified", "unverified", "mismatch", "missing"

Progress = Callable[[str, int | None], Callable[[int], None]]
"""``progress(file_name, total_bytes)`` starts a progress display and returns ``advance(bytes)``."""


@dataclass(frozen=True)
class FileState:
    """One file of a data set on disk: its ``verdict`` is ``verified``, ``unverified`` (no published
    checksum, or the file is kept unpacked), ``mismatch`` or ``missing``."""

    name: str
    path: Path
    size: int | None
    verdict: str
    algorithm: str | None = None


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of the file at ``path`` under :func:`hashlib.new` ``algorithm``."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def _verdict(path: Path, checksum: Checksum | None) -> str:
    if checksum is None:
        return UNVERIFIED
    try:
        digest = file_digest(path, checksum.algorithm)
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or exc})") from None
    return VERIFIED if digest == checksum.digest.lower() else MISMATCH


def mirror_base(mirror: str | None) -> str | None:
    """The base URL that replaces the sources' own: ``mirror``, else ``$INFERKIT_MIRROR``, else ``None``."""
    chosen = mirror if mirror is not None and mirror.strip() else os.environ.get(MIRROR_ENV, "").strip()
    if not chosen:
        return None
    scheme = urllib.parse.urlsplit(chosen).scheme.lower()
    if scheme not in MIRROR_SCHEMES:
        flag = "--mirror" if mirror else MIRROR_ENV
        raise UserError(f"{flag} {chosen!r} is not an http://, https:// or file:// URL; give the base URL of "
                        "a folder holding the files")
    return chosen


def file_url(base: str, file: str) -> str:
    """``base`` (a folder's URL, with or without its final ``/``) joined with ``file``."""
    return base.rstrip("/") + "/" + urllib.parse.quote(file)


def _open(url: str):
    request = urllib.request.Request(url, headers={"User-Agent": "inferkit"})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as exc:
        raise UserError(f"cannot download {url} (HTTP {exc.code} {exc.reason}); try again later, or give "
                        "--mirror URL") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise UserError(f"cannot download {url} ({reason or type(exc).__name__}); check the network, or "
                        "give --mirror URL") from None


def _length(response) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _copy(response, out, hasher, url: str, advance: Callable[[int], None]) -> int:
    """Stream ``response`` into ``out`` and ``hasher``; returns the bytes received."""
    received = 0
    while True:
        try:
            chunk = response.read(CHUNK)
        except (http.client.HTTPException, OSError) as exc:
            raise UserError(f"download of {url} broke off after {received} bytes ({type(exc).__name__}); "
                            "nothing was kept; run the command again") from None
        if not chunk:
            return received
        try:
            out.write(chunk)
        except OSError as exc:
            raise UserError(f"cannot write {out.name} ({exc.strerror or exc}); check the free space") from None
        hasher.update(chunk)
        received += len(chunk)
        advance(len(chunk))


def download(url: str, dest: Path, checksum: Checksum | None, *, expected_size: int | None = None,
             progress: Progress | None = None) -> str:
    """Fetch ``url`` into ``dest`` atomically (see the module docstring); returns the hex digest of
    what was received (under ``checksum``'s algorithm, or SHA-256 without one)."""
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    hasher = hashlib.new(checksum.algorithm if checksum is not None else "sha256")
    try:
        with _open(url) as response:
            length = _length(response)
            advance = progress(dest.name, length or expected_size) if progress is not None else (lambda n: None)
            try:
                out = open(tmp, "wb")  # noqa: SIM115 - an OSError here is the user's; the with below closes it
            except OSError as exc:
                raise UserError(f"cannot write into {dest.parent} ({exc.strerror or exc})") from None
            with out:
                received = _copy(response, out, hasher, url, advance)
                out.flush()
                os.fsync(out.fileno())
        if length is not None and received != length:
            raise UserError(f"download of {url} stopped after {received} of {length} bytes; nothing was kept; "
                            "run the command again")
        digest = hasher.hexdigest()
        if checksum is not None and digest != checksum.digest.lower():
            raise UserError(f"{url} has {checksum.algorithm} {digest}, not the published {checksum.digest}; the "
                            "download was not kept (a corrupt transfer or a wrong mirror)")
        os.replace(tmp, dest)
        return digest
    finally:
        tmp.unlink(missing_ok=True)


def _describe(verdict: str, algorithm: str | None) -> str:
    return f"{algorithm} verified" if verdict == VERIFIED else "unverified (no published checksum)"


def fetch(name: str, *, root: str | os.PathLike[str] | None = None, mirror: str | None = None,
          progress: Progress | None = None, say: Callable[[str], None] = lambda line: None) -> Path:
    """Fetch every file of data set ``name`` into ``data_root(root) / name``; returns that folder.
    ``say`` receives one line per file (what was done and whether it is verified)."""
    src = source(name)
    base = mirror_base(mirror) or src.base_url
    folder = data_root(root) / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {folder} ({exc.strerror or exc}); give --root DIR or set "
                        "INFERKIT_DATA to a folder you can write to") from None
    for file, size in src.files.items():
        dest, checksum = folder / file, CHECKSUMS.get(name, {}).get(file)
        algorithm = checksum.algorithm if checksum is not None else None
        if dest.is_file():
            verdict = _verdict(dest, checksum)
            if verdict != MISMATCH:
                say(f"{file}: already here, {_describe(verdict, algorithm)}")
                continue
            say(f"{file}: the file there does not match its published {algorithm}; fetching it again")
            dest.unlink()
        digest = download(file_url(base, file), dest, checksum, expected_size=size, progress=progress)
        if checksum is not None:
            say(f"{file}: fetched, {algorithm} verified")
        else:
            say(f"{file}: fetched, unverified (no published checksum; sha256 {digest})")
    return folder


def locate(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder of ``name``: under ``root`` when given; else the first folder a data set would read
    (``$INFERKIT_DATA/NAME``, the cache) that holds its files; else where ``fetch`` would write."""
    if root is not None and str(root).strip():
        return data_root(root) / name
    return next((folder for folder in search_folders(name) if holds_files(folder, name)), data_root() / name)


def inspect(name: str, root: str | os.PathLike[str] | None = None) -> tuple[Path, list[FileState]]:
    """The folder of ``name`` (:func:`locate`) and the state of each of its files; a file kept
    unpacked (``X`` for ``X.gz``) is there but unverified."""
    folder = locate(name, root)
    states = []
    for file in source(name).files:
        checksum = CHECKSUMS.get(name, {}).get(file)
        algorithm = checksum.algorithm if checksum is not None else None
        unpacked = folder / file.removesuffix(".gz")
        if (folder / file).is_file():
            path = folder / file
            states.append(FileState(file, path, path.stat().st_size, _verdict(path, checksum), algorithm))
        elif unpacked != folder / file and unpacked.is_file():
            states.append(FileState(unpacked.name, unpacked, unpacked.stat().st_size, UNVERIFIED))
        else:
            states.append(FileState(file, folder / file, None, MISSING, algorithm))
    return folder, states
