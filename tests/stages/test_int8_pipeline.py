"""hardware=cpu_int8 end to end: int8 teacher scores are cached apart, the student trains in fp32."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from distillrank import pipeline
from distillrank.builders import components
from distillrank.stages import score
from distillrank.workspace import stage_dir


def test_int8_scores_are_cached_apart_and_the_pipeline_runs(make_cfg):
    fp32 = make_cfg("train.max_steps=2", "evaluate.systems=[teacher,student]", "evaluate.baseline=null",
                    "evaluate.latency_queries=0")
    int8 = make_cfg("hardware=cpu_int8", "train.max_steps=2", "evaluate.systems=[teacher,student]",
                    "evaluate.baseline=null", "evaluate.latency_queries=0", "experiment=int8")
    assert components.teacher_fingerprint(fp32) != components.teacher_fingerprint(int8)
    pipeline.run(fp32)
    out = pipeline.run(int8)
    assert out["score"].counts["pairs_scored"] == out["score"].counts["pairs"]  # nothing reused from fp32
    a = pq.read_table(stage_dir(fp32, "score") / score.OUTPUT)["teacher"].to_numpy()
    b = pq.read_table(stage_dir(int8, "score") / score.OUTPUT)["teacher"].to_numpy()
    assert not np.array_equal(a, b) and np.corrcoef(a, b)[0, 1] > 0.9  # close, not equal
    assert (stage_dir(int8, "train") / "model").is_dir()
