"""hardware=cpu_bf16: the pipeline trains and scores under bf16 autocast on CPU."""

from __future__ import annotations

import json

from distillrank import pipeline
from distillrank.workspace import stage_dir


def test_cpu_bf16_pipeline_runs_and_keys_apart_from_fp32(make_cfg):
    args = ("train.max_steps=2", "evaluate.systems=[student]", "evaluate.baseline=null", "evaluate.latency_queries=0")
    bf16 = make_cfg("hardware=cpu_bf16", *args)
    assert bf16.hardware.precision == "bf16"
    out = pipeline.run(bf16)
    assert out["train"].config["hardware"]["precision"] == "bf16"
    metrics = json.loads((stage_dir(bf16, "evaluate") / "metrics.json").read_text())
    assert 0.0 <= metrics["student"]["metrics"]["nDCG@10"] <= 1.0
    fp32 = make_cfg(*args)
    from distillrank.stages import train

    assert train.stage_key(fp32) != train.stage_key(bf16)
