"""SHA-256 manifests of checkpoint folders: written after a save, verified before a restore.

``<step>/sha256_manifest.json`` lists the digest of every other file of the checkpoint
(orbax ignores the extra file and deletes it with the step). A checkpoint without one
(older runs) is accepted unverified.
"""

from __future__ import annotations

import hashlib
import json

from experiments import paths
from experiments.orbax_errors import short_reason

MANIFEST_FILE = "sha256_manifest.json"
HASH_CHUNK_BYTES = 1 << 20


def file_digest(path: paths.Path) -> str:
  """SHA-256 hex digest of a file, read in chunks."""
  digest = hashlib.sha256()
  with path.open("rb") as f:
    while chunk := f.read(HASH_CHUNK_BYTES):
      digest.update(chunk)
  return digest.hexdigest()


def write_manifest(step_dir: paths.Path) -> None:
  """Writes ``step_dir/sha256_manifest.json``: the digest of every other file (atomically)."""
  files = {
    name: file_digest(path)
    for name, path in paths.files_under(step_dir)
    if not path.name.startswith(MANIFEST_FILE)
  }
  text = json.dumps({"algorithm": "sha256", "files": files}, indent=1, sort_keys=True)
  paths.atomic_write(step_dir / MANIFEST_FILE, text + "\n")


def verify_manifest(step_dir: paths.Path) -> str | None:
  """Why ``step_dir`` does not match its manifest (a file missing or changed), or None.

  A checkpoint without a manifest (older runs) is accepted.
  """
  path = step_dir / MANIFEST_FILE
  if not path.is_file():
    return None
  try:
    files = json.loads(path.read_text())["files"]
    items = sorted(files.items())
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
    return f"{MANIFEST_FILE} is unreadable ({short_reason(error)})"
  for name, expected in items:
    try:
      actual = file_digest(step_dir / name)
    except FileNotFoundError:
      return f"{name} is missing (listed in {MANIFEST_FILE})"
    except OSError as error:
      return f"{name} is unreadable ({error.strerror or short_reason(error)})"
    if actual != expected:
      return f"{name} does not match its SHA-256 digest in {MANIFEST_FILE}"
  return None
