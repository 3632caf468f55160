"""``python -m experiments.predict`` in-process: a timm fixture checkpoint and a generated PNG."""

import haiku as hk
import jax
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file

from experiments import predict
from nfresnet import NFNet, weights

FIXTURE = "tests/fixtures/timm/dm_nfnet_f0.safetensors"
TINY_F0 = "nfnet:variant=F0,width=0.0625,group_width=8"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """A weights-only timm checkpoint (as timm saves one) and a 40x56 random PNG."""
  folder = tmp_path_factory.mktemp("predict")
  tensors = load_file(FIXTURE)
  checkpoint = folder / "dm_nfnet_f0_tiny.safetensors"
  save_file({k: v for k, v in tensors.items() if not k.startswith("fixture.")}, str(checkpoint))
  pixels = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
  image = folder / "tiny.png"
  Image.fromarray(pixels).save(image)
  return checkpoint, image


def test_eval_resolution_is_the_variants():
  assert predict.eval_resolution("nfnet", {"variant": "F1"}) == 320
  assert predict.eval_resolution("nfnet", {}) == 256  # The constructor's default variant, F0.
  assert predict.eval_resolution("nf_regnet", {"variant": "B3"}) == 320
  assert predict.eval_resolution("nf_resnet", {"depth": 50}) == 224


def test_prints_top5_of_the_frozen_model(files, capsys):
  """At 64 px (``--image_size``) to keep the test fast; the default is F0's 256 px."""
  checkpoint, image = files
  args = [f"--model={TINY_F0}", f"--weights={checkpoint}", "--image_size=64", str(image)]
  assert predict.main(args) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == str(image) and len(lines) == 6
  shown = [(int(line.split()[2]), float(line.split("p=")[1])) for line in lines[1:]]
  # The same image through the unfrozen model.
  x = predict.preprocess(np.asarray(Image.open(image).convert("RGB")), 64)[None]
  assert x.shape == (1, 64, 64, 3)
  fn = hk.transform(lambda x: NFNet(10, "F0", width=0.0625, group_width=8)(x, is_training=False))
  params = weights.load_params(checkpoint)
  apply = jax.jit(fn.apply, compiler_options={"xla_backend_optimization_level": 0})
  probs = np.asarray(jax.nn.softmax(apply(params, None, x)))[0]
  assert [c for c, _ in shown] == list(np.argsort(-probs)[:5])
  np.testing.assert_allclose([p for _, p in shown], np.sort(probs)[::-1][:5], atol=1e-4)


@pytest.mark.parametrize(
  "model,image,message",
  [
    (TINY_F0, "missing.png", "error: no such image: missing.png"),
    ("nfnetx", None, "error: unknown model_name 'nfnetx'; allowed: "),
    ("nfnet:depth=50", None, "error: model 'nfnet' has no option 'depth'; allowed: variant,"),
    ("nfnet:variant=F9", None, "error: --model=nfnet:variant=F9: variant='F9' is not allowed"),
    (
      "nfnet:width=-1",
      None,
      "error: --model=nfnet:width=-1: width=-1 is not allowed: a number > 0",
    ),
    (
      "nfnet:variant=F0,width=0.125,group_width=8",
      None,
      "does not fit the model: nfnet/classifier/w has shape (192, 10) in the checkpoint, "
      "(384, 10) in the model",
    ),
  ],
)
def test_bad_input_is_one_error_line_and_exit_2(files, capsys, model, image, message):
  checkpoint, tiny = files
  code = predict.main([f"--model={model}", f"--weights={checkpoint}", image or str(tiny)])
  err = capsys.readouterr().err
  assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("error: ")
