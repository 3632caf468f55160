"""Restricted unpickling: numpy arrays and plain dicts from untrusted parameter pickles.

The authors' released NFNet files (deepmind-research ``nfnets``, ``F0_haiku.npz`` ...)
are pickles despite their suffix (written with ``dill``, holding Haiku ``FlatMapping``s).
``restricted_load`` reads them with ``RestrictedUnpickler``, which rebuilds numpy arrays
and plain dicts (Haiku's mappings and ``OrderedDict`` become ``dict``s, dill's array
records plain arrays) and refuses every other global, so reading a file runs none of it.
"""

from __future__ import annotations

import io
import pathlib
import pickle
from typing import Any

import numpy as np

PathLike = str | pathlib.Path


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
