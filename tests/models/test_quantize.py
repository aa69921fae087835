"""int8 dynamic quantization: the quantize helper, the teachers under hardware.precision=int8, the
precision checks of runtime and the fingerprints that keep int8 scores in their own cache."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from distillrank.errors import ConfigError
from distillrank.models.quantize import is_quantized, quantize_int8
from distillrank.ranking import Pairs
from distillrank.runtime import (
    Runtime,
    autocast,
    check_inference_precision,
    check_precision,
)
from distillrank.teachers import BiEncoderTeacher, CrossEncoderTeacher
from distillrank.teachers.base import Teacher
from distillrank.workspace import fingerprint

CPU = torch.device("cpu")
QUERIES = ["what is a cat", "dogs bark loudly", "the sun is a star"]
PASSAGES = [
    "a cat is a small furry animal",
    "stars such as the sun burn hydrogen",
    "dogs are loyal and bark at strangers",
    "the moon orbits the earth",
    "felines like cats sleep a lot",
]
PAIR_Q = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2], dtype=np.int64)
PAIR_P = np.array([0, 3, 4, 2, 3, 0, 1, 3, 4], dtype=np.int64)


def test_quantize_int8_swaps_linears_in_place_silently_and_stays_close() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(8, 16)
    with torch.no_grad():
        before = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecation warning escaping the helper fails here
        out = quantize_int8(model)
    assert out is model and is_quantized(model) and not model.training
    with torch.no_grad():
        after = model(x)
    assert not torch.equal(after, before)  # int8 arithmetic really runs
    torch.testing.assert_close(after, before, atol=0.05, rtol=0.05)


def test_quantize_int8_refuses_a_model_off_the_cpu() -> None:
    model = nn.Linear(4, 4).to("meta")
    with pytest.raises(ConfigError, match="CPU only"):
        quantize_int8(model)


def test_precision_checks() -> None:
    assert check_precision("bf16") == "bf16"
    with pytest.raises(ConfigError, match="expected one of"):
        check_precision("int4")
    assert check_inference_precision("int8", CPU) == "int8"
    with pytest.raises(ConfigError, match="CPU only"):
        check_inference_precision("int8", torch.device("cuda"))
    assert isinstance(autocast(CPU, "int8"), type(autocast(CPU, "fp32")))  # no autocast under int8


@pytest.mark.parametrize("kind", ["bi_encoder", "cross_encoder"])
def test_teachers_quantize_once_and_rank_like_fp32(kind: str, tiny_bi_encoder: Path, tiny_cross_encoder: Path) -> None:
    teacher = (
        BiEncoderTeacher(str(tiny_bi_encoder), batch_size=2)
        if kind == "bi_encoder"
        else CrossEncoderTeacher(str(tiny_cross_encoder), max_length=128, batch_size=3)
    )
    load = teacher.encoder if kind == "bi_encoder" else teacher.cross_encoder
    fp32 = teacher.score_pairs(Pairs(QUERIES, PASSAGES, PAIR_Q, PAIR_P), Runtime(), progress=False)
    assert not is_quantized(load(Runtime()))
    int8 = teacher.score_pairs(Pairs(QUERIES, PASSAGES, PAIR_Q, PAIR_P), Runtime(precision="int8"), progress=False)
    model = load(Runtime(precision="int8"))
    assert is_quantized(model) and load(Runtime(precision="int8")) is model  # quantized once, then reused
    assert int8.dtype == np.float32 and int8.shape == fp32.shape and not np.array_equal(int8, fp32)
    assert spearmanr(int8, fp32).statistic > 0.9
    again = teacher.score_pairs(Pairs(QUERIES, PASSAGES, PAIR_Q, PAIR_P), Runtime(), progress=False)
    np.testing.assert_array_equal(again, fp32)  # back to fp32: the float weights are reloaded
    assert not is_quantized(load(Runtime()))


def test_int8_fingerprint_differs_and_other_precisions_keep_the_old_one(tiny_bi_encoder: Path, tiny_cross_encoder: Path) -> None:
    for teacher in (BiEncoderTeacher(str(tiny_bi_encoder)), CrossEncoderTeacher(str(tiny_cross_encoder))):
        old = teacher.fingerprint()
        assert teacher.fingerprint(Runtime()) == teacher.fingerprint(Runtime(precision="bf16")) == old
        assert teacher.fingerprint(Runtime(precision="int8")) != old


def test_int8_with_a_teacher_that_cannot_quantize_is_a_config_error() -> None:
    class Lookup(Teacher):
        kind = "precomputed"

        def identity(self, runtime: Runtime) -> dict:
            return {"x": 1}

    assert Lookup().fingerprint(Runtime()) == fingerprint({"x": 1})
    with pytest.raises(ConfigError, match="precomputed"):
        Lookup().fingerprint(Runtime(precision="int8"))
