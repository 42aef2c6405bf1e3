"""The ``humo`` command: one subcommand per pipeline stage, each calling that stage's ``run()``.

Every subcommand takes ``--params PATH`` and any number of dotted ``key=value`` overrides, loads params.yaml
once through :func:`humo.config.load_params`, and hands the stage only the sections it uses (the table
:data:`STAGE_SECTIONS` says which; a test keeps it in step with ``dvc.yaml``).

Examples::

    humo synth                          # write SynthTalk into data/raw
    humo synth synth.num_clips=16       # the same with an override
    humo --version
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from humo import __version__
from humo.config import DEFAULT_PARAMS_PATH, ConfigError, Params, load_params

logger = logging.getLogger(__name__)

STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "synth": ("synth", "paths"),
    "curate": ("curate", "paths"),
}
"""Command -> the params.yaml sections its ``run()`` receives (and that its DVC stage lists under ``params``)."""

USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, FileExistsError)
"""Errors caused by input or settings: reported in one line with exit code 2, without a traceback."""

app = typer.Typer(
    name="humo",
    help="HuMo as MLOps software: data, training, evaluation, registry, serving and batch generation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read.")]
Overrides = Annotated[
    list[str] | None, typer.Argument(help="Dotted overrides applied on top of params.yaml, e.g. synth.num_clips=8.")
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"humo {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """HuMo as MLOps software."""


def _load(params_path: Path, overrides: list[str] | None) -> Params:
    """Load params once and configure logging from them; exits with code 2 on a settings error."""
    from humo.log import setup_logging

    try:
        params = load_params(params_path, overrides or ())
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    setup_logging(params.logging.level)
    return params


def _fail(err: Exception) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(2)


@app.command()
def synth(params: ParamsOption = DEFAULT_PARAMS_PATH, overrides: Overrides = None) -> None:
    """Render the SynthTalk dataset into paths.raw (HuMoSet layout)."""
    p = _load(params, overrides)
    from humo.data import synthtalk

    try:
        summary = synthtalk.run(cfg=p.synth, out_dir=p.paths.raw)
    except USER_ERRORS as err:
        raise _fail(err) from None
    logger.info("%s", summary)


@app.command()
def curate(params: ParamsOption = DEFAULT_PARAMS_PATH, overrides: Overrides = None) -> None:
    """Curate raw videos into clean, synchronised clips: artifacts/curate/manifest.parquet and rejects.jsonl."""
    p = _load(params, overrides)
    from humo.data import curate as curate_stage

    try:
        summary = curate_stage.run(cfg=p.curate, paths=p.paths)
    except USER_ERRORS as err:
        raise _fail(err) from None
    logger.info("%s", summary)
