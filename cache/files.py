"""The file primitives every writer of the project uses: atomic writes and content hashes.

:func:`write_atomic` is how a file that others read (a JSON record, a CSV, a run's summary, a
manifest) is replaced: the bytes go to a temporary name of this call's own in the same folder,
are fsynced, renamed over the target, and the folder is fsynced, so a reader sees the old file
or the new one, never half of one, even across a crash. Temporary names start with ``.`` and
end in ``.tmp``. :func:`sha256_file` is the one content hash: of image files (their cache key),
of weights files (part of the backbone fingerprint), of anything else a record identifies.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"
_CHUNK = 1 << 22


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(path: Path, keep_suffix: bool = False) -> Path:
    """A name beside ``path`` that no other writer uses: ``.<name>.<8 hex>.tmp``, or with
    ``keep_suffix`` ``.<stem>.<8 hex>.tmp<suffix>`` (Keras saves only to ``*.keras``)."""
    tag = uuid.uuid4().hex[:8]
    if keep_suffix:
        return path.with_name(f".{path.stem}.{tag}{TEMP_SUFFIX}{path.suffix}")
    return path.with_name(f".{path.name}.{tag}{TEMP_SUFFIX}")


@contextlib.contextmanager
def replacing(path: Path, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new contents to; when the block ends without
    an error, the file is fsynced and renamed over ``path`` and the folder fsynced. On any error
    the temporary file is removed and ``path`` is as it was."""
    path = Path(path)
    temp = temporary_name(path, keep_suffix)
    try:
        yield temp
        with open(temp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes | str, encoding: str = "utf-8",
                 errors: str = "strict") -> None:
    """Replace ``path`` by ``data`` (text is encoded with ``encoding`` and ``errors``) so that
    readers never see a partial file (see :func:`replacing`)."""
    payload = data.encode(encoding, errors) if isinstance(data, str) else data
    with replacing(path) as temp:
        temp.write_bytes(payload)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    """Hex sha256 of ``text`` as UTF-8 (file names that are not UTF-8 keep their bytes)."""
    return sha256_bytes(text.encode("utf-8", "surrogateescape"))


def sha256_text_digest(text: str) -> bytes:
    """The 32 bytes of :func:`sha256_text` (for a number drawn per image: no hex round trip)."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def sha256_file(path: Path | str | BinaryIO) -> str:
    """Hex sha256 of the bytes of the file at ``path`` (or of an open binary file, from where
    it stands), read in 4 MiB chunks."""
    if not isinstance(path, (str, os.PathLike)):
        return _sha256_of(path)
    with open(path, "rb") as fh:
        return _sha256_of(fh)


def _sha256_of(fh: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := fh.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()
