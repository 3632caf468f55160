"""Local paths and cloud URLs behind one interface, for workdirs, data and results.

``as_path`` turns what a user passes (``/ckpt/run``, ``file:///ckpt/run``,
``gs://bucket/run``, ``s3://...``, ``az://...``) into a path object: a
``pathlib.Path`` for local paths (``file://`` URLs included), an
``etils.epath.Path`` for cloud URLs, which reads and writes through fsspec
(``gcsfs`` for ``gs://``, ``s3fs`` for ``s3://``, ``adlfs`` for ``az://``; or
TensorFlow's ``tf.io.gfile`` when TensorFlow is installed). Both offer the same
methods (``/``, ``open``, ``read_text``, ``exists``, ``mkdir``, ``iterdir``...).
Orbax writes checkpoints to either kind directly (TensorStore's own GCS and S3 drivers).

Object stores have no rename and no append, so the few operations that differ
are here: ``atomic_write`` (temporary file and rename locally; one object write
remotely, which readers see whole or not at all), ``files_under`` (a recursive
listing) and ``remove_tree``.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Iterator

from etils import epath

from experiments.configs import ConfigError

Path = pathlib.Path | epath.Path
"""What ``as_path`` returns: ``pathlib.Path`` (local) or ``etils.epath.Path`` (a URL)."""

FILE_SCHEME = "file://"
CLOUD_SCHEMES = ("gs://", "s3://", "az://")
"""URL schemes ``etils.epath`` reads and writes (with the matching fsspec package)."""


def scheme_of(path: str | os.PathLike) -> str | None:
  """``"gs://"`` for ``gs://bucket/x``; None for a plain path."""
  text = os.fspath(path)
  head, sep, _ = text.partition("://")
  return head + sep if sep and head.isidentifier() else None


def as_path(path: str | os.PathLike, what: str = "path") -> Path:
  """The path object for a local path, a ``file://`` URL or a cloud URL.

  Args:
    path: what the user gave (a string, ``pathlib.Path`` or ``epath.Path``).
    what: how error messages name it (e.g. ``--workdir``).

  Raises:
    ConfigError: a URL scheme that is not supported, or a ``file://`` URL naming a host.
  """
  if isinstance(path, pathlib.Path):
    return path
  text = os.fspath(path)
  scheme = scheme_of(text)
  if scheme is None:
    return pathlib.Path(text)
  if scheme == FILE_SCHEME:
    local = text[len(FILE_SCHEME) :]
    if not local.startswith("/"):
      raise ConfigError(f"{what}={text} names a host; use file:///absolute/path")
    return pathlib.Path(local)
  if scheme not in CLOUD_SCHEMES:
    allowed = ", ".join((FILE_SCHEME,) + CLOUD_SCHEMES)
    raise ConfigError(f"{what}={text}: {scheme} is not supported; one of {allowed} or a local path")
  return epath.Path(text)


def is_local(path: Path) -> bool:
  return isinstance(path, pathlib.Path)


def absolute(path: Path) -> Path:
  """A local path made absolute (orbax wants one); a URL as it is."""
  return path.absolute() if is_local(path) else path


def atomic_write(path: Path, text: str) -> None:
  """Writes ``text`` so that readers see the old or the new contents, never a part.

  Locally: a temporary file, flushed to disk, renamed over ``path``. Remotely: one
  object write (object stores publish an object only once it is complete).
  """
  if not is_local(path):
    path.write_text(text)
    return
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def files_under(directory: Path) -> Iterator[tuple[str, Path]]:
  """``(relative posix name, path)`` of every file below ``directory``, recursively."""
  if is_local(directory):
    for path in sorted(directory.rglob("*")):
      if path.is_file():
        yield path.relative_to(directory).as_posix(), path
    return
  stack = [("", directory)]
  while stack:
    prefix, folder = stack.pop()
    for child in sorted(folder.iterdir(), key=str):
      name = f"{prefix}{child.name}"
      if child.is_dir():
        stack.append((name + "/", child))
      else:
        yield name, child


def remove_tree(path: Path) -> None:
  """Removes a folder and everything below it (missing: nothing to do)."""
  if is_local(path):
    shutil.rmtree(path, ignore_errors=True)
  elif path.exists():
    path.rmtree()


def move(source: Path, destination: Path) -> None:
  """Moves a file or folder (a copy and delete on object stores, done by the backend)."""
  if is_local(source):
    shutil.move(str(source), destination)
  else:
    source.rename(destination)
