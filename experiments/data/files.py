"""Dataset files in their original distribution formats: readers, checksums, known counts.

Formats:
- MNIST / Fashion-MNIST: IDX files (big-endian header: two zero bytes, type code 0x08 =
  uint8, number of dimensions, one uint32 per dimension; then the data), gzip-compressed
  (``*.gz``) or plain.
- CIFAR-10 binary: 3073-byte records (label byte, then 1024 R, 1024 G, 1024 B bytes, each
  32x32 row-major). CIFAR-100 binary: 3074-byte records (coarse label, fine label, pixels).
- CIFAR python: pickled dicts with ``b"data"`` (uint8 [N, 3072], same pixel order) and
  ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100). They are read with an
  unpickler that only admits numpy arrays and dtypes, so a pickle cannot run code.

Which files form a split (choice for partial copies such as ``../shared/data``'s CIFAR-10
subset): CIFAR-10 binary takes every ``data_batch*.bin`` (train) or ``test_batch*.bin``
(test) of the directory in name order. Files with official names must form the complete
official set, and file names listed in ``CHECKSUMS`` are verified against their checksum
and example count (the shared subset files ``data_batch_1_first4000.bin`` and
``test_batch_first1000.bin`` are listed: 4000 and 1000 examples). Other file names are only
checked structurally. ``verify=False`` skips checksums and counts (for generated files).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import re

import numpy as np

from experiments.data.catalog import CHECKSUMS, INFOS, DatasetInfo


class DatasetError(ValueError):
  """A dataset is missing or corrupt; the message is one line: what, where, how to get it."""


IDX_NAMES = {
  "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR10_BIN = {"train": r"data_batch.*\.bin", "test": r"test_batch.*\.bin"}
CIFAR10_BIN_OFFICIAL = {
  "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
  "test": ("test_batch.bin",),
}
CIFAR10_PY_OFFICIAL = {
  "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
  "test": ("test_batch",),
}
CIFAR_SIDE = 32


def file_digest(path: str, algorithm: str) -> str:
  """Hex digest of a file (``algorithm`` is a hashlib name such as "sha256" or "md5")."""
  digest = hashlib.new(algorithm)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _check_file(dataset: str, path: str, count: int, verify: bool) -> None:
  """Checks checksum and example count of a file whose name is in ``CHECKSUMS``."""
  known = CHECKSUMS.get((dataset, os.path.basename(path)))
  if not verify or known is None:
    return
  algorithm, expected, expected_count = known
  actual = file_digest(path, algorithm)
  if actual != expected:
    raise DatasetError(
      f"{dataset}: {path} is corrupt or not the official file ({algorithm} {actual}, "
      f"expected {expected}); {INFOS[dataset].how_to_get}"
    )
  if expected_count is not None and count != expected_count:
    raise DatasetError(f"{dataset}: {path} has {count} examples, expected {expected_count}")


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file of unsigned bytes, gzip-compressed (recognized by its magic) or plain."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
    if raw[:2] == b"\x1f\x8b":
      raw = gzip.decompress(raw)
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise DatasetError(f"cannot read IDX file {path}: {e}") from None
  if len(raw) < 4 or raw[0:2] != b"\0\0" or raw[2] != 0x08:
    raise DatasetError(f"{path} is not an IDX file of unsigned bytes (bad magic {raw[:4]!r})")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if ndim < 1 or len(raw) < header:
    raise DatasetError(f"{path}: truncated IDX header")
  shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
  if len(raw) - header != int(np.prod(shape)):
    raise DatasetError(f"{path}: IDX header says shape {shape} but holds {len(raw) - header} bytes")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def read_cifar_bin(path: str, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
  """Reads a CIFAR binary file; ``label_bytes`` 1 (CIFAR-10) or 2 (CIFAR-100, fine label last).

  Returns:
    ``(images uint8[N, 32, 32, 3], labels int64[N])``.
  """
  pixels = 3 * CIFAR_SIDE * CIFAR_SIDE
  record = label_bytes + pixels
  raw = np.fromfile(path, np.uint8)
  if raw.size == 0 or raw.size % record:
    raise DatasetError(f"{path}: {raw.size} bytes is not a whole number of {record}-byte records")
  rows = raw.reshape(-1, record)
  images = rows[:, label_bytes:].reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), rows[:, label_bytes - 1].astype(np.int64)


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickler that only reconstructs numpy arrays and dtypes."""

  ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # Python 3 writes bytes this way in protocol-2 pickles.
  }

  def find_class(self, module: str, name: str):
    if (module, name) not in self.ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
    return super().find_class(module, name)


def read_cifar_pickle(path: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
  """Reads a CIFAR python-version batch (``label_key`` b"labels" or b"fine_labels")."""
  try:
    with open(path, "rb") as f:
      batch = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    data = np.asarray(batch[b"data"], np.uint8)
    labels = np.asarray(batch[label_key], np.int64)
  except (OSError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as e:
    raise DatasetError(f"{path}: not a CIFAR python batch ({type(e).__name__}: {e})") from None
  if data.ndim != 2 or data.shape[1] != 3 * CIFAR_SIDE**2 or len(data) != len(labels):
    raise DatasetError(f"{path}: bad CIFAR batch shapes data {data.shape}, labels {labels.shape}")
  images = data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def _idx_files(folder: str, split: str) -> list[str] | None:
  paths = []
  for name in IDX_NAMES[split]:
    found = [p for p in (name + ".gz", name) if os.path.isfile(os.path.join(folder, p))]
    if not found:
      return None
    paths.append(os.path.join(folder, found[0]))
  return paths


def _load_idx(dataset: str, folder: str, split: str, verify: bool):
  image_path, label_path = _idx_files(folder, split)
  images, labels = read_idx(image_path), read_idx(label_path)
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise DatasetError(
      f"{dataset}: {image_path} shape {images.shape} does not match {label_path} "
      f"shape {labels.shape}"
    )
  _check_file(dataset, image_path, len(images), verify)
  _check_file(dataset, label_path, len(labels), verify)
  return images[..., None], labels.astype(np.int64)


def _cifar_files(dataset: str, folder: str, split: str) -> tuple[str, list[str]] | None:
  """``(format, paths)`` of the split in ``folder`` or None; format "bin" or "py"."""
  names = sorted(os.listdir(folder))
  if dataset == "cifar10":
    binary = [n for n in names if re.fullmatch(CIFAR10_BIN[split], n)]
    python = [n for n in CIFAR10_PY_OFFICIAL[split] if n in names]
  else:
    binary = [n for n in names if n == f"{split}.bin"]
    python = [n for n in names if n == split]
  if binary:
    return "bin", [os.path.join(folder, n) for n in binary]
  if python:
    return "py", [os.path.join(folder, n) for n in python]
  return None


def _check_complete(dataset: str, folder: str, fmt: str, paths: list[str], split: str) -> None:
  """Official file names must come as the complete official set."""
  if dataset != "cifar10":
    return
  official = (CIFAR10_BIN_OFFICIAL if fmt == "bin" else CIFAR10_PY_OFFICIAL)[split]
  present = {os.path.basename(p) for p in paths}
  if present & set(official) and not set(official) <= present:
    missing = sorted(set(official) - present)
    raise DatasetError(
      f"{dataset}: {folder} lacks {', '.join(missing)} of the official {split} files; "
      f"{INFOS[dataset].how_to_get}"
    )


def _load_cifar(dataset: str, folder: str, split: str, verify: bool):
  fmt, paths = _cifar_files(dataset, folder, split)
  if verify:
    _check_complete(dataset, folder, fmt, paths, split)
  parts = []
  for path in paths:
    if fmt == "bin":
      images, labels = read_cifar_bin(path, 1 if dataset == "cifar10" else 2)
    else:
      key = b"labels" if dataset == "cifar10" else b"fine_labels"
      images, labels = read_cifar_pickle(path, key)
    _check_file(dataset, path, len(labels), verify)
    parts.append((images, labels))
  images = np.concatenate([p[0] for p in parts])
  labels = np.concatenate([p[1] for p in parts])
  expected = INFOS[dataset].counts[split]
  if verify and _is_official(dataset, fmt, paths, split) and len(labels) != expected:
    raise DatasetError(
      f"{dataset}: {folder} {split} files hold {len(labels)} examples, expected "
      f"{expected}; {INFOS[dataset].how_to_get}"
    )
  return images, labels


def _is_official(dataset: str, fmt: str, paths: list[str], split: str) -> bool:
  names = tuple(os.path.basename(p) for p in paths)
  if dataset == "cifar100":
    return True
  return names == (CIFAR10_BIN_OFFICIAL if fmt == "bin" else CIFAR10_PY_OFFICIAL)[split]


def find_folder(dataset: str, data_dir: str, split: str) -> str:
  """The first of ``data_dir`` and its known sub-folders that holds the split's files."""
  info = INFOS[dataset]
  candidates = [data_dir] + [os.path.join(data_dir, f) for f in info.folders]
  for folder in candidates:
    if not os.path.isdir(folder):
      continue
    if dataset in ("mnist", "fashion_mnist"):
      if _idx_files(folder, split) is not None:
        return folder
    elif _cifar_files(dataset, folder, split) is not None:
      return folder
  expected = (
    " + ".join(n + "[.gz]" for n in IDX_NAMES[split])
    if dataset in ("mnist", "fashion_mnist")
    else f"{split} batch files"
  )
  raise DatasetError(
    f"{dataset} {split} split not found: expected {expected} in {data_dir} or its sub-folder "
    f"{'/'.join(info.folders[:1])}; {info.how_to_get}"
  )


def load_split(
  dataset: str, data_dir: str, split: str, verify: bool = True
) -> tuple[np.ndarray, np.ndarray, DatasetInfo]:
  """Loads one split of a file dataset into memory.

  Args:
    dataset: "mnist", "fashion_mnist", "cifar10" or "cifar100".
    data_dir: the data root (or the dataset's own folder).
    split: "train" or "test".
    verify: check checksums and example counts of known files.

  Returns:
    ``(images uint8[N, H, W, C], labels int64[N], info)``.

  Raises:
    DatasetError: files missing, unreadable, corrupt or with wrong counts.
  """
  info = INFOS[dataset]
  folder = find_folder(dataset, data_dir, split)
  if dataset in ("mnist", "fashion_mnist"):
    images, labels = _load_idx(dataset, folder, split, verify)
  else:
    images, labels = _load_cifar(dataset, folder, split, verify)
  if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
    raise DatasetError(f"{dataset}: labels in {folder} outside [0, {info.num_classes})")
  return images, labels, info
