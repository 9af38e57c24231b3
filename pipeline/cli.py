"""The ``pipeline`` command: parses arguments and calls functions that tests call too.

Exit codes: 0 success; 1 a failure explained on stderr (``error: ...``), or ``status --check``
found a stale stage; 2 wrong usage (unknown option or stage; ``error: ...`` after the usage
line); 3 finished, but some inputs were left out: ``pipeline run``'s dataset view leaves out
files that could not be used (named in the summary and skipped.csv), or ``pipeline predict``
could not read some of its files (when it could read none: 1); 130 interrupted by Ctrl-C
(finished work is kept). Messages for people go to stderr as ``error: ...`` and
``warning: <WarningClass>: ...``; stdout carries the results (JSON with ``--json``).
"""

from __future__ import annotations

import sys
import textwrap
import warnings
from pathlib import Path

import click

from cache import CacheError

from . import metric_keys
from .config import PipelineConfig, load_cache_config, load_config
from .context import RunContext
from .errors import PipelineError
from .json_values import json_text
from .runner.registry import all_stages, stage_names, unknown_stages

EXIT_FAILED = 1
EXIT_FILES_SKIPPED = 3  # finished, but some image files were left out


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {category.__name__}: {message}", err=True)


def _echo_json(payload: object) -> None:
    """``payload`` as indented JSON on stdout."""
    click.echo(json_text(payload))


def _load(config_path: str, overrides: tuple[str, ...]) -> PipelineConfig:
    return load_config(Path(config_path), overrides)


def _stages_help() -> str:
    """One paragraph per declared stage, for ``pipeline run --help``."""
    blocks = []
    for stage in all_stages():
        lines = textwrap.wrap(stage.help, 63)
        blocks.append("\n".join([f"{stage.name:<8} {lines[0]}", *(f"{'':9}{line}"
                                                                  for line in lines[1:])]))
    return "\n".join(blocks)


config_option = click.option(
    "-c", "--config", "config_path", default="stages.yaml", show_default=True,
    type=click.Path(dir_okay=False), help="The pipeline's stages.yaml.")
json_option = click.option(
    "--json", "as_json", is_flag=True,
    help="Print JSON (schema in the docs' outputs page) instead of text.")
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a stages.yaml key, value read as YAML (repeatable), "
         "e.g. --set data.image_size=[224,224] --set backbone.weights=null.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vgg16-feature-pipeline", prog_name="pipeline")
def cli() -> None:
    """Frozen VGG16 features, extracted once into a content-addressed HDF5 cache.

    \b
    Typical use:
      pipeline run extract            extract features of every new image
      pipeline run heads              train and sweep heads on the cached features
      pipeline cache ls               fingerprints in the cache, entries, bytes
      pipeline info backbone          VGG16 layer table and parameter counts

    Configuration comes from stages.yaml (-c to choose another); any key can be
    overridden with --set key.sub=value.
    """


RUN_HELP = f"""Run STAGES ({", ".join(stage_names())}, or all) and the stages they depend
on, in that order, writing a run folder under runs.dir.

A stage whose inputs and parameters are unchanged since it last succeeded (as recorded in
pipeline.lock beside stages.yaml) and whose outputs exist is skipped and reported as up to
date; --force runs the named stages anyway. `pipeline status` says which stages are stale
and why.

\b
{_stages_help()}
"""


@cli.command(help=RUN_HELP)
@click.argument("stages", nargs=-1, required=True)
@config_option
@set_option
@click.option("--scheduler", metavar="ADDRESS",
              help="Where sweeps and extraction run: auto, local, synchronous, or a dask scheduler "
                   "address such as tcp://host:8786, whose workers then extract and fit "
                   "(default: cluster.scheduler of stages.yaml).")
@click.option("--force", is_flag=True,
              help="Run the named stages even when they are up to date.")
@click.option("--rehash", is_flag=True,
              help="Read every image to hash it again, even those whose size and time of "
                   "change are what they were when last hashed (the hash state in the "
                   "cache folder's index.sqlite).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def run(stages: tuple[str, ...], config_path: str, overrides: tuple[str, ...],
        scheduler: str | None, force: bool, rehash: bool, progress: bool) -> int:
    problem = unknown_stages(stages)
    if problem:
        raise click.UsageError(problem)
    if scheduler is not None:
        overrides = (*overrides, f"cluster.scheduler={scheduler}")
    ctx = RunContext(_load(config_path, overrides), rehash=rehash)
    from .runner.execute import run_targets
    run_folder, report = run_targets(ctx, list(stages), force=force, progress=progress)
    click.echo(report)
    click.echo(f"run folder: {run_folder.path}")
    skipped = run_folder.metrics.get(metric_keys.EXTRACT_IMAGES_SKIPPED, 0)
    if skipped:
        click.echo(f"finished, but {skipped} file(s) were left out of the dataset view "
                   f"(exit code {EXIT_FILES_SKIPPED})", err=True)
        return EXIT_FILES_SKIPPED
    return 0


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--head", "head_folder", type=click.Path(file_okay=False, path_type=Path),
              help="A trained head: runs/<run>/heads/<name> (default: the best head of the "
                   "newest heads run).")
@click.option("--model", "model_folder", type=click.Path(file_okay=False, path_type=Path),
              help="An end-to-end model instead: runs/<run>/finetune or runs/<run>/scratch.")
@click.option("-k", "--top-k", default=3, show_default=True, type=click.IntRange(min=1),
              help="How many classes to show per image.")
@json_option
@config_option
@set_option
def predict(paths: tuple[Path, ...], head_folder: Path | None, model_folder: Path | None,
            top_k: int, as_json: bool, config_path: str, overrides: tuple[str, ...]) -> int:
    """Classify image files (or every image under folders) with a trained head or model.

    \b
    Each line: the file, its top classes with probabilities, and where its features came
    from: `cache` (already extracted: no decoding, no convnet), `backbone` (computed now;
    nothing is written to the cache) or `model` (an end-to-end model). Files that cannot be
    read or decoded get an error line and the others are still classified; the exit code is
    then 3, or 1 when no file could be classified.
    """
    from .data.scan import IMAGE_EXTENSIONS
    from .predict import (
        format_predictions,
        image_files,
        newest_best_head,
        predict_with_head,
        predict_with_model,
    )
    if head_folder and model_folder:
        raise click.UsageError("give --head or --model, not both")
    ctx = RunContext(_load(config_path, overrides))
    files = image_files(list(paths))
    if not files:
        raise PipelineError(f"no image files under {', '.join(map(str, paths))} (image files "
                            f"end in {', '.join(IMAGE_EXTENSIONS)})")
    if model_folder:
        results = predict_with_model(ctx, model_folder, files, top_k)
    else:
        results = predict_with_head(ctx, head_folder or newest_best_head(ctx.config.runs.dir),
                                    files, top_k)
    click.echo(format_predictions(results, as_json))
    failed = sum(1 for r in results if r.error)
    if failed == len(results):
        raise PipelineError(f"none of the {failed} file(s) could be classified")
    if failed:
        click.echo(f"finished, but {failed} of {len(results)} file(s) could not be "
                   f"classified (exit code {EXIT_FILES_SKIPPED})", err=True)
        return EXIT_FILES_SKIPPED
    return 0


@cli.command()
@click.option("--split", default="train", show_default=True,
              type=click.Choice(["train", "validation", "test"]), help="The split to write.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write: .parquet (pyarrow) or .npz (numpy).")
@click.option("--parts", metavar="PART[,PART...]",
              help="What each row holds, as a head's features: flatten, gap, gmp of the "
                   "output, or taps, comma-separated (default: every tap, else flatten).")
@click.option("--normalize", default="none", show_default=True,
              type=click.Choice(["none", "l2", "power"]),
              help="Per part, before the parts are put side by side.")
@config_option
@set_option
def export(split: str, output: Path, parts: str | None, normalize: str, config_path: str,
           overrides: tuple[str, ...]) -> None:
    """Write a split's cached features to a file other tools read.

    One row per image of the split, in the dataset view's order: path, sha256, label, the
    label's index and the features (float32). Streams a chunk of rows at a time, so an export
    larger than memory works; reads the cache only (run `pipeline run extract` first).
    """
    from .export import export_features
    ctx = RunContext(_load(config_path, overrides), allow_download=False)
    chosen = [part.strip() for part in parts.split(",") if part.strip()] if parts else None
    click.echo(export_features(ctx, split, output, chosen, normalize).summary())


@cli.command()
@click.argument("stages", nargs=-1)
@click.option("--check", is_flag=True,
              help="Exit with 1 when a stage shown is stale (for scripts and CI).")
@json_option
@config_option
@set_option
def status(stages: tuple[str, ...], check: bool, as_json: bool, config_path: str,
           overrides: tuple[str, ...]) -> int:
    """Say, per stage (default: every stage; or the STAGES named), whether it is up to date or
    stale, and why.

    Compares each stage's inputs (data folder, backbone, dataset view, warm-start head),
    parameters and outputs with what pipeline.lock recorded when it last succeeded, and
    names what changed (for parameters: the key, old and new value). Reads only: it never
    downloads weights or builds a model (missing weights make the stages that need them
    stale, with the reason).
    """
    problem = unknown_stages(stages) if stages else None
    if problem:
        raise click.UsageError(problem)
    from .runner.plan import format_status, pipeline_status, status_json
    states = pipeline_status(RunContext(_load(config_path, overrides), allow_download=False))
    if stages and "all" not in stages:
        states = [state for state in states if state.stage in stages]
    if as_json:
        _echo_json(status_json(states))
    else:
        click.echo(format_status(states))
    return EXIT_FAILED if check and not all(s.up_to_date for s in states) else 0


@cli.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="The HTML file to write (default: report.html in runs.dir).")
@config_option
@set_option
def report(output: Path | None, config_path: str, overrides: tuple[str, ...]) -> None:
    """Write one self-contained HTML report of the latest results (figures inlined).

    Sections: data (images per split and class, skipped files, duplicates and leakage),
    extraction, the heads leaderboard, training curves raw and smoothed, confusion
    matrices, and the recipes compared. Opens nothing by itself, downloads nothing.
    """
    from .report import write_report
    ctx = RunContext(_load(config_path, overrides), allow_download=False)
    click.echo(write_report(ctx, output or ctx.config.runs.dir / "report.html").summary())


@cli.command("runs")
@json_option
@config_option
@set_option
def runs_command(as_json: bool, config_path: str, overrides: tuple[str, ...]) -> None:
    """List the run folders under runs.dir, oldest first, with status and headline metrics.

    A run is ok, failed, interrupted or unfinished (still running, or killed); the columns
    are images extracted and new, the best head with its validation and test accuracy, and
    the finetune and scratch test accuracy, each from the run's metrics.json.
    """
    from .runs import format_runs, list_runs, runs_json
    config = _load(config_path, overrides)
    runs = list_runs(config.runs.dir)
    if as_json:
        _echo_json(runs_json(runs, config.runs.dir))
    else:
        click.echo(format_runs(runs, config.runs.dir))


@cli.group()
def info() -> None:
    """Describe parts of the pipeline."""


@info.command("backbone")
@config_option
@set_option
def info_backbone(config_path: str, overrides: tuple[str, ...]) -> None:
    """Print the backbone's layer table: shapes, parameters, trainable or frozen, totals."""
    ctx = RunContext(_load(config_path, overrides))
    spec, config = ctx.spec, ctx.config
    from .backbone.model import build_feature_extractor
    from .nn.layer_table import format_layer_table, layer_table
    model = build_feature_extractor(spec)
    weights = config.backbone.weights or f"random (seed {config.backbone.seed})"
    click.echo(f"VGG16 conv base, weights {weights}, input {spec.input_shape}, cut at "
               f"{spec.output_layer}, fingerprint {ctx.fingerprint.id}")
    click.echo(format_layer_table(layer_table(model)))


@cli.group()
def cache() -> None:
    """Inspect the feature cache."""


def _cache_dir(config_path: str, overrides: tuple[str, ...], cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    return load_cache_config(Path(config_path), overrides).dir


cache_dir_option = click.option("--dir", "cache_dir", type=click.Path(file_okay=False),
                                 help="Cache folder (default: cache.dir of stages.yaml).")


@cache.command("ls")
@json_option
@config_option
@set_option
@cache_dir_option
def cache_ls(as_json: bool, config_path: str, overrides: tuple[str, ...],
             cache_dir: str | None) -> None:
    """One line per backbone fingerprint: weights, input, entries, shards, bytes."""
    from .cache_commands import cache_json, format_store_list
    folder = _cache_dir(config_path, overrides, cache_dir)
    if as_json:
        _echo_json(cache_json(folder))
    else:
        click.echo(format_store_list(folder))


@cache.command("info")
@click.argument("fingerprint", required=False)
@json_option
@config_option
@set_option
@cache_dir_option
def cache_info(fingerprint: str | None, as_json: bool, config_path: str,
               overrides: tuple[str, ...], cache_dir: str | None) -> None:
    """Details of one fingerprint (default: every fingerprint) and its dataset views."""
    from .cache_commands import cache_json, format_store_info
    folder = _cache_dir(config_path, overrides, cache_dir)
    if as_json:
        _echo_json(cache_json(folder, fingerprint, views=True))
    else:
        click.echo(format_store_info(folder, fingerprint))


@cache.command("reindex")
@click.argument("fingerprint", required=False)
@config_option
@set_option
@cache_dir_option
def cache_reindex(fingerprint: str | None, config_path: str, overrides: tuple[str, ...],
                  cache_dir: str | None) -> None:
    """Index the cache's entries again from each fingerprint's manifest.

    The entry index (index.sqlite in the cache folder) answers which images are cached
    without reading every entry; it follows the manifests by itself. This rebuilds it from
    scratch, should it ever be in doubt. Reads the manifests only; features are untouched.
    """
    from .cache_commands import reindex_cache
    for name, entries in reindex_cache(_cache_dir(config_path, overrides, cache_dir),
                                       fingerprint):
        click.echo(f"{name}: {entries:,} entries indexed")


@cache.command("verify")
@click.argument("fingerprint", required=False)
@config_option
@set_option
@cache_dir_option
def cache_verify(fingerprint: str | None, config_path: str, overrides: tuple[str, ...],
                 cache_dir: str | None) -> None:
    """Check every cached entry against the checksum recorded when it was written.

    Lists damaged entries (missing or unreadable shard, truncated shard, wrong row, flipped
    bytes) and exits with 1 when there are any; the next `pipeline run extract` computes
    them again. Safe while an extraction runs: committed shards never change.
    """
    from .cache_commands import format_verify, raise_if_damaged, verify_cache
    folder = _cache_dir(config_path, overrides, cache_dir)
    reports = verify_cache(folder, fingerprint)
    click.echo(format_verify(reports, folder))
    raise_if_damaged(reports)


@cache.command("gc")
@click.option("--apply", is_flag=True,
              help="Remove the entries (without it: a dry run that only reports).")
@click.argument("fingerprint", required=False)
@config_option
@set_option
@cache_dir_option
def cache_gc(apply: bool, fingerprint: str | None, config_path: str,
             overrides: tuple[str, ...], cache_dir: str | None) -> None:
    """Remove cache entries that no dataset view references (dry run by default).

    Shows entries and bytes per fingerprint. With --apply, takes each fingerprint's write
    lock (waiting cache.lock_timeout seconds for a running extraction), deletes shards
    left with no entry and rewrites the others with the rows they keep.
    """
    from .cache_commands import collect_garbage, format_garbage
    folder = _cache_dir(config_path, overrides, cache_dir)
    lock_timeout = 0.0 if cache_dir else \
        load_cache_config(Path(config_path), overrides).lock_timeout
    click.echo(format_garbage(collect_garbage(folder, apply, lock_timeout, fingerprint),
                              folder))


def _show_click_error(exc: click.ClickException) -> None:
    """click's errors in the pipeline's one style: the usage line and help hint for wrong
    usage, then ``error: ...`` (click's own ``Error: ...`` would be a second style)."""
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        click.echo(ctx.get_usage(), err=True)
        click.echo(f"Try '{ctx.command_path} {ctx.help_option_names[0]}' for help.", err=True)
    click.echo(f"error: {exc.format_message()}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code."""
    shown_before = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        # File names that are not valid UTF-8 must not crash a print at the end of an hour.
        if hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(errors="backslashreplace")
        code = cli.main(args=argv, prog_name="pipeline", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        click.echo("interrupted: finished batches were saved to the cache; run again to resume",
                   err=True)
        return 130
    except click.ClickException as exc:
        _show_click_error(exc)
        return exc.exit_code
    except (PipelineError, CacheError) as exc:
        click.echo(f"error: {'; '.join(str(exc).splitlines())}", err=True)
        return EXIT_FAILED
    except OSError as exc:  # a folder that is a file, a full disk, no permission
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {where}{exc.strerror or exc}", err=True)
        return EXIT_FAILED
    except MemoryError:
        click.echo("error: out of memory; lower stages.extract.batch_size or data.image_size",
                   err=True)
        return EXIT_FAILED
    finally:
        warnings.showwarning = shown_before
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
