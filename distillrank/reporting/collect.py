"""Find the experiments of a workspace and read what their stages left on disk.

Layout (see :mod:`distillrank.workspace`): ``<workspace>/<experiment>/<stage>/manifest.json``, where
``<experiment>`` may be nested (a sweep job ``margin_mse/train.lr=0.001`` reuses the ``mine`` and
``score`` stages of its parent ``margin_mse``). Folders that hold no experiments (``_cache``,
``logs``, ``report``, ``multirun`` and hidden ones) are not searched.

Nothing here raises for a missing or unreadable stage artifact: the readers return ``None`` (or an
empty list) and the report says what is missing. Only an unusable workspace is an error.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillrank.artifacts import WORKSPACE_FOLDERS as SKIP_DIRS
from distillrank.errors import DistillrankError
from distillrank.pipeline import STAGE_NAMES as STAGES
from distillrank.pipeline import UPSTREAM  # stages a sweep job may take from its parent experiment
from distillrank.workspace import MANIFEST, Manifest, read_manifest

log = logging.getLogger(__name__)


@dataclass
class Experiment:
    """One experiment folder and its completed stages.

    ``stages`` maps a stage name to ``(manifest, folder)``; upstream stages found only in a parent
    experiment (a sweep job's ``mine`` / ``score``) are included, with the parent's folder.
    """

    name: str
    root: Path
    stages: dict[str, tuple[Manifest, Path]] = field(default_factory=dict)

    def folder(self, stage: str) -> Path | None:
        return self.stages[stage][1] if stage in self.stages else None

    def manifest(self, stage: str) -> Manifest | None:
        return self.stages[stage][0] if stage in self.stages else None


def _stage_folders(workspace: Path) -> dict[Path, dict[str, tuple[Manifest, Path]]]:
    """``{experiment folder: {stage: (manifest, stage folder)}}`` for every readable manifest."""
    found: dict[Path, dict[str, tuple[Manifest, Path]]] = {}
    stack = [workspace]
    while stack:
        folder = stack.pop()
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir())
        except OSError as err:
            log.warning("report: cannot list %s: %s", folder, err)
            continue
        for child in children:
            if child.name.startswith(".") or child.name in SKIP_DIRS:
                continue
            if child.name in STAGES and (child / MANIFEST).is_file():
                manifest = read_manifest(child)
                if manifest is not None:
                    found.setdefault(folder, {})[child.name] = (manifest, child)
                continue  # a stage folder holds outputs (model/, per-system folders), not experiments
            stack.append(child)
    return found


def discover(workspace: str | Path, only: list[str] | None = None) -> list[Experiment]:
    """The experiments of a workspace, sorted by name.

    An experiment is a folder with at least one completed stage. A folder whose only stages are
    upstream ones (``mine``, ``score``) is left out when experiments below it (sweep jobs) use them.

    Args:
        workspace: the workspace folder (``runs`` by default on the command line).
        only: experiment names to keep; a name also selects the experiments nested under it.

    Raises:
        DistillrankError: the workspace is not a folder, holds no completed stage, or ``only``
            names no experiment of it.
    """
    workspace = Path(workspace)
    if not workspace.is_dir():
        raise DistillrankError(
            f"workspace {workspace} is not a folder; pass the folder given as `workspace=` to the stages "
            "(default: runs)"
        )
    found = _stage_folders(workspace)
    if not found:
        raise DistillrankError(
            f"workspace {workspace} holds no completed stage (no <experiment>/<stage>/{MANIFEST}); "
            "run `distillrank run` first"
        )
    experiments: list[Experiment] = []
    for folder in sorted(found):
        stages = dict(found[folder])
        for parent in folder.relative_to(workspace).parents:  # nearest parent first
            for stage, entry in found.get(workspace / parent, {}).items():
                if stage in UPSTREAM:
                    stages.setdefault(stage, entry)
        experiments.append(Experiment(folder.relative_to(workspace).as_posix(), folder, stages))
    has_children = {p.as_posix() for e in experiments for p in Path(e.name).parents if str(p) != "."}
    experiments = [
        e for e in experiments if not (e.name in has_children and set(found[e.root]) <= set(UPSTREAM))
    ]
    if only:
        names = [e.name for e in experiments]
        unknown = [n for n in only if not any(x == n or x.startswith(n.rstrip("/") + "/") for x in names)]
        if unknown:
            raise DistillrankError(f"no experiment {unknown} in {workspace}; its experiments are {names}")
        experiments = [
            e for e in experiments if any(e.name == n or e.name.startswith(n.rstrip("/") + "/") for n in only)
        ]
    return experiments


def read_json(path: Path) -> Any | None:
    """A JSON file's content, or None when it is missing or unreadable (logged)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        log.warning("report: ignoring unreadable %s: %s", path, err)
        return None


def read_train_log(path: Path) -> list[dict[str, Any]]:
    """The records of a ``train_log.jsonl`` (``step``, ``loss``, ``lr``, ``grad_norm``, maybe dev
    metrics), in file order; unreadable lines are skipped with a warning naming the line."""
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.warning("report: %s line %d is not JSON, skipped", path, number)
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


@dataclass
class Evaluation:
    """What ``evaluate`` wrote for one collection (or the mean over several): results per system.

    ``results`` is ``{system: {"metrics": {measure: value}, "passages_per_s", "latency",
    "parameters", "disk_mb", "significance"?}}`` as in ``evaluate/metrics.json``;
    ``per_query`` is ``{system: {qid: {measure: value}}}`` from ``evaluate/<system>/metrics.json``
    (``evaluate/<collection>/<system>/metrics.json`` for an extra collection). ``mean`` marks the
    macro average over several collections, which has no per-query values and no significance.
    """

    folder: Path
    results: dict[str, dict[str, Any]]
    measures: list[str]
    baseline: str | None
    alpha: float
    header: str | None = None
    per_query: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    mean: bool = False

    def significance(self) -> dict[str, dict[str, Any]] | None:
        """``{system: {measure: test result}}`` for the systems compared with the baseline, or None."""
        if self.mean:
            return None
        marks = {n: r["significance"] for n, r in self.results.items() if r.get("significance")}
        return marks if (marks or self.baseline) else None

    def bm25_significance(self) -> dict[str, dict[str, Any]] | None:
        """``{system: {measure: test result}}`` of the hybrid systems against ``bm25`` (kept when the
        baseline is another system, as ``significance_bm25``), or None."""
        if self.mean:
            return None
        marks = {n: r["significance_bm25"] for n, r in self.results.items() if r.get("significance_bm25")}
        return marks or None


def _is_results(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(v, dict) and "metrics" in v for v in obj.values())
    )


def _groups(data: Any, folder: Path) -> list[tuple[str | None, dict, Path | None, str | None, bool]]:
    """``(title, results, folder of the per-system results, header, is_mean)`` per table of a
    ``metrics.json``: ``{system: result}`` (one collection), or ``{"collections": {name: {"split",
    "queries", "passages", "folder", "systems"}}, "mean": {"over", "systems"}}`` (several)."""
    if _is_results(data):
        return [(None, data, folder, None, False)]
    if not isinstance(data, dict) or not isinstance(data.get("collections"), dict):
        return []
    groups: list[tuple[str | None, dict, Path | None, str | None, bool]] = []
    for name, entry in data["collections"].items():
        if not isinstance(entry, dict) or not _is_results(entry.get("systems")):
            log.warning("report: %s: collection %r has no systems, skipped", folder / "metrics.json", name)
            continue
        split = entry.get("split", "?")
        header = f"{name} / {split}: {entry.get('queries', '?')} queries"
        if isinstance(entry.get("passages"), int):
            header += f", {entry['passages']:,} passages"
        groups.append((f"{name} / {split}", entry["systems"], folder / str(entry.get("folder", name)), header, False))
    mean = data.get("mean")
    if isinstance(mean, dict) and _is_results(mean.get("systems")):
        over = [str(c) for c in mean.get("over") or []]
        header = (
            f"Macro average over {len(over)} collections ({', '.join(over)}): each collection weighs the "
            "same; significance is tested within each collection only."
        )
        groups.append((f"mean over {len(over)} collections", mean["systems"], None, header, True))
    return groups


def read_evaluation(folder: Path, manifest: Manifest | None) -> list[tuple[str | None, Evaluation]]:
    """The evaluations in an ``evaluate`` folder: one per collection, then the mean over them.

    A ``metrics.json`` of ``{system: result}`` (one collection) gives one evaluation (title None,
    header from the first line of ``results.md``). With ``evaluate.collections`` it is
    ``{"collections": {name: {..., "folder", "systems"}}, "mean": {...}}`` and gives one evaluation
    per collection (titled ``name / split``, per-query values from ``evaluate/<folder>/<system>/``)
    and a last one for the macro mean (``mean=True``). An unreadable file gives an empty list.
    """
    data = read_json(folder / "metrics.json")
    if data is None:
        return []
    groups = _groups(data, folder)
    config = (manifest.config.get("evaluate") if manifest else None) or {}
    counts = manifest.counts if manifest else {}
    out = []
    for title, results, sys_root, header, is_mean in groups:
        measures = [str(m) for m in config.get("measures") or []]
        for res in results.values():
            measures += [m for m in res["metrics"] if m not in measures]
        measures = [m for m in measures if any(m in r["metrics"] for r in results.values())]
        baseline = counts.get("baseline", config.get("baseline"))
        evaluation = Evaluation(
            folder=folder,
            results=results,
            measures=measures,
            baseline=baseline if baseline in results else None,
            alpha=float(config.get("alpha", 0.05)),
            header=header,
            mean=is_mean,
        )
        results_md = folder / "results.md"
        if title is None and results_md.is_file():
            first = results_md.read_text(encoding="utf-8").splitlines()[:1]
            evaluation.header = first[0].strip() if first and not first[0].startswith("|") else None
        for system in results if sys_root is not None else ():
            saved = read_json(sys_root / system / "metrics.json")
            if isinstance(saved, dict) and isinstance(saved.get("per_query"), dict):
                evaluation.per_query[system] = saved["per_query"]
        out.append((title, evaluation))
    return out
