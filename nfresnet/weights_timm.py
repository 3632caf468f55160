"""timm checkpoints: ``nf_resnet*`` and ``dm_nfnet_*`` state dicts as our parameter trees.

``timm_to_params(tensors)`` converts a timm state dict (``*.safetensors`` of
``nf_resnet26/50/101`` and ``dm_nfnet_f0`` ... ``dm_nfnet_f6``; ``timm_layout`` recognises
the layout from the tensor names); ``nfresnet.weights.load_params`` calls it for
safetensors files that are not our own exports. How timm's numbers differ from ours:

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
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import numpy as np

from nfresnet.activations import REFERENCE_GAMMAS, gamma
from nfresnet.ws_conv import WS_EPSILON

Params = dict[str, dict[str, np.ndarray]]

TIMM_STD_CONV_EPS = 1e-5  # timm NfCfg.std_conv_eps, for nf_resnet* and dm_nfnet_* alike.


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
