"""MonoT5Teacher: log P(true) over {true, false} at the first decoder step; batching; config errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from distillrank.errors import ConfigError
from distillrank.ranking import Pairs
from distillrank.runtime import Runtime
from distillrank.stages import mine, score
from distillrank.teachers import MonoT5Teacher
from distillrank.validation import check_targets, compose
from distillrank.workspace import stage_dir

from .pairs import ATOL, PAIR_P, PAIR_Q, PASSAGES, QUERIES


def _by_hand(folder: Path, query: str, passage: str) -> float:
    """log softmax([l_true, l_false])[0] of the first decoder step, from a plainly loaded model."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    enc = tokenizer(f"Query: {query} Document: {passage} Relevant:", return_tensors="pt")
    true_id = tokenizer.convert_tokens_to_ids("true")
    false_id = tokenizer.convert_tokens_to_ids("false")
    with torch.no_grad():
        logits = model(**enc, decoder_input_ids=torch.tensor([[model.config.decoder_start_token_id]])).logits
    l_true, l_false = logits[0, 0, true_id].item(), logits[0, 0, false_id].item()
    return l_true - float(np.logaddexp(l_true, l_false))


def test_score_equals_hand_computation(tiny_t5: Path) -> None:
    teacher = MonoT5Teacher(str(tiny_t5), max_length=128, batch_size=4)
    got = teacher.score_pairs(Pairs(QUERIES, PASSAGES, np.array([0]), np.array([4])), Runtime(), progress=False)
    assert got.dtype == np.float32 and got.shape == (1,)
    assert got[0] == pytest.approx(_by_hand(tiny_t5, QUERIES[0], PASSAGES[4]), abs=ATOL)
    assert got[0] < 0
    assert not any(p.requires_grad for p in teacher.seq2seq(Runtime()).parameters())


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batching_and_length_sorting_do_not_change_scores(tiny_t5: Path, batch_size: int) -> None:
    lengths = [len(QUERIES[q]) + len(PASSAGES[p]) for q, p in zip(PAIR_Q, PAIR_P, strict=True)]
    assert lengths != sorted(lengths, reverse=True)  # length sorting really permutes
    teacher = MonoT5Teacher(str(tiny_t5), max_length=128, batch_size=batch_size)
    scores = teacher.score_pairs(Pairs(QUERIES, PASSAGES, PAIR_Q, PAIR_P), Runtime(), progress=False)
    one_by_one = MonoT5Teacher(str(tiny_t5), max_length=128, batch_size=1)
    expected = np.array(
        [
            one_by_one.score_pairs(Pairs(QUERIES, PASSAGES, np.array([q]), np.array([p])), Runtime(), progress=False)[0]
            for q, p in zip(PAIR_Q, PAIR_P, strict=True)
        ]
    )
    np.testing.assert_allclose(scores, expected, atol=ATOL, rtol=0)
    assert np.ptp(expected) > 0.05  # distinct scores: a permutation would be caught
    assert np.all(scores <= 0)


def test_bf16_autocast_stays_close(tiny_t5: Path) -> None:
    teacher = MonoT5Teacher(str(tiny_t5), max_length=128)
    fp32 = teacher.score_pairs(Pairs(QUERIES, PASSAGES, PAIR_Q, PAIR_P), Runtime(), progress=False)
    bf16 = teacher.score_pairs(Pairs(QUERIES, PASSAGES, PAIR_Q, PAIR_P), Runtime(precision="bf16"), progress=False)
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, fp32, atol=0.25, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"true_token": "true false"}, "not a single token"),
        ({"false_token": "zzzunknownword"}, "not a single token"),
        ({"true_token": "false"}, "same token"),
    ],
)
def test_bad_answer_tokens_are_config_errors(tiny_t5: Path, kwargs: dict, match: str) -> None:
    teacher = MonoT5Teacher(str(tiny_t5), **kwargs)
    with pytest.raises(ConfigError, match=match):
        teacher.score_pairs(Pairs(QUERIES, PASSAGES, PAIR_Q, PAIR_P), Runtime(), progress=False)


def test_a_causal_model_is_a_config_error(tiny_causal_lm: Path) -> None:
    teacher = MonoT5Teacher(str(tiny_causal_lm))
    with pytest.raises(ConfigError, match="encoder-decoder"):
        teacher.score_pairs(Pairs(QUERIES, PASSAGES, PAIR_Q, PAIR_P), Runtime(), progress=False)


def test_prompt_without_fields_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="passage"):
        MonoT5Teacher("unused", prompt="Query: {query} Relevant:")


def test_fingerprint_follows_weights_and_settings(tiny_t5: Path, tmp_path: Path) -> None:
    base = MonoT5Teacher(str(tiny_t5)).fingerprint()
    assert MonoT5Teacher(str(tiny_t5), batch_size=3).fingerprint() == base  # batching is not a setting
    assert MonoT5Teacher(str(tiny_t5), max_length=64).fingerprint() != base
    assert MonoT5Teacher(str(tiny_t5), prompt="Q: {query} D: {passage} R:").fingerprint() != base
    changed = shutil.copytree(tiny_t5, tmp_path / "t5")
    weights = load_file(changed / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.01
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    assert MonoT5Teacher(str(changed)).fingerprint() != base


def test_loading_is_lazy(tmp_path: Path) -> None:
    teacher = MonoT5Teacher(str(tmp_path / "nowhere"))  # nothing is resolved or loaded at construction
    with pytest.raises(ConfigError, match="nowhere"):  # the missing model is found at first use
        teacher.score_pairs(Pairs(QUERIES, PASSAGES, PAIR_Q, PAIR_P), Runtime(), progress=False)


def test_monot5_config_validates() -> None:
    cfg = compose(["teacher=monot5"])
    check_targets(cfg)
    assert cfg.teacher.model == "castorini/monot5-base-msmarco"


def test_score_stage_end_to_end_with_monot5(make_cfg, tiny_t5: Path) -> None:
    cfg = make_cfg(
        "teacher=monot5", f"teacher.model={tiny_t5}", "teacher.max_length=96", "teacher.batch_size=8"
    )
    mine.run(cfg)
    manifest = score.run(cfg)
    assert manifest.counts["pairs_scored"] > 0
    table = pd.read_parquet(stage_dir(cfg, "score") / score.OUTPUT)
    assert np.isfinite(table["teacher"]).all() and (table["teacher"] <= 0).all()
    assert table["teacher"].std() > 0
