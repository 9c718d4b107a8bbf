"""The ``inferkit`` command line (typer + rich).

A user's mistake ends with one line ``error: ...``, exit code 2, and nothing written.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import typer

try:  # typer >= 0.20 vendors click
    from typer import _click as click
except ImportError:  # pragma: no cover
    import click
from rich.console import Console
from rich.table import Table

from inferkit import distributed
from inferkit.cli_data import data_app
from inferkit.errors import TrainingInterrupted, UserError
from inferkit.loggers import check_logger
from inferkit.options import INT64_MAX, INT64_MIN, first_line, is_out_of_memory, parse_assignments, suggest
from inferkit.registry import list_plugins
from inferkit.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    PluginSpec,
    RunSpec,
    TrainConfig,
    build_objects,
    check_model_trusted,
    resolve_device,
    restore_checkpoint,
)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Short-run inference and learning for deep latent-variable models.")
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)

_OPT_HELP = "key=value option for the {} plugin (repeatable)"
_SAVED_MODEL_HELP = "the run's model again, to import the pyro:MODULE:FUNCTION model its config.json names"
_TRUST_HELP = ("import the pyro:MODULE:FUNCTION model the run's config.json names (only for run folders you "
               "trust)")


PLUGIN_TABLES = ("model", "sampler", "tuner", "data")
CONFIG_TABLES = (*PLUGIN_TABLES, "train")
PLUGIN_KEYS = ("name", "options")
MAX_SAMPLES = 4096


def _read_toml(path: Path) -> dict[str, Any]:
    """The TOML file ``path``, checked by :func:`_check_config`; an unreadable, non-UTF-8 or invalid
    file is a :class:`UserError`."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; give the path of a TOML file with --config")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UserError(f"config file {path} cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                        f"position {exc.start}); save it as UTF-8") from None
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML ({exc})") from None
    _check_config(config, path)
    return config


def _check_config(config: dict[str, Any], path: Path) -> None:
    """A :class:`UserError` naming the first table or key of a config file that nothing reads, or
    a plugin table whose ``name`` or ``options`` has the wrong type (``[train]``'s keys are
    checked with the training settings)."""
    tables = ", ".join(f"[{t}]" for t in CONFIG_TABLES)
    for key, value in config.items():
        if key not in CONFIG_TABLES:
            raise UserError(f"config file {path}: unknown table or key {key!r}{suggest(key, CONFIG_TABLES)}; "
                            f"the tables are {tables}")
        if not isinstance(value, dict):
            raise UserError(f"config file {path}: {key} must be a table [{key}], got {value!r}")
    for table in PLUGIN_TABLES:
        section = config.get(table, {})
        for key in section:
            if key not in PLUGIN_KEYS:
                raise UserError(f"config file {path}: key {key!r} in [{table}] is not read; [{table}] takes "
                                f"name and options, so write plugin options under [{table}.options] "
                                f"({key} = ... there)")
        if "name" in section and not (isinstance(section["name"], str) and section["name"].strip()):
            raise UserError(f"config file {path}: [{table}] name must be a plugin name in quotes "
                            f"(see `inferkit list`), got {section['name']!r}")
        if not isinstance(section.get("options", {}), dict):
            raise UserError(f"config file {path}: [{table}] options must be a table [{table}.options] of "
                            f"key = value, got {section['options']!r}")


NO_MODEL = ("give a model with --model (or [model] name in --config): e.g. --model ladder, the papers' "
            "multi-layer generator, from the inferkit-ladder plugin (pip install -e plugins/ladder in a source "
            "checkout), or --model linear-gaussian (built in); `inferkit list` shows what is installed")


def _plugin_from(config: dict[str, Any], key: str, name: str | None, default: str | None, options: list[str],
                 flag: str) -> PluginSpec:
    """The ``key`` plugin: ``name`` given on the command line, else the config file's, else
    ``default`` (``None``: the user must name one); options from the config file updated by the
    ``flag`` (``--model-opt``) ones. A data set's ``data_dir`` is made absolute, so the run folder
    works from any directory."""
    section = config.get(key, {})
    chosen = name if name is not None else section.get("name", default)
    if chosen is None:
        raise UserError(NO_MODEL)
    if not chosen.strip():
        raise UserError(f"{flag.removesuffix('-opt')} is empty; name a {key} plugin (see `inferkit list`)")
    merged = dict(section.get("options", {}))
    merged.update(parse_assignments(options, flag))
    if key == "data" and isinstance(merged.get("data_dir"), str) and merged["data_dir"].strip():
        merged["data_dir"] = _absolute(merged["data_dir"])
    return PluginSpec(name=chosen, options=merged)


def _absolute(path: str | os.PathLike[str]) -> str:
    """``path`` with ``~`` expanded, made absolute against the current directory."""
    return str(Path(path).expanduser().resolve())


def check_output_folder(folder: Path, flag: str) -> None:
    """A :class:`UserError` unless ``folder`` is a folder this process can write into, or can be
    created inside one (its nearest existing ancestor)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == folder else f"lies inside the file {existing}"
        raise UserError(f"{flag} {folder} {what}, not a folder; give the path of a new or empty folder")
    if not writable(existing):
        raise UserError(f"{flag} {folder}: cannot write into {existing} (read-only); give a folder you can "
                        "write to")


def check_output_file(path: Path, flag: str) -> None:
    """A :class:`UserError` unless ``path`` can be written: not a folder, in an existing writable folder."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name such as {path / 'samples.png'}")
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: folder {parent} does not exist; create it first or give another path")
    if not writable(parent):
        raise UserError(f"{flag} {path}: cannot write into {parent} (read-only); give a path you can write to")


def writable(folder: Path) -> bool:
    """True when this process may create files in the existing ``folder``."""
    return os.access(folder, os.W_OK | os.X_OK)


def _load_run(run: Path, model_name: str | None = None, trust_code: bool = False):
    """Rebuild a run folder's objects and load its checkpoint (``model_name``, ``trust_code``: the
    user's ``--model`` and ``--trust-code``, see :meth:`RunSpec.load`)."""
    spec = RunSpec.load(run, model=model_name, trust_code=trust_code)
    data, model, sampler, tuner = build_objects(spec, resolve=False)
    path = run / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"{run} has no checkpoint yet; train it with `inferkit run` (or --resume) first")
    sampler.setup(model, num_examples=len(data.train))  # the trainer's hook: encoders, chain stores
    state = restore_checkpoint(path, "cpu", model, sampler)
    return spec, data, model, sampler, tuner, state


@app.command()
def run(
    model: str | None = typer.Option(None, help="model plugin (see `inferkit list`), e.g. ladder; with "
                                     "--resume, the run's model again (to import a pyro: model)"),
    sampler: str | None = typer.Option(None, help="sampler plugin [default: shortrun]"),
    tuner: str | None = typer.Option(None, help="tuner plugin [default: kl-grid; fixed for samplers the KL "
                                     "objective does not apply to (abp, vae, lvae)]"),
    data: str | None = typer.Option(None, help="dataset plugin [default: shapes, built in]"),
    data_dir: Path | None = typer.Option(None, help="folder with the data set's files (e.g. MNIST IDX)"),
    model_opt: list[str] = typer.Option([], help=_OPT_HELP.format("model")),
    sampler_opt: list[str] = typer.Option([], help=_OPT_HELP.format("sampler")),
    tuner_opt: list[str] = typer.Option([], help=_OPT_HELP.format("tuner")),
    data_opt: list[str] = typer.Option([], help=_OPT_HELP.format("dataset")),
    train_opt: list[str] = typer.Option([], help="key=value training setting (see TrainConfig)"),
    config: Path | None = typer.Option(None, help="TOML file with the tables model, sampler, tuner, data, "
                                                  "train (docs/getting-started.md)"),
    iterations: int | None = typer.Option(None, help="training iterations"),
    batch_size: int | None = typer.Option(None, help="examples per iteration"),
    tune_every: int | None = typer.Option(None, help="run the tuner every T_s iterations (0: never)"),
    seed: int | None = typer.Option(None, help="random seed (same seed, same numbers on CPU)"),
    device: str | None = typer.Option(None, help="cpu or cuda"),
    precision: str | None = typer.Option(None, help="float32 or bf16 (inference and loss under bfloat16 "
                                         "autocast, latents float32; docs/gpu.md) [default: float32]"),
    out: Path | None = typer.Option(None, help="run folder to create [default: runs/<time>-<model>-<sampler>]"),
    resume: Path | None = typer.Option(None, help="continue the run in this folder from its checkpoint"),
    quiet: bool = typer.Option(False, help="no progress bar"),
    trust_code: bool = typer.Option(False, "--trust-code", help=f"with --resume: {_TRUST_HELP}"),
    logger: str | None = typer.Option(None, help="also log to tensorboard (RUN/tensorboard/; needs "
                                      "pip install inferkit[tensorboard]); metrics.jsonl is written either way"),
) -> None:
    """Train a model with a sampler and a tuner (Algorithm 1) and write a run folder. Under
    ``torchrun --nproc_per_node N -m inferkit run ...`` the N processes train data-parallel."""
    request = RunRequest(model=model, sampler=sampler, tuner=tuner, data=data, data_dir=data_dir,
                         model_opt=model_opt, sampler_opt=sampler_opt, tuner_opt=tuner_opt, data_opt=data_opt,
                         train_opt=train_opt, config=config, iterations=iterations, batch_size=batch_size,
                         tune_every=tune_every, seed=seed, device=device, precision=precision, out=out,
                         resume=resume, quiet=quiet, trust_code=trust_code, logger=logger)
    try:
        if request.resume is not None:
            _resume_run(request)
        else:
            _new_run(request)
        distributed.barrier()  # no process leaves the group while another still works (gloo aborts then)
    except KeyboardInterrupt as exc:  # past typer, which would swallow a KeyboardInterrupt and its message
        raise _Interrupted(str(exc) if isinstance(exc, TrainingInterrupted) else "interrupted") from None
    finally:
        distributed.shutdown()


class _Interrupted(Exception):
    """A command stopped by a signal; :func:`main` prints its message and exits 130."""


@dataclass(frozen=True)
class RunRequest:
    """The options of ``inferkit run`` as given (``None``: not given)."""

    model: str | None = None
    sampler: str | None = None
    tuner: str | None = None
    data: str | None = None
    data_dir: Path | None = None
    model_opt: list[str] = field(default_factory=list)
    sampler_opt: list[str] = field(default_factory=list)
    tuner_opt: list[str] = field(default_factory=list)
    data_opt: list[str] = field(default_factory=list)
    train_opt: list[str] = field(default_factory=list)
    config: Path | None = None
    iterations: int | None = None
    batch_size: int | None = None
    tune_every: int | None = None
    seed: int | None = None
    device: str | None = None
    precision: str | None = None
    out: Path | None = None
    resume: Path | None = None
    quiet: bool = False
    trust_code: bool = False
    logger: str | None = None


def _resume_run(request: RunRequest) -> None:
    """``inferkit run --resume RUN``: continue the run in its folder, refusing options it cannot honour."""
    from inferkit.trainer import train

    run_dir = request.resume
    check_logger(request.logger)
    spec = RunSpec.load(run_dir, trust_code=True)  # reading it imports nothing; the model is checked below
    _refuse_changes_on_resume(run_dir, spec, request)
    check_model_trusted(spec.model.name, run_dir / CONFIG_FILE, model=request.model, trust_code=request.trust_code)
    settings = parse_assignments(request.train_opt, "--train-opt")
    given = {"iterations": request.iterations, "device": request.device, "precision": request.precision}
    settings.update({key: value for key, value in given.items() if value is not None})
    checkpointed = (run_dir / CHECKPOINT_FILE).is_file()
    note = _continue_settings(spec, settings, checkpointed)
    if not checkpointed:
        note = (f"note: {run_dir} has no checkpoint (the run stopped before its first); it starts again "
                "from iteration 0 with its config.json")
    resolve_device(spec.train.device)
    distributed.initialize(spec.train.device)
    data_obj, model_obj, sampler_obj, tuner_obj = build_objects(spec, resolve=False)
    result = train(model_obj, sampler_obj, tuner_obj, data_obj, spec, run_dir, resume=checkpointed,
                   progress=not request.quiet, notes=(note,) if note else (), logger=request.logger)
    _report(result.summary, result.run_dir)


def _new_run(request: RunRequest) -> None:
    """``inferkit run``: build the spec from the options (and a TOML ``--config``), check the folder is
    free, and train."""
    from inferkit.run_folder import check_new_run_folder
    from inferkit.trainer import train

    check_logger(request.logger)
    spec = _spec_from(request)
    resolve_device(spec.train.device)
    distributed.initialize(spec.train.device)
    if spec.data.options.get("data_dir") is not None and "data_dir" not in _option_names("dataset", spec.data.name):
        raise UserError(f"dataset {spec.data.name!r} is generated by inferkit and takes no --data-dir")
    run_dir = request.out or _default_run_dir(spec)
    run_dir = distributed.broadcast_from_main(run_dir)  # one folder for all processes
    check_output_folder(run_dir, "--out")
    check_new_run_folder(run_dir)  # early, before building; checked again under the folder's lock
    distributed.barrier()  # every process has checked the folder before rank 0 writes into it
    data_obj, model_obj, sampler_obj, tuner_obj = build_objects(spec)
    result = train(model_obj, sampler_obj, tuner_obj, data_obj, spec, run_dir, progress=not request.quiet,
                   logger=request.logger)
    _report(result.summary, result.run_dir)


def _spec_from(request: RunRequest) -> RunSpec:
    """The :class:`RunSpec` of a new run: command-line options over the ``--config`` file's over defaults."""
    file_config = _read_toml(request.config) if request.config is not None else {}
    data_spec = _plugin_from(file_config, "data", request.data, "shapes", request.data_opt, "--data-opt")
    if request.data_dir is not None:
        data_spec.options["data_dir"] = _absolute(request.data_dir)
    sampler_spec = _plugin_from(file_config, "sampler", request.sampler, "shortrun", request.sampler_opt,
                                "--sampler-opt")
    spec = RunSpec(
        model=_plugin_from(file_config, "model", request.model, None, request.model_opt, "--model-opt"),
        sampler=sampler_spec,
        tuner=_plugin_from(file_config, "tuner", request.tuner, _default_tuner(sampler_spec.name),
                           request.tuner_opt, "--tuner-opt"),
        data=data_spec,
    )
    train_values = dict(file_config.get("train", {}))
    train_values.update(parse_assignments(request.train_opt, "--train-opt"))
    for key, value in (("iterations", request.iterations), ("batch_size", request.batch_size),
                       ("tune_every", request.tune_every), ("seed", request.seed), ("device", request.device),
                       ("precision", request.precision)):
        if value is not None:
            train_values[key] = value
    spec.train = TrainConfig.from_dict(train_values)
    spec.train.validate()
    return spec


def _default_run_dir(spec: RunSpec) -> Path:
    """``runs/<time>-<model>-<sampler>-<random>``: runs started in the same second get folders of their own."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{spec.model.name}-{spec.sampler.name}-{secrets.token_hex(3)}"


RESUME_SETTINGS = ("iterations", "device", "precision")  # the keys of `given` in _resume_run
"""The training settings ``--resume`` may change: the total, and where and how it computes."""


def _refuse_changes_on_resume(run: Path, spec: RunSpec, request: RunRequest) -> None:
    """``--resume`` continues the run as its ``config.json`` has it: an option it cannot honour (a plugin
    option, a config file, or a choice different from the run's) is an error naming the option."""
    for flag, given in (("--model-opt", request.model_opt), ("--sampler-opt", request.sampler_opt),
                        ("--tuner-opt", request.tuner_opt), ("--data-opt", request.data_opt),
                        ("--config", request.config)):
        if given:
            raise UserError(f"{flag} cannot be given with --resume: the run continues with the options in "
                            f"{run / 'config.json'}; drop {flag}, or start a new run with another --out")
    saved_dir = spec.data.options.get("data_dir")
    for flag, given, saved in (
            ("--model", request.model, spec.model.name), ("--sampler", request.sampler, spec.sampler.name),
            ("--tuner", request.tuner, spec.tuner.name), ("--data", request.data, spec.data.name),
            ("--data-dir", request.data_dir and Path(request.data_dir).resolve(),
             saved_dir and Path(saved_dir).resolve()),
            ("--batch-size", request.batch_size, spec.train.batch_size), ("--seed", request.seed, spec.train.seed),
            ("--tune-every", request.tune_every, spec.train.tune_every),
            ("--out", request.out and Path(request.out).resolve(), Path(run).resolve())):
        if given is not None and given != saved:
            raise UserError(f"{flag} {given} cannot be honoured with --resume: the run has {saved}; drop {flag}, "
                            "or start a new run with another --out")


def _continue_settings(spec: RunSpec, settings: dict[str, Any], checkpointed: bool) -> str | None:
    """Apply the settings a resumed run may change (:data:`RESUME_SETTINGS`) to ``spec``; returns the note
    for a changed total (a checkpointed run keeps its planned schedules, see ``TrainConfig.resized``)."""
    refused = sorted(set(settings) - set(RESUME_SETTINGS))
    if refused:
        raise UserError(f"--train-opt {refused[0]} cannot be given with --resume: the run continues with the "
                        f"settings in its config.json (only {', '.join(RESUME_SETTINGS)} may change)")
    changed = TrainConfig.from_dict({**spec.train.__dict__, **settings})
    note = None
    if checkpointed:
        note = spec.train.resized(changed.iterations)
    else:
        spec.train.iterations = changed.iterations  # nothing trained yet: a new plan
    spec.train.device, spec.train.precision = changed.device, changed.precision
    spec.train.validate()
    return note


def _default_tuner(sampler_name: str) -> str:
    """``kl-grid``, or ``fixed`` for a sampler the KL objective does not apply to (amortized, persistent)."""
    from inferkit.objective import kl_objective_unavailable
    from inferkit.registry import plugin_class

    return "kl-grid" if kl_objective_unavailable(plugin_class("sampler", sampler_name)) is None else "fixed"


def _option_names(kind: str, name: str) -> set[str]:
    from inferkit.options import option_types
    from inferkit.registry import plugin_class

    return set(option_types(plugin_class(kind, name)))


def _report(summary: dict[str, Any], run_dir: Path) -> None:
    if not distributed.context().is_main:
        return
    table = Table(title=f"run {run_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    console.print(table)


@app.command("list")
def list_command() -> None:
    """Every installed plugin by group, with its distribution and whether it imports."""
    table = Table(title="inferkit plugins")
    for column in ("group", "name", "distribution", "target", "status"):
        table.add_column(column, overflow="fold")
    plugins = list_plugins()
    for info in plugins:
        status = "[green]ok[/green]" if info.ok else "[red]error (below)[/red]"
        table.add_row(info.kind, info.name, info.distribution, info.target, status)
    console.print(table)
    for info in plugins:  # whole messages, never cut to the table's width
        if not info.ok:
            console.print(f"{info.kind} {info.name} ({info.distribution}): error: {info.error}", markup=False,
                          highlight=False, soft_wrap=True)


@app.command()
def sample(
    run: Path = typer.Argument(..., help="run folder"),
    num: int = typer.Option(64, help="number of samples"),
    seed: int = typer.Option(0, help="random seed"),
    output: Path | None = typer.Option(None, help="PNG file [default: RUN/samples.png]"),
    model_name: str | None = typer.Option(None, "--model", help=_SAVED_MODEL_HELP),
    trust_code: bool = typer.Option(False, "--trust-code", help=_TRUST_HELP),
) -> None:
    """Draw ancestral samples from a trained model and save them as a PNG grid."""
    from inferkit.images import is_image_shape, save_grid

    if not 1 <= num <= MAX_SAMPLES:
        raise UserError(f"--num must be between 1 and {MAX_SAMPLES} (the samples form one PNG grid; draw "
                        f"more grids with other --seed values), got {num}")
    _check_seed(seed)
    path = output or run / "samples.png"
    _, _, model, _, _, _ = _load_run(run, model_name, trust_code)
    check_output_file(path, "--output")
    if not is_image_shape(tuple(model.data_shape)):
        raise UserError(f"model data of shape {tuple(model.data_shape)} are not images; nothing to draw")
    images = _draw(model, num, seed)
    path = save_grid(images, path)
    console.print(f"wrote {path}")


def _check_seed(seed: int) -> None:
    """A :class:`UserError` for a ``--seed`` beyond the 64-bit integers that torch seeds with."""
    if not INT64_MIN <= seed <= INT64_MAX:
        raise UserError(f"--seed must fit in 64 bits ({INT64_MIN} to {INT64_MAX}), got {seed}")


def _draw(model, num: int, seed: int) -> torch.Tensor:
    """``num`` ancestral samples; memory they cannot get is a :class:`UserError`."""
    try:
        with torch.no_grad():
            return model.sample(num, generator=torch.Generator().manual_seed(seed))
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise UserError(f"cannot allocate {num} samples ({first_line(exc)}); lower --num") from None


# ---- eval -------------------------------------------------------------------------------
@app.command("eval")
def eval_command(
    run: Path = typer.Argument(..., help="run folder"),
    num_examples: int = typer.Option(0, help="test examples for reconstruction (0: all)"),
    seed: int = typer.Option(0, help="random seed of every inference and draw"),
    reference_steps: int = typer.Option(200, help="K of the common reference inference (0: skip)"),
    reference_step_size: float | None = typer.Option(None, help="its step size [default: chosen on a grid]"),
    mask: list[str] = typer.Option([], help="inpainting mask pattern (repeatable) [default: all four]"),
    inpaint_examples: int = typer.Option(256, help="test examples for inpainting (0: skip)"),
    ais_examples: int = typer.Option(32, help="test examples for the AIS log-likelihood (0: skip)"),
    ais_chains: int = typer.Option(4, help="AIS chains per example"),
    ais_steps: int = typer.Option(200, help="AIS intermediate distributions"),
    ais_leapfrog: int = typer.Option(5, help="leapfrog steps per HMC transition"),
    ais_base: str = typer.Option("laplace", help="AIS base q(z): laplace (Gaussian at each posterior mode) or prior"),
    bdmc_examples: int = typer.Option(4, help="simulated examples for the BDMC gap of the AIS settings (0: skip)"),
    subset_seed: int = typer.Option(0, help="seed of the test subset, shared by every measure and run"),
    rbm_budget: str = typer.Option("default", help="RBM-prior log-likelihood budget: default or paper"),
    iwae_samples: int = typer.Option(64, help="k of the IWAE bound, amortized samplers only (0: skip)"),
    fd_samples: int = typer.Option(1000, help="generated samples for the classifier Fréchet distance (0: skip)"),
    fid_samples: int = typer.Option(1000, help="generated samples N for FID (papers: 40,000 or 50,000)"),
    fid_reference: str = typer.Option("train", help="FID reference images: train or test"),
    fid_reference_samples: int = typer.Option(0, help="how many reference images (0: all)"),
    fid_cache: Path | None = typer.Option(None, help="folder of cached FID reference statistics "
                                                     "[default: ~/.cache/inferkit/fid]"),
    classifier: Path | None = typer.Option(None, help="feature classifier file, reused or trained and saved "
                                                      "[default: RUN/feature_classifier.pt]"),
    classifier_iterations: int = typer.Option(1000, help="training iterations of a new feature classifier"),
    inception_weights: Path | None = typer.Option(None, help="FID Inception weights "
                                                             "(pt_inception-2015-12-05-6726825d.pth); no download"),
    figures: bool = typer.Option(True, help="write the PNG figures into RUN"),
    device: str | None = typer.Option(None, help="cpu or cuda [default: the run's]"),
    quiet: bool = typer.Option(False, help="no progress messages"),
    model_name: str | None = typer.Option(None, "--model", help=_SAVED_MODEL_HELP),
    trust_code: bool = typer.Option(False, "--trust-code", help=_TRUST_HELP),
) -> None:
    """Evaluate a run on its test split: reconstruction, inpainting, AIS log-likelihood, IWAE, Fréchet
    distances, hierarchy; writes RUN/eval.json and PNG figures."""
    from inferkit.evaluation import EvalConfig, evaluate
    from inferkit.runs import write_json_atomic

    config = EvalConfig(num_examples=num_examples, seed=seed, reference_steps=reference_steps,
                        reference_step_size=reference_step_size,
                        inpaint_patterns=tuple(mask) or EvalConfig.inpaint_patterns,
                        inpaint_examples=inpaint_examples, ais_examples=ais_examples, ais_chains=ais_chains,
                        ais_steps=ais_steps, ais_leapfrog=ais_leapfrog, ais_base=ais_base, bdmc_examples=bdmc_examples,
                        subset_seed=subset_seed, rbm_budget=rbm_budget, iwae_samples=iwae_samples,
                        fd_samples=fd_samples, fid_samples=fid_samples, fid_reference=fid_reference,
                        fid_reference_samples=fid_reference_samples, fid_cache=str(fid_cache) if fid_cache else None,
                        classifier=str(classifier) if classifier else None,
                        classifier_iterations=classifier_iterations,
                        inception_weights=str(inception_weights) if inception_weights is not None else None,
                        figures=figures)
    config.validate()
    _check_seed(seed)
    spec, data, model, sampler, _, state = _load_run(run, model_name, trust_code)
    check_output_folder(run, "eval: run folder")  # before hours of evaluation, not after
    if classifier is not None and not classifier.exists():
        check_output_file(classifier, "--classifier")
    target = resolve_device(device or spec.train.device)
    model.to(target)
    sampler.to(target)
    log = (lambda message: None) if quiet else (lambda message: err_console.print(message, highlight=False))
    result = {"iteration": int(state["iteration"]), **evaluate(model, sampler, data, config, out_dir=run, log=log)}
    write_json_atomic(run / "eval.json", result)
    _report(_eval_rows(result), run)


def _eval_rows(result: dict[str, Any]) -> dict[str, Any]:
    """The scalar figures of an eval.json, flattened for the table."""
    rows: dict[str, Any] = {}
    for key, value in result.items():
        if key in ("figures", "seconds", "reference_inference", "classifier", "hierarchy_factors", "test_subset",
                   "ais_bdmc", "fid_setup", "classifier_frechet_distance_note"):
            continue
        if isinstance(value, dict):
            if "mean" in value:
                rows[key] = f"{value['mean']:.6g} ± {value['standard_error']:.3g}"
            else:
                rows.update({f"{key} ({k})": v for k, v in value.items()})
        elif value is None:
            rows[key] = "n/a"
        elif not isinstance(value, list):
            rows[key] = value
    bits = (result.get("ais_log_likelihood") or {}).get("bits_per_dim")
    if isinstance(bits, dict):
        rows["ais_log_likelihood (bits/dim)"] = f"{bits['mean']:.4g} ± {bits['standard_error']:.2g}"
    if isinstance(result.get("ais_bdmc"), dict):
        rows["AIS BDMC gap on simulated data (mean / max)"] = (f"{result['ais_bdmc']['gap_mean']:.3g} / "
                                                              f"{result['ais_bdmc']['gap_max']:.3g}")
    if "step_size" in result.get("reference_inference", {}):
        rows["reference step size"] = result["reference_inference"]["step_size"]
    if "hierarchy_factors" in result:
        rows.update({f"factor {k}: dominant layer": f"z{v}"
                     for k, v in result["hierarchy_factors"]["dominant_layer"].items()})
    return rows
# ---- end eval ----------------------------------------------------------------------------------------


@app.command("compare")
def compare_command(
    runs: list[Path] = typer.Argument(..., help="run folders (or eval_per_image.json files); the first is A"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the comparisons to this JSON file"),
) -> None:
    """Paired per-image differences of evaluated runs against the first (MSE, log-likelihood, inpainting),
    with standard errors and which are significant (paired t-test, p < 0.05 and |mean| > 2 s.e.)."""
    from inferkit.eval import paired
    from inferkit.runs import write_json_atomic

    if len(runs) < 2:
        raise UserError("compare needs at least two evaluated runs: inferkit compare RUN_A RUN_B [...]")
    if json_out is not None:
        check_output_file(json_out, "--json")
    records = [paired.read_per_image(run) for run in runs]
    results = {}
    for run, record in zip(runs[1:], records[1:]):
        rows = paired.compare_records(records[0], record)
        results[str(run)] = rows
        console.print(paired.format_table(str(runs[0]), str(run), rows), markup=False, highlight=False, soft_wrap=True)
    if json_out is not None:
        write_json_atomic(json_out, {"a": str(runs[0]), "comparisons": results})


@app.command()
def tune(
    run: Path = typer.Argument(..., help="run folder"),
    tuner: str | None = typer.Option(None, help="tuner plugin [default: the run's]"),
    tuner_opt: list[str] = typer.Option([], help=_OPT_HELP.format("tuner")),
    num_examples: int = typer.Option(16, help="test examples for the objective"),
    output: Path | None = typer.Option(None, help="PNG of J(s) [default: RUN/tune.png]"),
    model_name: str | None = typer.Option(None, "--model", help=_SAVED_MODEL_HELP),
    trust_code: bool = typer.Option(False, "--trust-code", help=_TRUST_HELP),
) -> None:
    """Run a tuner on a trained run's test data, print J at every point it tried and plot J(s)."""
    from inferkit.plots import plot_objective_curves
    from inferkit.registry import load_tuner
    from inferkit.runs import write_json_atomic

    if num_examples < 1:
        raise UserError(f"--num-examples must be a positive integer, got {num_examples}")
    if output is not None and output.suffix.lower() != ".png":
        raise UserError(f"--output must name a .png file, got {output}")
    spec, data, model, sampler, run_tuner, state = _load_run(run, model_name, trust_code)
    if tuner is not None or tuner_opt:
        options = spec.tuner.options if tuner is None else {}
        options = {**options, **parse_assignments(tuner_opt, "--tuner-opt")}
        run_tuner = load_tuner(tuner or spec.tuner.name, **options)
    result = run_tuner.tune(model, sampler, data.test.x[:num_examples])
    sampler.set_hyperparameters(result.hyperparameters)
    chosen = {k: v.tolist() for k, v in result.hyperparameters.items()}
    names = [name for name in chosen if any(name in point for point in result.history)]
    table = Table(title=f"tuner on {run}")
    for column in [*names, "J", "invertible"]:
        table.add_column(column.replace("_", " "), justify="right")
    for point in result.history:
        table.add_row(*(_number(point.get(name)) for name in names), f"{point['J']:.6g}",
                      str(point.get("invertible", "")))
    console.print(table)
    shown = ", ".join(f"{k} = {_number(v)}" for k, v in chosen.items())
    console.print(f"chosen: {shown}  J = {result.objective:.6g}", markup=False, highlight=False)
    record = {"iteration": int(state.get("iteration", 0)), "objective": result.objective,
              "hyperparameters": chosen, "per": result.per, "history": result.history}
    write_json_atomic(run / "tune.json", record)
    figure = output or run / "tune.png"
    name = tuner or spec.tuner.name
    if plot_objective_curves([record], figure, title=f"tuner {name} on {run} (checkpoint at t = "
                                                     f"{record['iteration']})"):
        console.print(f"J(s) plot: {figure}", markup=False, highlight=False)
    else:
        console.print(f"no J(s) to plot: tuner {name} evaluated no objective", markup=False, highlight=False)


def _number(value: Any) -> str:
    """A step size (or any hyperparameter) for a table: ``0.0312`` or ``[0.0312, 0.045, 0.02]``."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_number(v) for v in value) + "]"
    return f"{value:.4g}" if isinstance(value, float | int) else str(value)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning user mistakes into one ``error:`` line and exit code 2."""
    try:
        code = app(args=argv, standalone_mode=False)
    except _Interrupted as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 130
    except UserError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except click.exceptions.NoArgsIsHelpError:  # the help was already shown
        return 0
    except click.ClickException as exc:
        err_console.print(f"error: {exc.format_message()}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except (typer.Abort, KeyboardInterrupt) as exc:  # click turns KeyboardInterrupt into Abort
        cause = exc.__cause__ if isinstance(exc, click.exceptions.Abort) else exc
        message = str(cause) if isinstance(cause, TrainingInterrupted) else "interrupted"
        err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
        return 130
    if code == 130:  # typer's answer to a KeyboardInterrupt in a command
        err_console.print("error: interrupted", markup=False, highlight=False)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
