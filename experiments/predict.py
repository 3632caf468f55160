"""Top-5 ImageNet-style predictions of a pretrained model for image files.

Usage::

  python -m experiments.predict --model=nfnet:variant=F0,activation=gelu_tanh \
    --weights=F0_haiku.npz cat.jpg dog.png
  python -m experiments.predict --model=nfnet:variant=F0 \
    --weights=dm_nfnet_f0.safetensors cat.jpg
  python -m experiments.predict --model=nf_resnet:depth=50,avg_down=true \
    --weights=nf_resnet50.safetensors cat.jpg

``--model`` is a registry name (``experiments.models``) with ``key=value``
constructor arguments; ``--weights`` is any file ``nfresnet.weights.load_params``
reads (our export, a timm checkpoint, the authors' NFNet files), rescaled for the
model's activation and ``reference_gammas``. The number of classes comes from the
checkpoint's classifier. The model runs frozen (``nfresnet.freeze``: standardized
kernels computed once) at the variant's evaluation resolution (NFNets, NF-RegNets;
224 px otherwise, or ``--image_size``), on the evaluation preprocessing of
``experiments.data``: a centred square crop of ``S / (S + 32)`` of the short side,
bicubic resize to ``S``, ImageNet mean/std normalization. Class names come from
``--labels`` (one per line) or, for 1000 classes, TFDS's ImageNet WordNet IDs.

Bad input (a missing image, an unknown model or option, weights that do not fit
the model) is one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

import nfresnet
from experiments import cli, models, schema
from experiments.configs import ConfigError
from nfresnet import weights as nf_weights

DEFAULT_IMAGE_SIZE = 224
RESIZE_METHOD = "bicubic"  # The reference's; the crop is experiments.data's evaluation crop.
VARIANT_TABLES = {"nfnet": nfresnet.NFNET_VARIANTS, "nf_regnet": nfresnet.NF_REGNET_VARIANTS}


class UsageError(ValueError):
  """Bad command-line input, reported as one ``error:`` line."""


def parse_value(text: str, default: Any) -> Any:
  """A ``key=value`` text as the type of the constructor's default."""
  value = cli.parse_scalar(text)
  if isinstance(default, bool) and not isinstance(value, bool):
    raise ValueError(f"expects true or false, got {text!r}")
  if isinstance(default, int | float) and not isinstance(value, int | float):
    raise ValueError(f"expects a number, got {text!r}")
  return value


def parse_model(spec: str) -> tuple[str, dict[str, Any]]:
  """``name:key=value,...`` -> (registry name, constructor kwargs)."""
  name, _, body = spec.partition(":")
  try:
    name = models.resolve_name(name)
  except ConfigError as error:
    raise UsageError(str(error)) from None
  fields = models.config_fields(name)
  kwargs = dict(models.get_entry(name).defaults)
  for item in filter(None, body.split(",")):
    key, sep, text = item.partition("=")
    if not sep or not key:
      raise UsageError(f"malformed --model={spec}: expected name:key=value,key=value")
    if key not in fields:
      raise UsageError(f"model {name!r} has no option {key!r}; allowed: {', '.join(fields)}")
    try:
      kwargs[key] = parse_value(text, fields[key].default)
    except ValueError as error:
      raise UsageError(f"--model={spec}: option {key!r} {error}") from None
    message = schema.model_kwarg_error(name, key, kwargs[key])
    if message:
      raise UsageError(f"--model={spec}: {message}")
  if models.uses_batch_norm(name):
    raise UsageError(f"model {name!r} has BatchNorm statistics; predict takes NF models only")
  return name, kwargs


def model_default(name: str, kwargs: dict[str, Any], key: str) -> Any:
  """The value of constructor argument ``key``: given, or the constructor's default."""
  if key in kwargs:
    return kwargs[key]
  parameter = models.config_fields(name).get(key)
  if parameter is None or parameter.default is inspect.Parameter.empty:
    return None
  return parameter.default


def eval_resolution(name: str, kwargs: dict[str, Any]) -> int:
  """The variant's test resolution (NFNets, NF-RegNets), else ``DEFAULT_IMAGE_SIZE``."""
  table = VARIANT_TABLES.get(name)
  variant = model_default(name, kwargs, "variant")
  if table is None or variant not in table:
    return DEFAULT_IMAGE_SIZE
  return table[variant].test_resolution


def load_image(path: pathlib.Path) -> np.ndarray:
  """uint8 ``[H, W, 3]`` RGB pixels of an image file."""
  from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"), np.uint8)
  except (UnidentifiedImageError, OSError) as error:
    raise UsageError(f"cannot read image {path}: {error}") from None


def preprocess(image: np.ndarray, size: int) -> np.ndarray:
  """Evaluation preprocessing of ``experiments.data``: centre crop, bicubic resize, normalize."""
  from experiments.data import augment, pipeline, tfds_source  # noqa: PLC0415

  h, w, _ = image.shape
  fraction = size / (size + pipeline.EVAL_CROP_PADDING)
  box = augment.centre_boxes(np.array([h]), np.array([w]), fraction)
  x = augment.crop_resize(image[None], box, size, RESIZE_METHOD)
  return augment.normalize(x, *tfds_source.IMAGENET_STATS)[0]


def default_labels(num_classes: int) -> list[str] | None:
  """TFDS's ImageNet-2012 WordNet IDs for 1000 classes, when TFDS is installed."""
  spec = importlib.util.find_spec("tensorflow_datasets")
  if num_classes != 1000 or spec is None or not spec.submodule_search_locations:
    return None
  for folder in spec.submodule_search_locations:
    path = pathlib.Path(folder) / "datasets" / "imagenet2012" / "labels.txt"
    if path.is_file():
      return path.read_text().split()
  return None


def read_labels(path: pathlib.Path | None, num_classes: int) -> list[str] | None:
  if path is None:
    return default_labels(num_classes)
  if not path.is_file():
    raise UsageError(f"no such --labels file: {path}")
  labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
  if len(labels) != num_classes:
    raise UsageError(f"--labels={path} has {len(labels)} names; the model has {num_classes}")
  return labels


def num_classes_of(params: dict) -> int:
  heads = [v["b"] for k, v in params.items() if k.rpartition("/")[2] == "classifier" and "b" in v]
  if len(heads) != 1:
    raise UsageError("the weights have no single classifier (a '.../classifier' bias)")
  return int(np.shape(heads[0])[0])


def predict(name: str, kwargs: dict[str, Any], params: dict, images: np.ndarray) -> np.ndarray:
  """Class probabilities ``[N, classes]`` of the frozen model on preprocessed images."""
  model_fn = models.make_model_fn(name, kwargs)
  transformed = hk.transform(lambda x: model_fn(x, False))
  expected = jax.eval_shape(transformed.init, jax.random.key(0), images[:1])
  try:
    nf_weights.check_params(params, expected)
  except ValueError as error:
    raise UsageError(str(error)) from None
  frozen_params = nfresnet.freeze(jax.tree_util.tree_map(jnp.asarray, params))

  @jax.jit
  def apply(p, x):
    with nfresnet.frozen():
      return jax.nn.softmax(transformed.apply(p, None, x), axis=-1)

  return np.asarray(apply(frozen_params, jnp.asarray(images)))


def build_parser() -> argparse.ArgumentParser:
  parser = cli.UsageParser(
    prog="python -m experiments.predict", description=__doc__.splitlines()[0]
  )
  parser.add_argument("--model", required=True, help="registry name with key=value arguments")
  parser.add_argument("--weights", required=True, type=pathlib.Path, help="parameter file")
  parser.add_argument("--image_size", type=int, help="default: the variant's eval resolution")
  parser.add_argument("--labels", type=pathlib.Path, help="class names, one per line")
  parser.add_argument("--top", type=int, default=5, help="classes shown per image")
  parser.add_argument("images", nargs="+", type=pathlib.Path, help="image files")
  return parser


def run(args: argparse.Namespace) -> None:
  missing = [str(p) for p in args.images if not p.is_file()]
  if missing:
    raise UsageError(f"no such image: {missing[0]}")
  if args.top < 1 or (args.image_size is not None and args.image_size < 1):
    raise UsageError("--top and --image_size must be positive")
  name, kwargs = parse_model(args.model)
  if not args.weights.is_file():
    raise UsageError(f"no such --weights file: {args.weights}")
  activation = model_default(name, kwargs, "activation")
  try:
    params = nf_weights.load_params(
      args.weights,
      reference_gammas=bool(model_default(name, kwargs, "reference_gammas")),
      activation=activation if isinstance(activation, str) else None,
    )
  except (ValueError, KeyError) as error:
    raise UsageError(f"--weights={args.weights}: {error}") from None
  num_classes = num_classes_of(params)
  labels = read_labels(args.labels, num_classes)
  size = args.image_size or eval_resolution(name, kwargs)
  batch = np.stack([preprocess(load_image(p), size) for p in args.images])
  try:
    probs = predict(name, {**kwargs, "num_classes": num_classes}, params, batch)
  except UsageError as error:
    raise UsageError(f"--weights={args.weights} and --model={args.model}: {error}") from None
  except (TypeError, ValueError) as error:  # The constructor rejects an argument value.
    raise UsageError(f"--model={args.model}: {error}") from None
  top = min(args.top, num_classes)
  for path, p in zip(args.images, probs, strict=True):
    print(path)
    for rank, index in enumerate(np.argsort(-p)[:top], start=1):
      label = f"  {labels[index]}" if labels else ""
      print(f"  {rank}. class {index:4d}  p={p[index]:.4f}{label}")


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    run(args)
  except UsageError as error:
    return cli.fail(str(error))
  return 0


if __name__ == "__main__":
  sys.exit(main())
