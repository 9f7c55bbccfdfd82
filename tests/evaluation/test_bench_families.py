"""The paper's benchmark runs on the flow-matching families as on the UNet ones: one subject, end to end."""

import json

import pytest
from test_bench import dataset, scorers, small  # noqa: F401  (fixtures)

import dreambooth.evaluation.bench as bench_mod


@pytest.mark.slow  # two whole runs, drawn and scored
@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd3"])
def test_bench_trains_draws_and_scores_a_flow_model(model, dataset, scorers, tmp_path):  # noqa: F811
    out = tmp_path / "bench"
    bench_mod.bench(small(dataset, out, scorers, model=model, subjects=["dog"]))
    row = json.loads((out / "bench.json").read_text())["subjects"][0]
    assert row["subject"] == "dog" and all(row[k] is not None for k in ("dino", "clip_i", "clip_t", "pres", "div"))
    assert f"model: {model}" in (out / "dog" / "lora" / "config.yaml").read_text()
