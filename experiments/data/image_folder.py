"""A directory of encoded images, one folder per class: ``<root>/<split>/<class>/<file>``.

The ImageNet layout of the extracted ILSVRC-2012 archives (``train/n01440764/*.JPEG``, with
the validation images moved into class folders) and of ``torchvision.datasets.ImageFolder``.
Classes are the sorted folder names of the training split (``train``), so labels agree
between splits; the examples of a split are its files sorted by ``<class>/<file>``. The
"test" split is the first of ``TEST_FOLDERS`` present. Examples are the files' bytes
(``encoded = True``), decoded by the pipeline (``jpeg``). Pixel statistics are ImageNet's
(``tfds_source.IMAGENET_STATS``), not computed from the folder.

The root may be a local path or a URL (``gs://bucket/imagenet``; ``experiments.paths``). On
an object store the files are listed per class folder and taken by their name's ending, without
asking the store about each one (1.28M requests for ImageNet).
"""

from __future__ import annotations

import os

import numpy as np

from experiments import paths
from experiments.data.files import DatasetError

EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
"""File name endings read as images (case-insensitive); other files are ignored."""
TEST_FOLDERS = ("test", "validation", "val")
"""Folders tried, in order, for the "test" split."""
HOW_TO_GET = (
  "expected <data_dir>/train/<class>/*.JPEG (and test/, validation/ or val/), e.g. the "
  "extracted ILSVRC-2012 archives with the validation images sorted into class folders"
)


def join(folder: str, name: str) -> str:
  """``folder/name`` for a local path or a URL."""
  return f"{folder.rstrip('/')}/{name}" if paths.scheme_of(folder) else os.path.join(folder, name)


def split_folder(root: str, split: str) -> str:
  """The folder of ``split`` under ``root``, or a one-line DatasetError naming the path."""
  names = TEST_FOLDERS if split == "test" else (split,)
  for name in names:
    path = join(root, name)
    if paths.as_path(path).is_dir():
      return path
  tried = " or ".join(join(root, name) for name in names)
  raise DatasetError(f"image folder: no directory {tried}; {HOW_TO_GET}")


def _classes(folder: str) -> list[str]:
  path = paths.as_path(folder)
  if paths.is_local(path):
    with os.scandir(folder) as entries:
      return sorted(entry.name for entry in entries if entry.is_dir())
  return sorted(child.name for child in path.iterdir() if child.is_dir())


def _images(folder: str) -> list[str]:
  path = paths.as_path(folder)
  if paths.is_local(path):
    with os.scandir(folder) as entries:
      names = [entry.name for entry in entries if entry.is_file()]
  else:
    names = [child.name for child in path.iterdir()]
  return sorted(name for name in names if name.lower().endswith(EXTENSIONS))


class ImageFolderSource:
  """One split of a class-per-folder image directory, as encoded bytes per example.

  Args:
    root: the directory holding the split folders.
    split: "train" or "test".
    mean: per-channel pixel mean (pixel / 255).
    std: per-channel pixel standard deviation.

  Raises:
    DatasetError: a missing split folder, no class folders, no images, or a class folder
      of the split that the training split lacks (one line, naming the path).
  """

  encoded = True
  image_shape = (None, None, 3)

  def __init__(
    self, root: str, split: str, mean: tuple[float, ...], std: tuple[float, ...]
  ) -> None:
    root = os.fspath(root)
    if not paths.as_path(root).is_dir():
      raise DatasetError(f"image folder {root!r} does not exist; {HOW_TO_GET}")
    self.name = "image_folder"
    self.root = root
    self.folder = split_folder(root, split)
    train_folder = split_folder(root, "train")
    self.classes = _classes(train_folder)
    if not self.classes:
      raise DatasetError(f"image folder {train_folder!r} has no class folders; {HOW_TO_GET}")
    index = {name: label for label, name in enumerate(self.classes)}
    examples, labels = [], []
    for name in _classes(self.folder):
      if name not in index:
        raise DatasetError(
          f"image folder {join(self.folder, name)!r} is a class that {train_folder!r} lacks"
        )
      files = _images(join(self.folder, name))
      examples += [f"{name}/{file}" for file in files]
      labels += [index[name]] * len(files)
    if not examples:
      raise DatasetError(f"image folder {self.folder!r} has no images ({', '.join(EXTENSIONS)})")
    self._paths = np.array([path.encode() for path in examples], np.bytes_)  # Compact to pickle.
    self.labels = np.array(labels, np.int64)
    self.num_classes = len(self.classes)
    self.mean, self.std = tuple(mean), tuple(std)

  def __len__(self) -> int:
    return len(self.labels)

  def path(self, index: int) -> str:
    """The file of example ``index``."""
    return join(self.folder, self._paths[index].decode())

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self.labels):
      raise IndexError(f"image folder index {index} out of range [0, {len(self.labels)})")
    with paths.as_path(self.path(index)).open("rb") as f:
      return {"image": f.read(), "label": self.labels[index]}
