"""``experiments.models``: the model registry and ``register_model`` for custom blocks."""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import pytest

import nfresnet
from experiments import models
from experiments.configs import ConfigError, base_config


class ShallowBlock(nfresnet.NFBlock):
  """3x3 conv -> g -> 1x1 conv."""

  @hk.transparent
  def branch(self, x, is_training):
    out = self.conv(self.spec.out_channels, 3, stride=self.spec.stride, name="conv0")(x)
    return self.conv(self.spec.out_channels, 1, name="conv1")(self.activation(out))


@pytest.fixture
def registry(monkeypatch):
  """A copy of the registry, restored after the test."""
  monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
  return models.MODELS


def config_for(name: str, **model) -> ml_collections.ConfigDict:
  config = base_config()
  config.model_name = name
  config.model = ml_collections.ConfigDict(model)
  return config


def test_registered_partial_builds_the_custom_block(registry):
  models.register_model("shallow", functools.partial(nfresnet.NFResNet, block=ShallowBlock))
  config = config_for("shallow", depth=18, width=0.125, stem="cifar")
  assert models.model_kwargs(config, 10) == {
    "depth": 18,
    "width": 0.125,
    "stem": "cifar",
    "num_classes": 10,
  }
  model = models.build_model(config, num_classes=10)
  x = jnp.zeros((2, 8, 8, 1))
  params, state = model.init(jax.random.key(0), x, True)
  # The custom branch: a 3x3 then a 1x1 conv in every block, no third conv.
  assert params["nf_resnet/stage2_block2/conv1"]["w"].shape == (1, 1, 16, 16)
  assert not [name for name in params if name.endswith("/conv2")]
  logits, _ = model.apply(params, state, None, x, False)
  assert logits.shape == (2, 10)
  assert models.model_identity(config, 10)["model_name"] == "shallow"


def test_registered_kwargs_are_checked(registry):
  models.register_model("shallow", functools.partial(nfresnet.NFResNet, block=ShallowBlock))
  with pytest.raises(ConfigError, match=r"does not accept depht; allowed: .*depth"):
    models.model_kwargs(config_for("shallow", depht=18), 10)


def test_builtin_names_cannot_be_replaced_and_reregistering_works(registry):
  with pytest.raises(ValueError, match="'nf_resnet' is built in"):
    models.register_model("nf_resnet", nfresnet.NFResNet)
  with pytest.raises(ValueError, match="is not callable"):
    models.register_model("broken", "NFResNet")
  models.register_model("mine", nfresnet.NFResNet)
  models.register_model("mine", nfresnet.SkipInitResNet)  # Re-running a notebook cell.
  assert models.get_model_class("mine") is nfresnet.SkipInitResNet
  with pytest.raises(ConfigError, match=r"unknown model_name 'other'; allowed: .*mine"):
    models.get_model_class("other")


def test_unregistered_name_is_gone_after_the_test():
  assert "shallow" not in models.MODELS and "mine" not in models.MODELS
  assert set(models.BUILTIN_MODELS) <= set(models.MODELS)
