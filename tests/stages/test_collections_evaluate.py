"""Several collections in one evaluate call (tables per collection, macro mean) and the model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import make_tiny_models
import numpy as np
import pytest
from conftest import tiny_overrides

from distillrank import pipeline
from distillrank.builders import components, evaluation
from distillrank.errors import ConfigError
from distillrank.evaluation import summary
from distillrank.reporting import model_card
from distillrank.stages import evaluate
from distillrank.validation import compose
from distillrank.workspace import stage_dir

MEASURES = ["nDCG@10", "RR@10", "R@100"]


@pytest.fixture(scope="module")
def second_beir(tmp_path_factory) -> Path:
    """Another tiny BEIR collection (other seed), in a folder named ``tiny2``."""
    return make_tiny_models.make_tiny_beir(tmp_path_factory.mktemp("second") / "tiny2", seed=1)


@pytest.fixture(scope="module")
def two(tmp_path_factory, tiny_beir, tiny_bi_encoder, second_beir):
    """One experiment trained on ``tiny`` and evaluated on ``tiny`` and ``tiny2``."""
    ws = tmp_path_factory.mktemp("collections") / "runs"
    cfg = compose(
        [
            *tiny_overrides(ws, tiny_beir, tiny_bi_encoder),
            "experiment=ood",
            "train.max_steps=2",
            "evaluate.latency_queries=2",
            "evaluate.systems=[bm25,teacher,student]",
            f"evaluate.collections=[{second_beir}]",
        ]
    )
    pipeline.run(cfg)
    return cfg


def _test_qids(beir: Path) -> set[str]:
    lines = (beir / "qrels" / "test.tsv").read_text().splitlines()[1:]
    return {line.split("\t")[0] for line in lines if int(line.split("\t")[2]) > 0}


def test_two_collections_each_cached_in_its_folder_with_a_mean(two, tiny_beir, second_beir):
    folder = stage_dir(two, "evaluate")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert list(metrics["collections"]) == ["tiny", "tiny2"]
    for name, beir, sub in (("tiny", tiny_beir, folder), ("tiny2", second_beir, folder / "tiny2")):
        entry = metrics["collections"][name]
        assert entry["split"] == "test" and entry["folder"] == ("." if name == "tiny" else "tiny2")
        assert entry["queries"] == len(_test_qids(beir)) and entry["passages"] == 60
        assert list(entry["systems"]) == ["bm25", "teacher", "student", "hybrid_rrf", "hybrid"]
        for system in ("teacher", "student", "hybrid"):  # significance against bm25, per collection
            assert set(entry["systems"][system]["significance"]) == set(MEASURES)
        for system in entry["systems"]:
            run_qids = {line.split()[0] for line in (sub / system / "run.trec").read_text().splitlines()}
            assert run_qids == _test_qids(beir)
            assert json.loads((sub / system / "metrics.json").read_text())["per_query"]
    mean = metrics["mean"]
    assert mean["over"] == ["tiny", "tiny2"] and mean["average"] == "macro"
    for system in ("bm25", "teacher", "student"):
        for m in MEASURES:
            values = [metrics["collections"][c]["systems"][system]["metrics"][m] for c in ("tiny", "tiny2")]
            assert mean["systems"][system]["metrics"][m] == pytest.approx(sum(values) / 2)
    text = (folder / "results.md").read_text()
    assert text.index("## tiny / test: 8 queries") < text.index("## tiny2 / test") < text.index(
        "## Mean over 2 collections (tiny, tiny2)"
    )
    assert text.count("significantly better / worse than bm25") == 2  # the mean table is untested
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"]["collections"] == {"tiny": 8, "tiny2": len(_test_qids(second_beir))}
    assert "tiny2/student/run.trec" in manifest["outputs"] and "student/run.trec" in manifest["outputs"]


def test_extra_collection_matches_its_own_single_evaluation(two, tmp_path, second_beir, tiny_bi_encoder):
    """BM25 on the extra collection scores as a plain evaluation of that collection alone does."""
    alone = compose(
        [
            *tiny_overrides(tmp_path / "runs", second_beir, tiny_bi_encoder),
            "data.name=tiny2",
            "evaluate.systems=[bm25]",
            "evaluate.baseline=null",
            "evaluate.latency_queries=0",
        ]
    )
    evaluate.run(alone)
    single = json.loads((stage_dir(alone, "evaluate") / "metrics.json").read_text())
    assert "collections" not in single  # no extra collection: the single layout, unchanged
    both = json.loads((stage_dir(two, "evaluate") / "metrics.json").read_text())
    assert both["collections"]["tiny2"]["systems"]["bm25"]["metrics"] == pytest.approx(single["bm25"]["metrics"])


def test_changing_only_the_significance_level_reuses_every_system(two):
    folder = stage_dir(two, "evaluate")
    runs = [folder / "student" / "run.trec", folder / "tiny2" / "student" / "run.trec"]
    before = [p.stat().st_mtime_ns for p in runs]
    cfg = two.copy()
    cfg.evaluate.alpha = 0.2
    assert evaluate.stage_key(cfg) != evaluate.stage_key(two)
    evaluate.run(cfg)
    assert [p.stat().st_mtime_ns for p in runs] == before
    assert "α = 0.2" in (folder / "results.md").read_text()
    card = (stage_dir(two, "train") / "model" / "README.md").read_text()
    assert card.count("## Evaluation") == 1 and "α = 0.2" in card and "α = 0.05" not in card


def test_model_card_carries_the_student_metrics_per_collection(two):
    card = (stage_dir(two, "train") / "model" / "README.md").read_text()
    metrics = json.loads((stage_dir(two, "evaluate") / "metrics.json").read_text())
    assert card.index("## Training") < card.index("## Config") < card.index("## Evaluation")
    section = card.split("## Evaluation", 1)[1]
    assert "exact dense retrieval over the whole corpus" in section
    assert "distillrank.stages.evaluate.run" in section  # no Hydra job here: the config is written
    assert "collections:" in section and "tiny2" in section.split("```yaml", 1)[1]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")}
    for name in ("tiny", "tiny2"):
        cells = [c.strip() for c in rows[name].strip().strip("|").split("|")]
        assert cells[1] == "test"
        value = float(cells[3].rstrip("†‡"))
        assert value == pytest.approx(metrics["collections"][name]["systems"]["student"]["metrics"]["nDCG@10"], abs=6e-4)
    mean_cells = [c.strip() for c in rows["mean (2 collections)"].strip().strip("|").split("|")]
    assert float(mean_cells[3]) == pytest.approx(metrics["mean"]["systems"]["student"]["metrics"]["nDCG@10"], abs=6e-4)
    assert not any(p.name.startswith(".README") for p in (stage_dir(two, "train") / "model").iterdir())


def test_replace_section_keeps_the_rest_and_fenced_comments():
    card = "# title\n\n## Config\n\n```yaml\n# a comment\nx: 1\n```\n"
    once = model_card.replace_section(card, "## Evaluation", "## Evaluation\n\nold\n")
    assert once == card + "\n## Evaluation\n\nold\n"
    twice = model_card.replace_section(once, "## Evaluation", "## Evaluation\n\nnew\n")
    assert twice == card + "\n## Evaluation\n\nnew\n"
    middle = "# t\n\n## Evaluation\n\nold\n```\n# not a heading\n```\n\n## Config\n\nkept\n"
    assert model_card.replace_section(middle, "## Evaluation", "## Evaluation\n\nnew\n") == (
        "# t\n\n## Evaluation\n\nnew\n\n## Config\n\nkept\n"
    )
    assert model_card.replace_section("", "## Evaluation", "## Evaluation\n") == "## Evaluation\n"


def test_macro_average_by_hand():
    per = {
        "a": {"s": {"metrics": {"m": 0.2, "n": 1.0}, "parameters": 7, "disk_mb": 1.5}},
        "b": {"s": {"metrics": {"m": 0.6, "n": float("nan")}, "parameters": 7, "disk_mb": 1.5}},
        "c": {"s": {"metrics": {"m": 0.4}, "parameters": 7, "disk_mb": 1.5}},
    }
    mean = summary.macro_average(per, ["m", "n"])
    assert mean["s"]["metrics"] == {"m": pytest.approx(0.4)}  # n is NaN in b, missing in c
    assert (mean["s"]["collections"], mean["s"]["parameters"], mean["s"]["disk_mb"]) == (3, 7, 1.5)
    assert np.isclose(summary.macro_average({"a": per["a"]}, ["m"])["s"]["metrics"]["m"], 0.2)


def test_extra_data_from_a_data_option(make_cfg):
    cfg = make_cfg("data.root=/mirror")
    data = evaluation.extra_data(cfg, "vaswani")
    assert (data.name, data.irds_id, data.test_split, data.train_split, data.root) == (
        "vaswani", "vaswani", "test", None, "/mirror"
    )
    with pytest.raises(ConfigError, match=r"beir.yaml leaves \['path'\] unset"):
        evaluation.extra_data(cfg, "beir")
    with pytest.raises(ConfigError, match=r"'nope' is neither a data option .*scifact.*nor an existing BEIR folder"):
        evaluation.extra_data(cfg, "nope")


def test_bad_extra_collections_are_config_errors(make_cfg, tiny_beir, second_beir, tmp_path):
    with pytest.raises(ConfigError, match="'tiny2'.*like another collection"):
        evaluation.extra_collections(make_cfg(f"evaluate.collections=[{second_beir},{second_beir}]"))
    clash = tmp_path / "bm25"
    clash.symlink_to(second_beir)
    with pytest.raises(ConfigError, match=r"'bm25' cannot be the folder evaluate/bm25/"):
        evaluation.extra_collections(make_cfg(f"evaluate.collections=[{clash}]"))
    no_test = tmp_path / "notest"
    shutil.copytree(second_beir, no_test)
    (no_test / "qrels" / "test.tsv").unlink()
    cfg = make_cfg(f"evaluate.collections=[{no_test}]", "evaluate.systems=[bm25]")
    with pytest.raises(ConfigError, match=r"collection 'notest' has no test split .*\['train'\]"):
        evaluate.run(cfg)
    components._collection.cache_clear()


def test_model_card_command_through_the_cli(two, tiny_beir, tiny_bi_encoder, second_beir):
    from typer.testing import CliRunner

    from distillrank.cli import app

    args = [
        *tiny_overrides(Path(two.workspace), tiny_beir, tiny_bi_encoder),
        "experiment=ood",
        "train.max_steps=2",
        "evaluate.latency_queries=2",
        "evaluate.systems=[bm25,teacher,student]",
        f"evaluate.collections=[{second_beir}]",
        "evaluate.alpha=0.3",
    ]
    result = CliRunner().invoke(app, ["evaluate", *args])
    assert result.exit_code == 0, result.output
    section = (stage_dir(two, "train") / "model" / "README.md").read_text().split("## Evaluation", 1)[1]
    command = section.split("```bash\n", 1)[1].split("\n```", 1)[0]
    # the overrides as given, in order (the tests pin hardware=cpu: auto would calibrate per test)
    assert command.startswith(f"distillrank evaluate workspace={two.workspace} hardware=cpu data=beir")
    assert command.endswith(f"'evaluate.collections=[{second_beir}]' evaluate.alpha=0.3")
    assert "α = 0.3" in section and "```yaml" not in section
