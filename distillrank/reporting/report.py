"""``distillrank report``: one Markdown (and optionally HTML) report over every experiment of a workspace.

Written to ``<workspace>/report/`` (or ``--output``) as a whole, atomically: ``report.md``,
``report.html`` with ``--html`` (figures embedded), ``figures/*.png`` and the marker
``.distillrank-report``. An existing folder is replaced only when it holds that marker (or is empty,
or is an older version's ``<workspace>/report``); never the workspace or a folder holding it.
Per experiment:

- the metrics table of every evaluated system with the significance marks, latency and size
  (:func:`distillrank.evaluation.tables.results_table`, the table ``evaluate`` prints);
- training curves: loss vs step (smoothed) and dev nDCG@10 when the log has it;
- teacher vs student scores and margins on a seeded sample of scored training triples
  (Hofstätter et al. 2020; student scores from :mod:`distillrank.reporting.scorers`, on CPU);
- per-query nDCG@10 of the student minus the baseline (``evaluate.baseline``), sorted, with wins,
  losses and ties.

With several collections (``evaluate.collections``) the metrics and the per-query figure come once
per collection, followed by the mean table (macro average over the collections, unmarked).

A cross-experiment summary (one row per experiment's student) comes first, then a quality–speed
figure (``figures/quality-speed.png``): nDCG@10 against passages/s and against query latency for
BM25, the teachers, every experiment's students and hybrid systems, one row per collection. A
missing stage or artifact turns its section into a sentence saying what is missing.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from distillrank.errors import ConfigError, DistillrankError
from distillrank.evaluation.tables import hybrid_note, results_table
from distillrank.reporting import plots
from distillrank.reporting.collect import (
    STAGES,
    Evaluation,
    Experiment,
    discover,
    read_evaluation,
    read_train_log,
)
from distillrank.reporting.deltas import query_deltas
from distillrank.reporting.document import Block, Figure, Heading, Table, Text, to_html, to_markdown
from distillrank.reporting.scorers import (
    StudentUnavailable,
    load_trained_student,
    sample_pairs,
    score_aligned,
)
from distillrank.teachers.base import describe as describe_teacher
from distillrank.workspace import atomic_dir

log = logging.getLogger(__name__)

REPORT_DIR = "report"
REPORT_MARKER = ".distillrank-report"  # written into every report folder: only such a folder is replaced
FIGURES = "figures"
STUDENT = "student"
DELTA_MEASURE = "nDCG@10"
SPEED_MEASURE = "nDCG@10"  # the quality axis of the quality–speed figure


def _speed_kind(system: str) -> str:
    """The quality–speed figure's kind of a system (its marker): see ``plots.SPEED_STYLES``."""
    if system in ("bm25", "teacher", "student", "student_init"):
        return system
    return "hybrid" if system.startswith("hybrid") else "other"


@dataclass
class ReportPaths:
    """What :func:`run` wrote."""

    folder: Path
    markdown: Path
    html: Path | None
    figures: list[Path]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"


class _Builder:
    """Collects the blocks and figures of one report (figures go to ``root / figures``)."""

    def __init__(self, workspace: Path, root: Path, pairs: int, seed: int) -> None:
        self.workspace = workspace
        self.root = root
        self.pairs = pairs
        self.seed = seed
        self.blocks: list[Block] = []
        self.figures: list[Path] = []
        (root / FIGURES).mkdir(parents=True, exist_ok=True)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def figure(self, name: str) -> tuple[Path, str]:
        rel = f"{FIGURES}/{name}.png"
        return self.root / rel, rel

    # ------------------------------------------------------------------ sections
    def summary(self, evaluations: dict[str, list[tuple[str | None, Evaluation]]]) -> None:
        self.add(Heading(2, "Summary"))
        rows: dict[str, dict] = {}
        marks: dict[str, dict] = {}
        baselines: set[str] = set()
        measures: list[str] = []
        for name, groups in evaluations.items():
            for title, ev in groups:
                if STUDENT not in ev.results:
                    continue
                row = name if title is None else f"{name} ({title})"
                rows[row] = ev.results[STUDENT]
                measures += [m for m in ev.measures if m not in measures]
                if ev.results[STUDENT].get("significance"):
                    marks[row] = ev.results[STUDENT]["significance"]
                    baselines.add(str(ev.baseline))
        if not rows:
            self.add(Text("No experiment has an evaluated student yet (`distillrank evaluate`)."))
            return
        baseline = baselines.pop() if len(baselines) == 1 else "each experiment's baseline"
        table = results_table(rows, measures, marks or None, baseline=baseline)
        table = table.replace("| system |", "| experiment |", 1)
        self.add(
            Text("The trained student of each experiment, one row each (marks: against its own baseline)."),
            Table(table),
        )

    def quality_speed(self, evaluations: dict[str, list[tuple[str | None, Evaluation]]]) -> None:
        """nDCG@10 against speed for every system of every experiment, one figure row per collection."""
        self.add(Heading(2, "Quality and speed"))
        panels: dict[str, list[dict]] = {}
        shared: dict[tuple[str, str], dict] = {}  # (collection, system key) -> its point
        for exp_name, groups in evaluations.items():
            for title, ev in groups:
                if ev.mean or SPEED_MEASURE not in ev.measures:
                    continue
                collection = title or (ev.header.split(":", 1)[0] if ev.header else "test")
                for system, res in ev.results.items():
                    quality = res.get("metrics", {}).get(SPEED_MEASURE)
                    if not isinstance(quality, int | float) or not np.isfinite(quality):
                        continue
                    key = (collection, str(res.get("key") or f"{exp_name}/{system}"))
                    if key in shared:  # the same results in another experiment (BM25, a teacher): drawn once
                        shared[key]["experiments"] += 1
                        continue
                    latency = res.get("latency") or {}
                    point = {
                        "system": system,
                        "experiment": exp_name,
                        "experiments": 1,
                        "kind": _speed_kind(system),
                        "quality": float(quality),
                        "passages_per_s": res.get("passages_per_s"),
                        "latency_ms": latency.get("median_ms"),
                    }
                    shared[key] = point
                    panels.setdefault(collection, []).append(point)
        if not panels:
            self.add(Text(f"No evaluated system has {SPEED_MEASURE} yet (`distillrank evaluate`)."))
            return
        for points in panels.values():
            for p in points:
                p["label"] = p["system"] if p["kind"] == "bm25" or p["experiments"] > 1 else (
                    f"{p['experiment']}" if p["system"] == STUDENT else f"{p['experiment']}: {p['system']}"
                )
        path, rel = self.figure("quality-speed")
        self.figures.append(plots.quality_speed(panels, path, SPEED_MEASURE))
        self.add(
            Figure(rel, f"{SPEED_MEASURE} against passages/s (left) and query latency (right), per collection"),
            Text(
                f"Each point is one system on one collection ({SPEED_MEASURE} on its test queries): the trained "
                "student of each experiment (labelled with the experiment), its hybrid systems with BM25, the "
                "untrained student and the teacher; results shared by experiments (BM25, a common teacher) are "
                "drawn once. Left: passages/s is the corpus encoding throughput (log scale); for a re-ranker it is "
                "(query, passage) pairs scored per second, and a hybrid system shares its student's. BM25 encodes "
                "nothing, so it is the dashed horizontal line at its "
                f"{SPEED_MEASURE} there. Right: median single-query latency, end to end (log scale), BM25 "
                "included; systems evaluated with `evaluate.latency_queries=0` are missing there. Speeds are "
                "those of the machine that ran each evaluation."
            ),
        )

    def stages(self, exp: Experiment) -> None:
        parts = []
        for stage, (manifest, folder) in sorted(exp.stages.items(), key=lambda kv: STAGES.index(kv[0])):
            where = (
                ""
                if folder.parent == exp.root
                else f" (from `{folder.parent.relative_to(self.workspace).as_posix()}`)"
            )
            parts.append(f"{stage} {manifest.wall_time_s:.0f} s{where}")
        self.add(Text("Completed stages: " + ", ".join(parts) + "."))
        score = exp.manifest("score")
        if score is not None:
            teacher = describe_teacher(score.config.get("teacher"))
            self.add(Text(f"Teacher: `{teacher}`; {score.counts.get('pairs', '?')} scored pairs."))

    def metrics(self, exp: Experiment, groups: list[tuple[str | None, Evaluation]]) -> None:
        self.add(Heading(3, "Metrics"))
        if "evaluate" not in exp.stages:
            self.add(Text("Not evaluated yet: run `distillrank evaluate` for this experiment."))
            return
        if not groups:
            self.add(Text(f"`{exp.folder('evaluate')}/metrics.json` is missing or unreadable."))
            return
        for title, ev in groups:
            if title is not None:
                self.add(Heading(4, title))
            if ev.header:
                self.add(Text(ev.header))
            table = results_table(
                ev.results, ev.measures, ev.significance(), baseline=ev.baseline, alpha=ev.alpha,
                bm25_significance=ev.bm25_significance(),
            )
            self.add(Table(table))
            note = hybrid_note(ev.results)
            if note:
                self.add(Text(note))

    def training(self, exp: Experiment) -> None:
        self.add(Heading(3, "Training"))
        manifest = exp.manifest("train")
        if manifest is None:
            self.add(Text("Not trained yet: run `distillrank train` for this experiment."))
            return
        counts = manifest.counts
        loss = (manifest.config.get("loss") or {}).get("_target_", "?")
        self.add(
            Text(
                f"Loss `{loss}`; {counts.get('steps', '?')} steps, {counts.get('examples', '?')} examples, "
                f"final loss {counts.get('final_loss', float('nan')):.4g}."
            )
        )
        records = read_train_log(exp.folder("train") / "train_log.jsonl")
        if not any(isinstance(r.get("loss"), int | float) for r in records):
            self.add(Text("The training log holds no loss records, so there is no curve."))
            return
        path, rel = self.figure(f"{_slug(exp.name)}-training")
        self.figures.append(plots.training_curves(records, path, f"{exp.name}: training"))
        dev = plots.dev_metric_keys(records)
        caption = "Training loss vs step (faint: logged values; solid: smoothed)" + (
            ", and dev nDCG@10" if dev else "; the log has no dev nDCG@10"
        )
        self.add(Figure(rel, caption))

    def score_scales(self, exp: Experiment) -> None:
        self.add(Heading(3, "Teacher vs student scores"))
        if "score" not in exp.stages:
            self.add(Text("No teacher scores: run `distillrank score` for this experiment."))
            return
        if "train" not in exp.stages:
            self.add(Text("No trained student to compare with the teacher's scores."))
            return
        try:
            sample = sample_pairs(exp.folder("score") / "scores.parquet", self.pairs, self.seed)
        except (OSError, KeyError, ValueError) as err:
            self.add(Text(f"The teacher scores could not be read ({err})."))
            return
        if len(sample) == 0:
            self.add(Text("The scored pairs hold no (positive, negative) pair of one query to compare."))
            return
        try:
            student = load_trained_student(exp.folder("train") / "model")
            query_text, passage_text = self._texts(exp)
            queries = [query_text[q] for q in sample.qids]
            student_pos = score_aligned(student, queries, passage_text(sample.pos))
            student_neg = score_aligned(student, queries, passage_text(sample.neg))
        except StudentUnavailable as err:
            self.add(Text(f"Skipped: {err}."))
            return
        except (DistillrankError, OSError, KeyError) as err:
            self.add(Text(f"Skipped: the sampled pairs could not be scored by the student ({err!r})."))
            return
        path, rel = self.figure(f"{_slug(exp.name)}-scores")
        self.figures.append(
            plots.score_scales(
                sample.teacher_pos, sample.teacher_neg, student_pos, student_neg, path, exp.name
            )
        )
        t_margin, s_margin = sample.teacher_pos - sample.teacher_neg, student_pos - student_neg
        agree = float(np.mean(np.sign(t_margin) == np.sign(s_margin)))
        corr = (
            float(np.corrcoef(t_margin, s_margin)[0, 1])
            if len(sample) > 1 and np.std(s_margin) > 0
            else float("nan")
        )
        self.add(
            Figure(
                rel,
                f"{len(sample)} sampled training triples (seed {self.seed}): scores and margins pos − neg",
            ),
            Text(
                f"Teacher scores span [{min(sample.teacher_pos.min(), sample.teacher_neg.min()):.3g}, "
                f"{max(sample.teacher_pos.max(), sample.teacher_neg.max()):.3g}], the student's "
                f"[{min(student_pos.min(), student_neg.min()):.3g}, {max(student_pos.max(), student_neg.max()):.3g}]: "
                "different architectures score on different scales (Hofstätter et al. 2020), which is why "
                "Margin-MSE matches margins, not scores. "
                f"Mean margin: teacher {t_margin.mean():.3g}, student {s_margin.mean():.3g}; "
                f"the student orders {agree:.0%} of the triples as the teacher does "
                f"(Pearson r of the margins {corr:.2f})."
            ),
        )

    def _texts(self, exp: Experiment):
        """Training query texts ``{qid: text}`` and a ``docids -> texts`` lookup, from the data config
        recorded in the ``mine`` manifest (the collection is read from the workspace cache); with a
        ``queries`` stage, its synthetic queries and rewritten passages (the kept rows)."""
        from distillrank.builders import components
        from distillrank.data.training import passage_lookup, read_synthetic

        mine = exp.manifest("mine")
        data = (mine.config.get("data") if mine else None) or None
        if data is None:
            raise StudentUnavailable("the mine manifest does not record the collection, so texts are unknown")
        cfg = OmegaConf.create({"workspace": str(self.workspace), "data": data})
        coll = components.collection(cfg)
        folder = exp.folder("queries")
        if folder is None:
            return dict(coll.split_queries(components.split_or_fail(cfg, coll, "train_split"))), passage_lookup(coll)
        made = read_synthetic(folder, exp.manifest("queries").key)
        return dict(made.queries), passage_lookup(coll, made.passages)

    def deltas(self, exp: Experiment, groups: list[tuple[str | None, Evaluation]]) -> None:
        self.add(Heading(3, f"Per-query {DELTA_MEASURE}: student vs baseline"))
        if not groups:
            self.add(Text("No evaluation to compare."))
            return
        for title, ev in groups:
            if ev.mean:  # a macro average has no per-query values; each collection has its figure
                continue
            label = "" if title is None else f" ({title})"
            if STUDENT not in ev.results:
                self.add(Text(f"No `{STUDENT}` system was evaluated{label}."))
                continue
            if ev.baseline is None or ev.baseline == STUDENT:
                self.add(Text(f"No baseline to compare with{label} (set `evaluate.baseline`)."))
                continue
            measure = DELTA_MEASURE if DELTA_MEASURE in ev.measures else ev.measures[0]
            missing = [s for s in (STUDENT, ev.baseline) if s not in ev.per_query]
            if missing:
                self.add(
                    Text(f"No per-query values for {missing}{label} (`evaluate/<system>/metrics.json`).")
                )
                continue
            d = query_deltas(ev.per_query[STUDENT], ev.per_query[ev.baseline], measure)
            if not len(d.deltas):
                self.add(Text(f"The student and {ev.baseline} share no query{label}."))
                continue
            name = f"{_slug(exp.name)}-deltas" + ("" if title is None else f"-{_slug(title)}")
            path, rel = self.figure(name)
            self.figures.append(plots.query_deltas(d, path, f"{exp.name}{label}", STUDENT, ev.baseline))
            self.add(
                Figure(rel, f"{measure} of the student minus {ev.baseline} per query, sorted{label}"),
                Text(
                    f"Against **{ev.baseline}**{label}: the student is better on {d.wins}, worse on {d.losses} and "
                    f"tied on {d.ties} of {len(d.deltas)} queries (mean Δ {measure} {d.mean:+.3f})."
                ),
            )


def build(
    workspace: Path, root: Path, experiments: list[str] | None, pairs: int, seed: int
) -> tuple[list[Block], list[Path]]:
    """The blocks of the report and the figures written under ``root / figures``."""
    found = discover(workspace, experiments)
    b = _Builder(workspace, root, pairs, seed)
    b.add(
        Heading(1, f"distillrank report: {workspace}"),
        Text(
            f"{len(found)} experiment(s): "
            + ", ".join(f"`{e.name}`" for e in found)
            + f". Generated {time.strftime('%Y-%m-%d %H:%M:%S')}."
        ),
    )
    evaluations = {
        e.name: read_evaluation(e.folder("evaluate"), e.manifest("evaluate"))
        if "evaluate" in e.stages
        else []
        for e in found
    }
    b.summary(evaluations)
    b.quality_speed(evaluations)
    for exp in found:
        b.add(Heading(2, exp.name))
        b.stages(exp)
        b.metrics(exp, evaluations[exp.name])
        b.training(exp)
        b.score_scales(exp)
        b.deltas(exp, evaluations[exp.name])
    return b.blocks, b.figures


def check_output(folder: Path, workspace: Path) -> None:
    """Refuse a report folder whose replacement could delete what distillrank did not write.

    Raises:
        ConfigError: ``folder`` is the workspace or holds it, or it exists and is not a report
            folder (a file, or a non-empty folder without the ``.distillrank-report`` marker;
            the default ``<workspace>/report`` of an older version, with a ``report.md``, counts
            as one).
    """
    target, root = folder.resolve(), workspace.resolve()
    if target == root or target in root.parents:
        raise ConfigError(
            f"refusing to write the report to {folder}: it is or contains the workspace {workspace}"
        )
    if not os.path.lexists(folder):
        return
    legacy = target == (root / REPORT_DIR).resolve() and (folder / "report.md").is_file()
    if folder.is_dir() and not folder.is_symlink():
        if (folder / REPORT_MARKER).is_file() or legacy or not any(folder.iterdir()):
            return
    raise ConfigError(
        f"refusing to replace {folder}: distillrank did not write it (no {REPORT_MARKER} marker); "
        "give a new or empty folder to --output, or remove it yourself"
    )


def run(
    workspace: str | Path = "runs",
    experiments: list[str] | None = None,
    html: bool = False,
    output: str | Path | None = None,
    pairs: int = 2000,
    seed: int = 0,
) -> ReportPaths:
    """Write the report of a workspace.

    Args:
        workspace: the workspace folder.
        experiments: only these experiments (a name also selects the sweep jobs under it).
        html: also write ``report.html``, one file with the figures embedded.
        output: the report folder (default ``<workspace>/report``); replaced whole when it is a
            report folder (see :func:`check_output`).
        pairs: the cap on sampled training triples for the teacher-vs-student figure.
        seed: of that sample.

    Raises:
        DistillrankError: the workspace is missing or holds no completed stage, or an
            experiment named is not there.
        ConfigError: ``output`` is not a folder distillrank may replace (:func:`check_output`).
    """
    workspace = Path(workspace)
    folder = Path(output) if output is not None else workspace / REPORT_DIR
    check_output(folder, workspace)
    discover(workspace, experiments)  # fail before replacing a previous report
    with atomic_dir(folder) as tmp:
        (tmp / REPORT_MARKER).write_text(
            "written by `distillrank report`; replaced whole by the next one\n", encoding="utf-8"
        )
        blocks, figures = build(workspace, tmp, experiments, pairs, seed)
        (tmp / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
        if html:
            (tmp / "report.html").write_text(
                to_html(blocks, tmp, f"distillrank report: {workspace}"), encoding="utf-8"
            )
    return ReportPaths(
        folder=folder,
        markdown=folder / "report.md",
        html=folder / "report.html" if html else None,
        figures=[folder / p.relative_to(tmp) for p in figures],
    )
