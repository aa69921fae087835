"""The ensemble teacher: its combination, its fingerprint, and the score stage's per-member caches."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from distillrank.errors import ConfigError
from distillrank.ranking import Pairs
from distillrank.runtime import Runtime
from distillrank.stages import mine, score
from distillrank.teachers.base import Teacher
from distillrank.teachers.ensemble import EnsembleTeacher
from distillrank.teachers.normalize import normalize
from distillrank.validation import compose
from distillrank.workspace import stage_dir


class ConstantTeacher(Teacher):
    """Scores a pair by a fixed table of passage values (plus an offset), for hand checks."""

    kind = "constant"

    def __init__(self, values: dict[str, float], name: str) -> None:
        self.values, self.name = values, name

    def identity(self, runtime) -> dict:
        return {"name": self.name}

    def score_pairs(self, pairs, runtime, *, batch_size=None, progress=False):
        return np.array([self.values[p] for p in pairs.passage_texts()], dtype=np.float32)


def test_combine_is_the_weighted_mean_of_normalised_members():
    a = ConstantTeacher({"x": 1.0, "y": 3.0, "z": 5.0}, "a")
    b = ConstantTeacher({"x": 100.0, "y": 0.0, "z": 50.0}, "b")
    ens = EnsembleTeacher([a, b], weights=[3, 1], normalize="minmax", scope="query")
    out = ens.score_pairs(Pairs(["q"], ["x", "y", "z"], np.array([0, 0, 0]), np.array([0, 1, 2])), Runtime())
    # minmax: a -> [0, .5, 1], b -> [1, 0, .5]; 0.75 a + 0.25 b
    np.testing.assert_allclose(out, [0.25, 0.375, 0.875], rtol=1e-6)


def test_fingerprint_follows_members_weights_and_normalisation():
    a, b = ConstantTeacher({}, "a"), ConstantTeacher({}, "b")
    base = EnsembleTeacher([a, b]).fingerprint()
    assert EnsembleTeacher([a, b]).fingerprint() == base
    assert EnsembleTeacher([a, b], weights=[2, 2]).fingerprint() == base  # weights are normalised
    assert EnsembleTeacher([a, b], weights=[1, 2]).fingerprint() != base
    assert EnsembleTeacher([b, a], weights=[1, 1], normalize="minmax").fingerprint() != base


@pytest.mark.parametrize(
    "kwargs, match",
    [({"members": []}, "at least one"), ({"weights": [1.0]}, "1 values for 2"), ({"weights": [-1, 2]}, "non-negative"),
     ({"normalize": "rank"}, "teacher.normalize")],
)
def test_bad_settings_are_config_errors(kwargs, match):
    args = {"members": [ConstantTeacher({}, "a"), ConstantTeacher({}, "b")], **kwargs}
    with pytest.raises(ConfigError, match=match):
        EnsembleTeacher(**args)


def _member(tiny_bi_encoder, passage_max_length: int) -> str:
    return (
        "{_target_: distillrank.teachers.BiEncoderTeacher, "
        f"model: '{tiny_bi_encoder}', passage_max_length: {passage_max_length}}}"
    )


def test_score_stage_reuses_single_teacher_caches_and_combines_members(make_cfg, tiny_args, tiny_bi_encoder):
    def ensemble_cfg(*extra: str):
        args = [a for a in tiny_args if not a.startswith("teacher.")]
        return compose([*args, "teacher=ensemble", "experiment=ens", *extra])

    single = make_cfg("teacher.passage_max_length=64")
    mine.run(single)
    first = score.run(single)
    assert first.counts["pairs_scored"] == first.counts["pairs"]
    raw_single = pq.read_table(stage_dir(single, "score") / score.OUTPUT)

    members = f"teacher.members=[{_member(tiny_bi_encoder, 64)},{_member(tiny_bi_encoder, 32)}]"
    ens_cfg = ensemble_cfg(members, "teacher.weights=[1.0,1.0]")
    mine.run(ens_cfg)  # same mining as above (its own experiment folder)
    ens = score.run(ens_cfg)
    # the first member is the single teacher above: all its scores come from its cache; the second
    # member (another passage length, another fingerprint) scores every pair
    assert ens.counts["members"] == 2
    assert ens.counts["pairs_reused"] == ens.counts["pairs"]
    assert ens.counts["pairs_scored"] == ens.counts["pairs"]
    table = pq.read_table(stage_dir(ens_cfg, "score") / score.OUTPUT)
    assert table["qid"].to_pylist() == raw_single["qid"].to_pylist()

    caches = ens.inputs["cache"]
    assert isinstance(caches, list) and len(caches) == 2
    groups = table["qid"].to_numpy(zero_copy_only=False)
    m1 = normalize(raw_single["teacher"].to_numpy(), groups, "zscore")
    combined = table["teacher"].to_numpy()
    # with equal weights, combined - m1/2 is the second member's normalised score / 2: zero mean per query
    rest = (combined - m1 / 2).astype(np.float64)
    for q in set(groups):
        assert abs(rest[groups == q].mean()) < 1e-5

    again = score.run(ens_cfg)
    assert again.key == ens.key  # cached stage
    reweighted = score.run(ensemble_cfg(members, "teacher.weights=[1.0,3.0]"))
    assert reweighted.counts["pairs_scored"] == 0  # both members cached: only the combination changes
