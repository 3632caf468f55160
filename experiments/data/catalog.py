"""Known facts about the file datasets: classes, example counts, pixel statistics, checksums."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Facts about a file dataset.

  ``mean`` and ``std`` are per-channel pixel statistics (pixel / 255) of the full official
  training split, hard-coded: MNIST and Fashion-MNIST computed from the shared official
  files (tests recompute them); CIFAR-10/100 are the widely published values.
  """

  name: str
  num_classes: int
  counts: dict[str, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  folders: tuple[str, ...]  # Sub-folders of data_dir searched after data_dir itself.
  how_to_get: str


INFOS = {
  "mnist": DatasetInfo(
    "mnist", 10, {"train": 60000, "test": 10000}, (0.1307,), (0.3081,),
    ("mnist", "MNIST/raw"),
    "get the 4 idx .gz files from http://yann.lecun.com/exdb/mnist/ (or a mirror)",
  ),
  "fashion_mnist": DatasetInfo(
    "fashion_mnist", 10, {"train": 60000, "test": 10000}, (0.2860,), (0.3530,),
    ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
    "get the 4 idx .gz files from https://github.com/zalandoresearch/fashion-mnist (data/fashion)",
  ),
  "cifar10": DatasetInfo(
    "cifar10", 10, {"train": 50000, "test": 10000},
    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    ("cifar-10-batches-bin", "cifar-10-batches-py", "cifar-10-subset", "cifar10"),
    "extract cifar-10-binary.tar.gz or cifar-10-python.tar.gz from "
    "https://www.cs.toronto.edu/~kriz/cifar.html",
  ),
  "cifar100": DatasetInfo(
    "cifar100", 100, {"train": 50000, "test": 10000},
    (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
    ("cifar-100-binary", "cifar-100-python", "cifar100"),
    "extract cifar-100-binary.tar.gz or cifar-100-python.tar.gz from "
    "https://www.cs.toronto.edu/~kriz/cifar.html",
  ),
}  # fmt: skip

# (dataset, file name) -> (hash algorithm, hex digest, examples or None). Sources: the
# shared data README (MNIST, Fashion-MNIST, CIFAR-10 subset: the official MD5/SHA-256) and
# the CIFAR pages' python-version batch MD5s (as checked by torchvision).
CHECKSUMS = {
  ("mnist", "train-images-idx3-ubyte.gz"): (
    "sha256", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 60000),
  ("mnist", "train-labels-idx1-ubyte.gz"): (
    "sha256", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 60000),
  ("mnist", "t10k-images-idx3-ubyte.gz"): (
    "sha256", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 10000),
  ("mnist", "t10k-labels-idx1-ubyte.gz"): (
    "sha256", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 10000),
  ("mnist", "train-images-idx3-ubyte"): (
    "sha256", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 60000),
  ("mnist", "train-labels-idx1-ubyte"): (
    "sha256", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 60000),
  ("mnist", "t10k-images-idx3-ubyte"): (
    "sha256", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 10000),
  ("mnist", "t10k-labels-idx1-ubyte"): (
    "sha256", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 10000),
  ("fashion_mnist", "train-images-idx3-ubyte.gz"): (
    "sha256", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 60000),
  ("fashion_mnist", "train-labels-idx1-ubyte.gz"): (
    "sha256", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 60000),
  ("fashion_mnist", "t10k-images-idx3-ubyte.gz"): (
    "sha256", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 10000),
  ("fashion_mnist", "t10k-labels-idx1-ubyte.gz"): (
    "sha256", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 10000),
  ("fashion_mnist", "train-images-idx3-ubyte"): ("md5", "f4a8712d7a061bf5bd6d2ca38dc4d50a", 60000),
  ("fashion_mnist", "train-labels-idx1-ubyte"): ("md5", "9018921c3c673c538a1fc5bad174d6f9", 60000),
  ("fashion_mnist", "t10k-images-idx3-ubyte"): ("md5", "8181f5470baa50b63fa0f6fddb340f0a", 10000),
  ("fashion_mnist", "t10k-labels-idx1-ubyte"): ("md5", "15d484375f8d13e6eb1aabb0c3f46965", 10000),
  ("cifar10", "data_batch_1_first4000.bin"): (
    "sha256", "0993cf8b8e43bc207603aef9787006995746513f5e3fa5a52e06d1b069926330", 4000),
  ("cifar10", "test_batch_first1000.bin"): (
    "sha256", "8314c96d7cd65618193bab23acdd5d4c4af15bf6dd00a1781d55beedf3be1ef5", 1000),
  ("cifar10", "data_batch_1"): ("md5", "c99cafc152244af753f735de768cd75f", 10000),
  ("cifar10", "data_batch_2"): ("md5", "d4bba439e000b95fd0a9bffe97cbabec", 10000),
  ("cifar10", "data_batch_3"): ("md5", "54ebc095f3ab1f0389bbae665268c751", 10000),
  ("cifar10", "data_batch_4"): ("md5", "634d18415352ddfa80567beed471001a", 10000),
  ("cifar10", "data_batch_5"): ("md5", "482c414d41f54cd18b22e5b47cb7c3cb", 10000),
  ("cifar10", "test_batch"): ("md5", "40351d587109b95175f43aff81a1287e", 10000),
  ("cifar100", "train"): ("md5", "16019d7e3df5f24257cddd939b257f8d", 50000),
  ("cifar100", "test"): ("md5", "f0ef6b0ae62326f3e7ffdfab6717acfc", 10000),
}  # fmt: skip
