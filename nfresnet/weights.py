"""Parameter files: timm checkpoints, the authors' released NFNet files, and our own.

``load_params(path)`` reads any of them into a Haiku parameter tree of numpy arrays
(``{"nfnet/stem_conv0": {"w": ..., "gain": ..., "bias": ...}, ...}``) for the
library's models with their default names; ``check_params(params, expected)``
checks it against a model's shapes; ``export_params(params, path)`` writes our
own format (safetensors or npz, by suffix).

``load_params`` tells the kinds apart by their first bytes (``file_kind``), not suffix:

- our own files (safetensors with ``FORMAT`` in metadata ``FORMAT_KEY``, or npz with a
  ``NPZ_FORMAT_MEMBER`` member) are returned as saved;
- other safetensors files are timm ``nf_resnet*`` / ``dm_nfnet_*`` checkpoints, converted by
  ``nfresnet.weights_timm`` (layouts, timm's standardization, where the gamma sits, padding);
- other npz archives, and pickles, are the authors' NFNet trees, converted by
  ``nfresnet.weights_reference``; pickles are read by ``nfresnet.safe_pickle``'s
  ``restricted_load``, which rebuilds numpy arrays and plain dicts and refuses every other
  global.

The public names of those three modules are importable from here too.
"""

from __future__ import annotations

import pathlib
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

from nfresnet.safe_pickle import ALLOWED_GLOBALS, RestrictedUnpickler, restricted_load
from nfresnet.weights_reference import REFERENCE_ACTIVATION, is_reference_tree, reference_to_params
from nfresnet.weights_timm import (
  TIMM_LAYOUTS,
  TIMM_STD_CONV_EPS,
  TimmLayout,
  timm_layout,
  timm_to_params,
)

__all__ = [
  "ALLOWED_GLOBALS",
  "FORMAT",
  "FORMAT_KEY",
  "NPZ_FORMAT_MEMBER",
  "REFERENCE_ACTIVATION",
  "TIMM_LAYOUTS",
  "TIMM_STD_CONV_EPS",
  "Params",
  "PathLike",
  "RestrictedUnpickler",
  "TimmLayout",
  "check_params",
  "export_params",
  "file_kind",
  "flatten",
  "is_reference_tree",
  "load_params",
  "reference_to_params",
  "restricted_load",
  "timm_layout",
  "timm_to_params",
  "unflatten",
]

Params = dict[str, dict[str, np.ndarray]]
PathLike = str | pathlib.Path

FORMAT_KEY = "format"
FORMAT = "nfresnet-params-v1"
"""Marks our own files: safetensors metadata ``format``, npz member ``__format__``."""
NPZ_FORMAT_MEMBER = "__format__"


# ---------------------------------------------------------------------------------------------
# Flat keys and our own format.


def flatten(params: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
  """``{"module/name": array}`` from a Haiku tree (``rpartition("/")`` inverts it)."""
  return {
    f"{module}/{name}": np.asarray(value)
    for module, leaves in params.items()
    for name, value in leaves.items()
  }


def unflatten(flat: Mapping[str, np.ndarray]) -> Params:
  """The Haiku tree of ``{"module/name": array}``."""
  params: Params = {}
  for key, value in flat.items():
    module, _, name = key.rpartition("/")
    params.setdefault(module, {})[name] = np.asarray(value)
  return params


def export_params(params: Mapping[str, Mapping[str, Any]], path: PathLike) -> None:
  """Writes ``params`` to ``path``: safetensors for ``*.safetensors``, else an npz archive.

  Args:
    params: a Haiku parameter tree (jax or numpy arrays).
    path: the file; ``load_params`` reads it back unchanged (same names, dtypes, values).
  """
  path = pathlib.Path(path)
  flat = {k: np.asarray(v, order="C") for k, v in flatten(params).items()}
  if path.suffix == ".safetensors":
    from safetensors.numpy import save_file  # noqa: PLC0415 (optional dependency)

    save_file(flat, str(path), metadata={FORMAT_KEY: FORMAT})
  else:
    with open(path, "wb") as f:  # np.savez would append ".npz" to other suffixes.
      np.savez(f, **flat, **{NPZ_FORMAT_MEMBER: np.array(FORMAT)})


# ---------------------------------------------------------------------------------------------
# Checking a tree against a model.


def check_params(params: Mapping[str, Mapping[str, Any]], expected: Mapping[str, Any]) -> None:
  """Raises a one-line ValueError at the first parameter that does not fit ``expected``.

  Args:
    params: loaded parameters.
    expected: the model's parameters or their shapes (``jax.eval_shape(model.init, ...)``).
  """
  have = {k: tuple(np.shape(v)) for k, v in flatten(params).items()}
  want = {
    f"{module}/{name}": tuple(leaf.shape)
    for module, leaves in expected.items()
    for name, leaf in leaves.items()
  }
  roots = sorted({k.split("/")[0] for k in have}), sorted({k.split("/")[0] for k in want})
  if have and roots[0] != roots[1]:
    raise ValueError(
      f"checkpoint does not fit the model: it holds {', '.join(roots[0])} parameters, "
      f"the model is {', '.join(roots[1])}"
    )
  for key in sorted(set(have) | set(want)):
    if key not in have:
      raise ValueError(
        f"checkpoint does not fit the model: it lacks {key} (model shape {want[key]})"
      )
    if key not in want:
      raise ValueError(
        f"checkpoint does not fit the model: {key} (shape {have[key]}) is not in the model"
      )
    if have[key] != want[key]:
      raise ValueError(
        f"checkpoint does not fit the model: {key} has shape {have[key]} in the checkpoint, "
        f"{want[key]} in the model"
      )


# ---------------------------------------------------------------------------------------------
# Reading any parameter file.


def file_kind(path: PathLike) -> str:
  """The file's format, "safetensors", "npz" or "pickle", from its first bytes (not its suffix).

  Raises:
    ValueError: none of them (pickles must use protocol 2 or later).
  """
  with open(path, "rb") as f:
    head = f.read(9)
  if head.startswith(b"PK\x03\x04"):
    return "npz"
  if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0:
    return "safetensors"
  if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
    return "pickle"
  raise ValueError(f"{path} is not a parameter file (safetensors, npz or pickle)")


def _read_safetensors(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  from safetensors import safe_open  # noqa: PLC0415 (optional dependency)

  try:
    with safe_open(str(path), framework="numpy") as f:
      metadata = f.metadata() or {}
      return {k: f.get_tensor(k) for k in f.keys()}, metadata
  except Exception as error:  # noqa: BLE001 (safetensors raises its own error types)
    raise ValueError(f"not a readable safetensors file: {error}") from None


def _tree_from_pickle(obj: Any) -> Mapping[str, Any]:
  if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
    raise ValueError(f"expected a dict of parameters, found {type(obj).__name__}")
  return obj


def load_params(
  path: PathLike, *, reference_gammas: bool = False, activation: str | None = None
) -> Params:
  """Reads a parameter file of any supported kind (see the module docstring).

  Args:
    path: our safetensors/npz export, a timm safetensors checkpoint, or an authors'
      NFNet file (pickle or npz).
    reference_gammas: the target model's ``reference_gammas``; imported timm and
      authors' parameters are rescaled for it (our own files are returned as saved).
    activation: the target model's activation, for the same rescaling (default: the
      checkpoint's own: "relu" for timm ``nf_resnet*``, "gelu" for ``dm_nfnet_*``,
      "gelu_tanh" for the authors' files).

  Returns:
    A Haiku parameter tree of numpy arrays.

  Raises:
    FileNotFoundError: no such file.
    ValueError: an unreadable or unsupported file, or a refused pickle global (one line).
  """
  kind = file_kind(path)
  if kind == "safetensors":
    tensors, metadata = _read_safetensors(path)
    if metadata.get(FORMAT_KEY) == FORMAT:
      return unflatten(tensors)
    return timm_to_params(tensors, reference_gammas=reference_gammas, activation=activation)
  if kind == "npz":
    try:
      with np.load(path, allow_pickle=False) as archive:
        flat = {k: archive[k] for k in archive.files}
    except ValueError as error:
      raise ValueError(f"npz archive {path} holds pickled objects: {error}") from None
    if flat.pop(NPZ_FORMAT_MEMBER, None) is not None:
      return unflatten(flat)
    tree: Mapping[str, Any] = flat
  else:
    tree = _tree_from_pickle(restricted_load(path))
  if not is_reference_tree(tree):
    raise ValueError(f"{path}: neither our export nor an authors' NFNet parameter tree")
  return reference_to_params(tree, reference_gammas=reference_gammas, activation=activation)
