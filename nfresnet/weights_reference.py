"""The authors' released NFNet parameter trees (deepmind-research ``nfnets``).

Haiku trees of HWIO arrays, our standardization, the reference gammas, and the
tanh-approximate GELU (``jax.nn.gelu``'s default): build ``NFNet(...,
activation="gelu_tanh")`` to reproduce them exactly. ``reference_to_params(tree)``
converts such a tree, nested or flattened, to ``NFNet``'s parameters;
``is_reference_tree`` recognises one by its names.

``nfresnet.weights.load_params`` reads the released files (``F0_haiku.npz`` ...), which
despite their suffix are pickles (written with ``dill``), with
``nfresnet.safe_pickle.restricted_load``; real ``.npz`` archives (``allow_pickle=False``)
of the same tree, nested or flattened, are read too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from nfresnet.activations import REFERENCE_GAMMAS, gamma

Params = dict[str, dict[str, np.ndarray]]

_REFERENCE_ROOT = "NFNet"
REFERENCE_ACTIVATION = "gelu_tanh"  # The authors' NFNets: jax.nn.gelu (tanh form) * 1.7015.
_REFERENCE_BLOCK = re.compile(r"^nf_block(?:_(\d+))?$")
_REFERENCE_SE = {"linear": "linear0", "linear_1": "linear1"}


def _reference_leaves(tree: Mapping[str, Any]) -> dict[tuple[str, ...], np.ndarray]:
  """``{(module parts..., name): array}`` of a nested or flattened reference tree."""
  out = {}
  for key, value in tree.items():
    parts = tuple(p for p in re.split(r"/~/|/|\.", key) if p)
    items = value.items() if isinstance(value, Mapping) else [(None, value)]
    for name, leaf in items:
      path = parts if name is None else parts + (str(name),)
      if not isinstance(leaf, np.ndarray | np.generic) or leaf.dtype.kind not in "biuf":
        raise ValueError(f"{'/'.join(path)} is not a numeric array ({type(leaf).__name__})")
      out[path] = np.asarray(leaf)
  return out


def is_reference_tree(tree: Mapping[str, Any]) -> bool:
  """Whether a tree's names are the authors' NFNet's (``NFNet/~/nf_block/~/conv0`` ...)."""
  return any(re.split(r"/~/|/|\.", key)[0] == _REFERENCE_ROOT for key in tree)


def reference_to_params(
  tree: Mapping[str, Any], *, reference_gammas: bool = False, activation: str | None = None
) -> Params:
  """Converts the authors' NFNet parameters (tanh GELU, reference gammas) to ``NFNet``'s.

  The authors' "gelu" is ``jax.nn.gelu``, whose default is the tanh approximation
  (``activation="gelu_tanh"`` here); our "gelu" is the exact (erf) form, which
  timm's ports of these weights use.

  Blocks ``nf_block``, ``nf_block_1``, ... are numbered through the network; a block
  with a ``conv_shortcut`` starts a stage (every NFNet stage's first block has one).

  Args:
    tree: a Haiku tree, nested (``{"NFNet/~/stem_conv0": {"w": ...}}``) or flattened
      with ``/`` or ``.`` separators.
    reference_gammas: the target model's ``reference_gammas``.
    activation: the target model's activation (default "gelu_tanh", the authors').

  Returns:
    Parameters of ``nfresnet.NFNet`` (root ``nfnet``).
  """
  leaves = _reference_leaves(tree)
  if not leaves or any(parts[0] != _REFERENCE_ROOT for parts in leaves):
    raise ValueError("not an authors' NFNet parameter tree (names must start with 'NFNet')")
  source = REFERENCE_ACTIVATION
  factor = REFERENCE_GAMMAS[source] / gamma(activation or source, reference=reference_gammas)
  block_names = _reference_block_names(leaves)
  params: Params = {}
  for parts, value in leaves.items():
    module, name = list(parts[1:-1]), parts[-1]
    if not module:
      raise ValueError(f"unexpected tensor {'/'.join(parts)!r} in an NFNet tree")
    if _REFERENCE_BLOCK.match(module[0]):
      module[0] = block_names[module[0]]
    if module[-1] in _REFERENCE_SE and len(module) > 1 and module[-2] == "squeeze_excite":
      module[-1] = _REFERENCE_SE[module[-1]]
    if module == ["linear"]:
      module = ["classifier"]
      value = value * factor if name == "w" else value
    elif name == "gain" and module not in (["stem_conv0"], ["final_conv"]):
      value = value * factor
    params.setdefault("/".join(["nfnet", *module]), {})[name] = value.astype(np.float32)
  return params


def _reference_block_names(leaves: Mapping[tuple[str, ...], np.ndarray]) -> dict[str, str]:
  blocks = {p[1] for p in leaves if len(p) > 2 and _REFERENCE_BLOCK.match(p[1])}
  order = sorted(blocks, key=lambda b: int(_REFERENCE_BLOCK.match(b).group(1) or 0))
  names, stage, index = {}, 0, 0
  for block in order:
    if any(p[1] == block and p[2] == "conv_shortcut" for p in leaves if len(p) > 2):
      stage, index = stage + 1, 0
    index += 1
    names[block] = f"stage{max(stage, 1)}_block{index}"
  return names
