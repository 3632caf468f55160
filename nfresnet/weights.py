"""Parameter files: timm checkpoints, the authors' released NFNet files, and our own.

``load_params(path)`` reads any of them into a Haiku parameter tree of numpy arrays
(``{"nfnet/stem_conv0": {"w": ..., "gain": ..., "bias": ...}, ...}``) for the
library's models with their default names; ``check_params(params, expected)``
checks it against a model's shapes; ``export_params(params, path)`` writes our
own format (safetensors or npz, by suffix).

**timm** (``*.safetensors`` state dicts of ``nf_resnet26/50/101`` and
``dm_nfnet_f0`` ... ``dm_nfnet_f6``; the layout is recognised from the tensor names):

- kernels are OIHW (ours HWIO), linear weights ``(out, in)`` (ours ``(in, out)``),
  gains ``(O, 1, 1, 1)``, squeeze-excite layers are 1x1 convs;
- timm standardizes ``W_hat = gain * gamma_c * (W - mean) / sqrt(N * (var + eps))``
  with ``eps = 1e-5`` added to the variance (``NfCfg.std_conv_eps``); ours is
  ``gain * (W - mean) / sqrt(max(N * var, 1e-4))`` (``nfresnet.ws_conv``). Both are
  linear in the gain, so the import keeps ``W`` and sets
  ``gain = gain_timm * gamma_ratio * sqrt(max(N var, 1e-4)) / sqrt(N (var + eps))``,
  the same standardized kernel up to float32 rounding;
- where the gamma sits: ``dm_nfnet_*`` multiply every activation by the reference
  gamma, as we do; ``nf_resnet*`` fold it into every conv (including the stem conv on
  the image) and apply a plain ReLU before the classifier. The import moves every
  gamma to where our model applies its own (exact or reference, ``reference_gammas``),
  folding the ratio into the gains of the convs that follow an activation and into
  the classifier weights (NFNet's final conv reads the residual stream: no ratio);
- ``skipinit_gain`` is our ``skip_gain``; ``nf_resnet*`` have none (their last conv's
  gain starts at zero instead), so each block gets ``skip_gain = 1``;
- import ``nf_resnet*`` into ``NFResNet(..., avg_down=True)``: timm's shortcuts
  average-pool before their 1x1 conv. timm's ``nf_resnet*`` pad convs and the stem
  max pool symmetrically (PyTorch style) where our models pad "SAME" (TensorFlow
  style, as the authors' code): the weights import exactly, but stride-2 layers then
  sample one pixel apart from timm, so outputs are close to timm's, not equal.
  ``dm_nfnet_*`` use "SAME" padding and match exactly.

**The authors' NFNet files** (deepmind-research ``nfnets``, ``F0_haiku.npz`` ...):
Haiku trees of HWIO arrays, our standardization, the reference gammas, and the
tanh-approximate GELU (``jax.nn.gelu``'s default): build ``NFNet(...,
activation="gelu_tanh")`` to reproduce them exactly. Despite
their suffix they are pickles (written with ``dill``), so they are read with
``restricted_load``, which rebuilds numpy arrays and plain dicts and refuses every
other global; real ``.npz`` archives (``allow_pickle=False``) of the same tree,
nested or flattened, are read too.
"""

from __future__ import annotations

import dataclasses
import io
import pathlib
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from nfresnet.activations import REFERENCE_GAMMAS, gamma
from nfresnet.ws_conv import WS_EPSILON

Params = dict[str, dict[str, np.ndarray]]
PathLike = str | pathlib.Path

FORMAT_KEY = "format"
FORMAT = "nfresnet-params-v1"
"""Marks our own files: safetensors metadata ``format``, npz member ``__format__``."""
NPZ_FORMAT_MEMBER = "__format__"
TIMM_STD_CONV_EPS = 1e-5  # timm NfCfg.std_conv_eps, for nf_resnet* and dm_nfnet_* alike.


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
# Restricted unpickling.


def _plain_dict(*args, **kwargs) -> dict:
  """Stands in for Haiku's ``FlatMapping``/``frozendict`` and ``OrderedDict``: a plain dict."""
  return dict(*args, **kwargs)


_SAMPLE = np.zeros(1, np.float32)
_RECONSTRUCT = _SAMPLE.__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct
_SCALAR = _SAMPLE[0].__reduce__()[0]  # numpy.(_)core.multiarray.scalar
_FROMBUFFER = _SAMPLE.__reduce_ex__(5)[0]  # numpy.(_)core.numeric._frombuffer (protocol 5)


def _dill_array(f, args, state, npdict=None) -> np.ndarray:
  """Stands in for ``dill._dill._create_array``: rebuilds a plain ndarray only."""
  if f is not _RECONSTRUCT or npdict:
    raise ValueError("refusing a dill array record that is not a plain numpy array")
  array = f(*args)
  array.__setstate__(state)
  return array


def _allowed_globals() -> dict[tuple[str, str], Any]:
  import codecs  # noqa: PLC0415

  allowed: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # Protocol-2 pickles store raw bytes this way.
    ("collections", "OrderedDict"): _plain_dict,
    ("dill._dill", "_create_array"): _dill_array,
  }
  for core in ("numpy.core", "numpy._core"):
    allowed[(f"{core}.multiarray", "_reconstruct")] = _RECONSTRUCT
    allowed[(f"{core}.multiarray", "scalar")] = _SCALAR
    allowed[(f"{core}.numeric", "_frombuffer")] = _FROMBUFFER
  for module in ("haiku._src.data_structures", "haiku.data_structures"):
    for name in ("FlatMapping", "frozendict"):
      allowed[(module, name)] = _plain_dict
  return allowed


ALLOWED_GLOBALS = _allowed_globals()
"""``(module, name) -> object`` the restricted unpickler may resolve: numpy's array,
dtype and scalar reconstructors, ``_codecs.encode``, and plain-``dict`` stand-ins for
Haiku's mappings and ``OrderedDict`` (the authors' files hold Haiku ``FlatMapping``s);
dill's array record is rebuilt by a local function that accepts plain arrays only."""


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only ``ALLOWED_GLOBALS``; any other global is a ValueError.

  Every callable a pickle can invoke comes through ``find_class``, so a file that asks
  for ``os.system``, ``builtins.eval``, ``subprocess.Popen`` ... fails before anything
  of it runs.

  Args:
    file: a binary file object, as for ``pickle.Unpickler``.
  """

  def find_class(self, module: str, name: str) -> Any:
    try:
      return ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise ValueError(
        f"refusing to unpickle global {module}.{name}: only numpy arrays and dicts are "
        "allowed in parameter files"
      ) from None

  def persistent_load(self, pid: Any) -> Any:
    raise ValueError(f"refusing to unpickle persistent id {pid!r}")


def restricted_load(file: PathLike | io.BufferedIOBase) -> Any:
  """Unpickles a file with ``RestrictedUnpickler`` (numpy arrays and dicts only).

  Raises:
    ValueError: the pickle needs a refused global, or is corrupt (one line).
  """
  if isinstance(file, (str, pathlib.Path)):
    with open(file, "rb") as f:
      return restricted_load(f)
  try:
    return RestrictedUnpickler(file).load()
  except ValueError:
    raise
  except Exception as error:  # noqa: BLE001 (corrupt pickles raise many types)
    raise ValueError(f"not a readable pickle: {type(error).__name__}: {error}") from None


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
# timm.


@dataclasses.dataclass(frozen=True)
class TimmLayout:
  """What a timm NF checkpoint's numbers mean.

  Attributes:
    family: our model: "nf_resnet" (``NFResNet(avg_down=True)``) or "nfnet" (``NFNet``).
    activation: the activation timm applies (its gamma is the reference constant).
    gamma_in_conv: timm folds gamma into every conv weight (``nf_resnet*``) instead
      of applying it after every activation (``dm_nfnet_*``).
    skip_gains: the checkpoint has ``skipinit_gain`` scalars.
  """

  family: str
  activation: str
  gamma_in_conv: bool
  skip_gains: bool


TIMM_LAYOUTS = {
  "nf_resnet": TimmLayout("nf_resnet", "relu", gamma_in_conv=True, skip_gains=False),
  "dm_nfnet": TimmLayout("nfnet", "gelu", gamma_in_conv=False, skip_gains=True),
}
_TIMM_BLOCK_LAYERS = {
  "conv1": "conv0",
  "conv2": "conv1",
  "conv2b": "conv1b",
  "conv3": "conv2",
  "downsample.conv": "conv_shortcut",
  "attn_last.fc1": "squeeze_excite/linear0",
  "attn_last.fc2": "squeeze_excite/linear1",
}
_TIMM_KEY = re.compile(r"^(?P<module>.+)\.(?P<name>weight|bias|gain|skipinit_gain)$")
_TIMM_BLOCK = re.compile(r"^stages\.(?P<stage>\d+)\.(?P<block>\d+)(?:\.(?P<layer>.+))?$")


def timm_layout(tensors: Mapping[str, np.ndarray]) -> TimmLayout:
  """Recognises a timm ``nf_resnet*`` or ``dm_nfnet_*`` state dict by its tensor names."""
  keys = set(tensors)
  if "stem.conv4.weight" in keys and any(k.endswith("skipinit_gain") for k in keys):
    return TIMM_LAYOUTS["dm_nfnet"]
  if "stem.conv.weight" in keys and "final_conv.weight" not in keys:
    if not any(".attn." in k or k.endswith("skipinit_gain") for k in keys):
      return TIMM_LAYOUTS["nf_resnet"]
  raise ValueError(
    "not a timm nf_resnet* or dm_nfnet_* checkpoint (other timm NF models, e.g. "
    "nfnet_l*, eca_nfnet_*, nf_regnet_*, are not supported)"
  )


def _timm_module(layout: TimmLayout, module: str) -> str:
  """Our module path (without the root) of a timm module path."""
  if layout.family == "nf_resnet" and module == "stem.conv":
    return "stem"
  stem = re.fullmatch(r"stem\.conv([1-4])", module)
  if layout.family == "nfnet" and stem:
    return f"stem_conv{int(stem.group(1)) - 1}"
  if module == "head.fc":
    return "classifier"
  if module == "final_conv" and layout.family == "nfnet":
    return "final_conv"
  block = _TIMM_BLOCK.match(module)
  if block and (block["layer"] is None or block["layer"] in _TIMM_BLOCK_LAYERS):
    name = f"stage{int(block['stage']) + 1}_block{int(block['block']) + 1}"
    return name if block["layer"] is None else f"{name}/{_TIMM_BLOCK_LAYERS[block['layer']]}"
  raise ValueError(f"unexpected tensor {module!r} in a timm {layout.family} checkpoint")


def _ws_gain(kernel_hwio: np.ndarray, gain: np.ndarray, eps: float, factor: float) -> np.ndarray:
  """Our gain giving the kernel timm standardizes with ``eps``, times ``factor`` (float64)."""
  w = kernel_hwio.astype(np.float64)
  fan_in = np.prod(w.shape[:3])
  var = np.var(w, axis=(0, 1, 2))
  ours = np.sqrt(np.maximum(fan_in * var, WS_EPSILON))
  theirs = np.sqrt(fan_in * (var + eps))
  return (gain.astype(np.float64).reshape(-1) * factor * ours / theirs).astype(np.float32)


def timm_to_params(
  tensors: Mapping[str, np.ndarray],
  *,
  reference_gammas: bool = False,
  activation: str | None = None,
  eps: float = TIMM_STD_CONV_EPS,
) -> Params:
  """Converts a timm ``nf_resnet*`` / ``dm_nfnet_*`` state dict (see the module docstring).

  Args:
    tensors: timm's state dict as numpy arrays (``safetensors.numpy.load_file``).
    reference_gammas: the target model's ``reference_gammas``.
    activation: the target model's activation (default: timm's, "relu" or "gelu").
    eps: timm's standardization epsilon.

  Returns:
    Parameters of ``NFResNet(avg_down=True)`` (root ``nf_resnet``) or ``NFNet``
    (root ``nfnet``) with default names.
  """
  layout = timm_layout(tensors)
  source_gamma = REFERENCE_GAMMAS[layout.activation]
  ours = gamma(activation or layout.activation, reference=reference_gammas)
  # Convs whose input is not an activation output: the image, and NFNet's residual stream.
  raw_input_convs = ("stem",) if layout.family == "nf_resnet" else ("stem_conv0", "final_conv")
  grouped: dict[str, dict[str, np.ndarray]] = {}
  for key, value in tensors.items():
    match = _TIMM_KEY.match(key)
    if not match:
      raise ValueError(f"unexpected tensor {key!r} in a timm {layout.family} checkpoint")
    grouped.setdefault(match["module"], {})[match["name"]] = np.asarray(value)
  params: Params = {}
  for module, leaves in grouped.items():
    path = f"{layout.family}/{_timm_module(layout, module)}"
    if "skipinit_gain" in leaves:
      params.setdefault(path, {})["skip_gain"] = leaves["skipinit_gain"].astype(np.float32)
      continue
    weight = leaves["weight"]
    if path.endswith("/classifier"):
      scale = (1.0 if layout.gamma_in_conv else source_gamma) / ours
      out = {"w": (weight.T * scale).astype(np.float32), "b": leaves["bias"]}
    elif "squeeze_excite" in path:
      out = {"w": np.ascontiguousarray(weight[:, :, 0, 0].T), "b": leaves["bias"]}
    else:
      kernel = np.ascontiguousarray(weight.transpose(2, 3, 1, 0))
      if path.rpartition("/")[2] in raw_input_convs:
        factor = source_gamma if layout.gamma_in_conv else 1.0
      else:
        factor = source_gamma / ours
      out = {"w": kernel, "gain": _ws_gain(kernel, leaves["gain"], eps, factor)}
      out["bias"] = leaves["bias"]
    params.setdefault(path, {}).update(out)
    block = re.match(rf"^{layout.family}/stage\d+_block\d+", path)
    if block and not layout.skip_gains:
      params.setdefault(block.group(0), {})["skip_gain"] = np.ones((), np.float32)
  return params


# ---------------------------------------------------------------------------------------------
# The authors' NFNet parameter trees.

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
