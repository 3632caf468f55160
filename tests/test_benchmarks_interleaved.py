"""``benchmarks.interleaved``: case parsing, one-line errors, and interleaved timing."""

import pytest

from benchmarks import interleaved
from benchmarks.workload import Case

TINY = "depth=18,resolution=16,batch_size=8,stem=cifar,num_classes=10"


def test_parse_case_types_fields():
  case = interleaved.parse_case(f"model=resnet_v2,{TINY},mode=eval,frozen=true")
  assert case == Case("resnet_v2", 18, 16, 8, "eval", stem="cifar", num_classes=10, frozen=True)


@pytest.mark.parametrize(
  "spec, message",
  [
    ("depht=18", "bad item 'depht=18'; allowed keys: model, depth"),
    ("depth=eighteen", "depth='eighteen' is not a int"),
    ("frozen=maybe", "frozen='maybe' is not a boolean"),
    ("depth=17", "unknown depth 17"),
  ],
)
def test_parse_case_errors(spec, message):
  with pytest.raises(ValueError, match=message):
    interleaved.parse_case(spec)


def test_cli_usage_error_is_one_line(capsys):
  with pytest.raises(SystemExit) as exit_:
    interleaved.main(["--case=model=nf"])
  assert exit_.value.code == 2
  assert capsys.readouterr().err.count("\n") == 1


def test_interleave_times_every_case_every_round():
  cases = [interleaved.parse_case(f"model=nf,{TINY},mode=train"), interleaved.parse_case(TINY)]
  results = interleaved.interleave(cases, rounds=3, warmup=1)
  assert [r["label"] for r in results] == [c.label() for c in cases]
  for r in results:
    assert len(r["step_times_s"]) == 3 and min(r["step_times_s"]) > 0
    assert r["min_step_s"] <= r["median_step_s"]
  assert results[0]["median_ratio_to_first"] == 1.0
