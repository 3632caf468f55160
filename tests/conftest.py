"""Test setup: 8 fake CPU devices (set before JAX starts) and the shared data dir.

Tests that need the real datasets read ``NFRESNET_DATA_DIR`` (``.ci/run`` points
it at ``../shared/data``) and skip with a reason when it is unset.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

DATA_ENV = "NFRESNET_DATA_DIR"


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
  """The shared datasets folder, or a skip when ``NFRESNET_DATA_DIR`` is unset."""
  path = os.environ.get(DATA_ENV)
  if not path:
    pytest.skip(f"{DATA_ENV} is not set: real-data tests need ../shared/data")
  if not pathlib.Path(path).is_dir():
    pytest.skip(f"{DATA_ENV}={path} is not a directory")
  return pathlib.Path(path)
