"""The ``distillrank`` command: Typer on the outside, Hydra inside each stage command.

Each stage command hands its extra arguments to a ``@hydra.main`` function, so everything Hydra
users expect works: ``distillrank train +exp=margin_mse train.lr=3e-5``, ``--cfg job``,
``-m`` for multirun, ``--info defaults``.

A stage command run as one of several SLURM tasks (``srun --ntasks=N``, ``hydra/launcher=slurm_ddp``)
first exports the ``torchrun`` variables from SLURM's (:mod:`distillrank.launch`), so the stages'
engines see the same ranks as under ``torchrun`` (docs/SCALE.md).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

import hydra
import typer
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from distillrank.config import conf_dir, register_configs
from distillrank.errors import DistillrankError

app = typer.Typer(
    help="distillrank: distil a strong, slow ranker into a small, fast one. "
    "Stage commands take Hydra overrides, e.g. `distillrank run +exp=margin_mse train.lr=3e-5`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
HYDRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": ["--help"]}
STAGE_ENV = "DISTILLRANK_STAGE"
SWEPT_ENV = "DISTILLRANK_SWEPT"  # the swept keys, ';'-separated, for jobs run in other processes

register_configs()


_SWEPT: list[str] = []  # keys swept by the current multirun command (set by _invoke)
_NOT_IN_NAME = {"exp", "experiment", "workspace", "force", "allow_external_targets"}
FULL_ERROR_ENV = "HYDRA_FULL_ERROR"


@contextlib.contextmanager
def _reported(exit_with: Callable[[int], BaseException]) -> Iterator[None]:
    """Errors of the block as one line on stderr, no traceback: a user error (:class:`DistillrankError`)
    exits with 2, any other exception with 1 and a hint; ``HYDRA_FULL_ERROR=1`` re-raises the latter
    (Hydra then prints the whole traceback)."""
    try:
        yield
    except DistillrankError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise exit_with(2) from None
    except Exception as err:  # noqa: BLE001 - the CLI's last line of defence
        if os.environ.get(FULL_ERROR_ENV) == "1":
            raise
        lines = str(err).strip().splitlines()
        detail = f": {lines[0]}" if lines else ""
        typer.secho(
            f"error: {type(err).__name__}{detail} (set {FULL_ERROR_ENV}=1 for the traceback)",
            fg=typer.colors.RED,
            err=True,
        )
        raise exit_with(1) from None


def _prepare(cfg: DictConfig) -> DictConfig:
    """Per-job adjustments made before a stage runs (the only place that reads Hydra's runtime).

    In multirun, each job gets its own experiment folder named by the values of the swept keys
    (``margin_mse/train.lr=1e-05``), so a sweep does not overwrite one model with another; stages
    the sweep does not change are found in the parent experiment by their key.
    """
    hc = HydraConfig.get()
    # a launcher's worker process (joblib, submitit) has not run _invoke: the keys come through
    # hydra.job.env_set, which Hydra applies in every job
    swept = _SWEPT or [k for k in os.environ.get(SWEPT_ENV, "").split(";") if k]
    if hc.mode != RunMode.MULTIRUN or not swept:
        return cfg
    values = dict(o.split("=", 1) for o in hc.overrides.task if "=" in o)
    suffix = ",".join(f"{k.lstrip('+~')}={values[k]}".replace("/", "_") for k in swept if k in values)
    if suffix:
        OmegaConf.set_struct(cfg, False)
        cfg.experiment = f"{cfg.experiment}/{suffix}"
        OmegaConf.set_struct(cfg, True)
    return cfg


def _hydra_stage(name: str, run: Callable[[DictConfig], object]) -> Callable[[], None]:
    @hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
    def task(cfg: DictConfig) -> None:
        from distillrank.launch import export_torch_env
        from distillrank.validation import check_config

        with _reported(SystemExit):  # Hydra would print a traceback; users get the message
            # in the process that runs the stage (a submitit task too): one of several SLURM tasks
            # becomes a torchrun rank (RANK, WORLD_SIZE, MASTER_ADDR...) before any engine reads them
            export_torch_env()
            prepared = _prepare(cfg)
            check_config(prepared)  # before the first stage runs and before anything is built
            run(prepared)

    task.__name__ = name
    return task


def _invoke(ctx: typer.Context, stage: str, run: Callable[[DictConfig], object]) -> None:
    from distillrank.validation import check_config, compose, dry_variants, swept_keys

    with _reported(typer.Exit):  # fail early, naming the valid keys and options, before Hydra starts a job
        _SWEPT[:] = [k for k in swept_keys(list(ctx.args)) if k.lstrip("+~") not in _NOT_IN_NAME]
        for dry in dry_variants(list(ctx.args)) or []:  # every swept value, before the first job
            check_config(compose(dry))
    argv, previous_stage = sys.argv, os.environ.get(STAGE_ENV)
    sys.argv = [f"distillrank {stage}", *ctx.args]
    if _SWEPT:
        sys.argv.append(f"+hydra.job.env_set.{SWEPT_ENV}='{';'.join(_SWEPT)}'")
    os.environ[STAGE_ENV] = stage  # names Hydra's job (conf/config.yaml: hydra.job.name)
    try:
        _hydra_stage(stage, run)()
    finally:
        sys.argv = argv
        if previous_stage is None:
            os.environ.pop(STAGE_ENV, None)
        else:
            os.environ[STAGE_ENV] = previous_stage


@app.command(context_settings=HYDRA_ARGS)
def queries(ctx: typer.Context) -> None:
    """Make synthetic training queries from the corpus (queries=title|ict|generator), teacher-filtered."""
    from distillrank.stages import queries as stage

    _invoke(ctx, "queries", stage.run)


@app.command(context_settings=HYDRA_ARGS)
def mine(ctx: typer.Context) -> None:
    """Mine candidates: BM25 top-k for every training query, positives from qrels, sampled negatives."""
    from distillrank.stages import mine as stage

    _invoke(ctx, "mine", stage.run)


@app.command(context_settings=HYDRA_ARGS)
def score(ctx: typer.Context) -> None:
    """Score every mined (query, passage) pair with the teacher (cached per teacher)."""
    from distillrank.stages import score as stage

    _invoke(ctx, "score", stage.run)


@app.command(context_settings=HYDRA_ARGS)
def train(ctx: typer.Context) -> None:
    """Train the student on the teacher's scores; saves a sentence-transformers folder."""
    from distillrank.stages import train as stage

    _invoke(ctx, "train", stage.run)


@app.command(context_settings=HYDRA_ARGS)
def evaluate(ctx: typer.Context) -> None:
    """Evaluate BM25, the teacher and the students on the test split (TREC runs + ir_measures)."""
    from distillrank.stages import evaluate as stage

    _invoke(ctx, "evaluate", stage.run)


@app.command("export-scores", context_settings=HYDRA_ARGS)
def export_scores(
    ctx: typer.Context,
    fmt: str = typer.Option(
        "trec", "--format", help="trec | jsonl | triples_tsv (Hofstätter's pos/neg triples)"
    ),
    output: str | None = typer.Option(
        None, "--output", help="file to write (default: in the score stage folder)"
    ),
) -> None:
    """Export the teacher scores of a completed score stage (TREC run, JSONL lists or triples TSV)."""
    from pathlib import Path

    from distillrank.stages import export_scores as stage

    def run(cfg: DictConfig) -> None:
        typer.echo(stage.run(cfg, fmt, Path(output) if output else None))

    _invoke(ctx, "export-scores", run)


@app.command("run", context_settings=HYDRA_ARGS)
def run_all(ctx: typer.Context) -> None:
    """Run (queries,) mine, score, train and evaluate in order, skipping stages that are up to date."""
    from distillrank import pipeline

    _invoke(ctx, "run", pipeline.run)


@app.command(context_settings=HYDRA_ARGS)
def validate(ctx: typer.Context) -> None:
    """Compose a config and check it (keys, options, every _target_'s signature) without running."""
    from distillrank.validation import check_config, compose

    with _reported(typer.Exit):
        cfg = compose(list(ctx.args))
        check_config(cfg)
    typer.echo(
        f"ok: experiment '{cfg.experiment}' composes, its names, targets and numeric settings are valid "
        "and every _target_ fits its signature"
    )


@app.command()
def report(
    workspace: str = typer.Argument("runs", help="The workspace folder (`workspace=` of the stages)."),
    experiment: list[str] = typer.Option(
        None,
        "--experiment",
        "-e",
        help="Only this experiment (repeatable; a name selects its sweep jobs too).",
    ),
    html: bool = typer.Option(False, "--html", help="Also write report.html with the figures embedded."),
    output: str = typer.Option(
        None, "--output", "-o", help="The report folder (default <workspace>/report), replaced whole."
    ),
    pairs: int = typer.Option(
        2000, "--pairs", help="Training triples sampled for the teacher-vs-student figure."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of that sample."),
) -> None:
    """Write a Markdown (and --html) report of a workspace: tables, curves, score scales, per-query deltas."""
    from distillrank.reporting.report import run as write_report

    with _reported(typer.Exit):
        paths = write_report(workspace, experiment or None, html=html, output=output, pairs=pairs, seed=seed)
    html_note = f" and {paths.html}" if paths.html else ""
    typer.echo(f"report: {paths.markdown}{html_note} ({len(paths.figures)} figures)")


@app.command()
def configs() -> None:
    """List every config group and its options (use them as `group=option`, experiments as `+exp=NAME`)."""
    from distillrank.validation import config_groups

    for group, options in config_groups().items():
        typer.echo(f"{group}: {', '.join(options)}")
