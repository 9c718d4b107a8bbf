"""The ``inferkit`` command line (typer + rich).

A user's mistake ends with one line ``error: ...``, exit code 2, and nothing written.
"""

from __future__ import annotations

import time
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
from inferkit.errors import UserError
from inferkit.interfaces import require_compatible
from inferkit.options import parse_assignments
from inferkit.registry import list_plugins
from inferkit.runs import CHECKPOINT_FILE, PluginSpec, RunSpec, TrainConfig, build_objects, resolve_device

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Short-run inference and learning for deep latent-variable models.")
console = Console()
err_console = Console(stderr=True)

_OPT_HELP = "key=value option for the {} plugin (repeatable)"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; give the path of a TOML file with --config")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML ({exc})") from None


def _plugin_from(config: dict[str, Any], key: str, name: str | None, default: str, options: list[str],
                 flag: str) -> PluginSpec:
    section = config.get(key, {})
    if not isinstance(section, dict):
        raise UserError(f"config file: [{key}] must be a table with name and options")
    merged = dict(section.get("options", {}))
    merged.update(parse_assignments(options, flag))
    return PluginSpec(name=name or section.get("name", default), options=merged)


def _load_run(run: Path):
    spec = RunSpec.load(run)
    data, model, sampler, tuner = build_objects(spec, resolve=False)
    path = run / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"{run} has no checkpoint yet; train it with `inferkit run` (or --resume) first")
    require_compatible(model, sampler)
    sampler.setup(model, num_examples=len(data.train))  # the trainer's hook: encoders, chain stores
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        sampler.load_state_dict(state["sampler"])
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is a user-facing error
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}); it may be damaged") from None
    return spec, data, model, sampler, tuner, state


@app.command()
def run(
    model: str | None = typer.Option(None, help="model plugin (see `inferkit list`) [default: ladder]"),
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
    config: Path | None = typer.Option(None, help="TOML file with [model], [sampler], [tuner], [data], [train]"),
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
) -> None:
    """Train a model with a sampler and a tuner (Algorithm 1) and write a run folder. Under
    ``torchrun --nproc_per_node N -m inferkit run ...`` the N processes train data-parallel."""
    try:
        _run(model, sampler, tuner, data, data_dir, model_opt, sampler_opt, tuner_opt, data_opt, train_opt, config,
             iterations, batch_size, tune_every, seed, device, precision, out, resume, quiet)
    finally:
        distributed.shutdown()


def _run(model, sampler, tuner, data, data_dir, model_opt, sampler_opt, tuner_opt, data_opt, train_opt, config,
         iterations, batch_size, tune_every, seed, device, precision, out, resume, quiet) -> None:
    from inferkit.trainer import train

    if resume is not None:
        spec = RunSpec.load(resume)
        if iterations is not None:
            spec.train.iterations = iterations
        if device is not None:
            spec.train.device = device
        if precision is not None:  # like the device, an execution setting a continuation may change
            spec.train.precision = precision
        spec.train.validate()
        resolve_device(spec.train.device)
        distributed.initialize(spec.train.device)
        data_obj, model_obj, sampler_obj, tuner_obj = build_objects(spec, resolve=False)
        if not (resume / CHECKPOINT_FILE).is_file():
            raise UserError(f"{resume} has no checkpoint to resume from; start a new run instead")
        result = train(model_obj, sampler_obj, tuner_obj, data_obj, spec, resume, resume=True, progress=not quiet)
        _report(result.summary, result.run_dir)
        return

    file_config = _read_toml(config) if config is not None else {}
    data_spec = _plugin_from(file_config, "data", data, "shapes", data_opt, "--data-opt")
    if data_dir is not None:
        data_spec.options["data_dir"] = str(data_dir)
    sampler_spec = _plugin_from(file_config, "sampler", sampler, "shortrun", sampler_opt, "--sampler-opt")
    spec = RunSpec(
        model=_plugin_from(file_config, "model", model, "ladder", model_opt, "--model-opt"),
        sampler=sampler_spec,
        tuner=_plugin_from(file_config, "tuner", tuner, _default_tuner(sampler_spec.name), tuner_opt,
                           "--tuner-opt"),
        data=data_spec,
    )
    train_values = dict(file_config.get("train", {}))
    train_values.update(parse_assignments(train_opt, "--train-opt"))
    for key, value in (("iterations", iterations), ("batch_size", batch_size), ("tune_every", tune_every),
                       ("seed", seed), ("device", device), ("precision", precision)):
        if value is not None:
            train_values[key] = value
    spec.train = TrainConfig.from_dict(train_values)
    spec.train.validate()
    resolve_device(spec.train.device)
    distributed.initialize(spec.train.device)
    if spec.data.options.get("data_dir") is not None and "data_dir" not in _option_names("dataset", spec.data.name):
        raise UserError(f"dataset {spec.data.name!r} is generated by inferkit and takes no --data-dir")
    run_dir = out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.model.name}-{spec.sampler.name}"
    run_dir = distributed.broadcast_from_main(run_dir)  # one folder for all processes
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir} already exists and is not empty; give a new --out, or --resume {run_dir}")
    distributed.barrier()  # every process has checked the folder before rank 0 writes into it
    data_obj, model_obj, sampler_obj, tuner_obj = build_objects(spec)
    result = train(model_obj, sampler_obj, tuner_obj, data_obj, spec, run_dir, progress=not quiet)
    _report(result.summary, result.run_dir)


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
        table.add_column(column)
    for info in list_plugins():
        status = "[green]ok[/green]" if info.ok else f"[red]error: {info.error}[/red]"
        table.add_row(info.kind, info.name, info.distribution, info.target, status)
    console.print(table)


@app.command()
def sample(
    run: Path = typer.Argument(..., help="run folder"),
    num: int = typer.Option(64, help="number of samples"),
    seed: int = typer.Option(0, help="random seed"),
    output: Path | None = typer.Option(None, help="PNG file [default: RUN/samples.png]"),
) -> None:
    """Draw ancestral samples from a trained model and save them as a PNG grid."""
    from inferkit.images import is_image_shape, save_grid

    if num < 1:
        raise UserError(f"--num must be a positive integer, got {num}")
    _, _, model, _, _, _ = _load_run(run)
    if not is_image_shape(tuple(model.data_shape)):
        raise UserError(f"model data of shape {tuple(model.data_shape)} are not images; nothing to draw")
    with torch.no_grad():
        images = model.sample(num, generator=torch.Generator().manual_seed(seed))
    path = save_grid(images, output or run / "samples.png")
    console.print(f"wrote {path}")


# ---- eval (issue 7) -------------------------------------------------------------------------------
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
    iwae_samples: int = typer.Option(64, help="k of the IWAE bound, amortized samplers only (0: skip)"),
    fd_samples: int = typer.Option(1000, help="generated samples for the Fréchet distances (0: skip)"),
    classifier: Path | None = typer.Option(None, help="feature classifier file, reused or trained and saved "
                                                      "[default: RUN/feature_classifier.pt]"),
    classifier_iterations: int = typer.Option(1000, help="training iterations of a new feature classifier"),
    inception_weights: Path | None = typer.Option(None, help="FID Inception weights "
                                                             "(pt_inception-2015-12-05-6726825d.pth); no download"),
    figures: bool = typer.Option(True, help="write the PNG figures into RUN"),
    device: str | None = typer.Option(None, help="cpu or cuda [default: the run's]"),
    quiet: bool = typer.Option(False, help="no progress messages"),
) -> None:
    """Evaluate a run on its test split: reconstruction, inpainting, AIS log-likelihood, IWAE, Fréchet
    distances, hierarchy; writes RUN/eval.json and PNG figures."""
    from inferkit.evaluation import EvalConfig, evaluate
    from inferkit.runs import write_json_atomic

    config = EvalConfig(num_examples=num_examples, seed=seed, reference_steps=reference_steps,
                        reference_step_size=reference_step_size,
                        inpaint_patterns=tuple(mask) or EvalConfig.inpaint_patterns,
                        inpaint_examples=inpaint_examples, ais_examples=ais_examples, ais_chains=ais_chains,
                        ais_steps=ais_steps, ais_leapfrog=ais_leapfrog, iwae_samples=iwae_samples,
                        fd_samples=fd_samples, classifier=str(classifier) if classifier else None,
                        classifier_iterations=classifier_iterations,
                        inception_weights=str(inception_weights) if inception_weights is not None else None,
                        figures=figures)
    config.validate()
    spec, data, model, sampler, _, state = _load_run(run)
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
        if key in ("figures", "seconds", "reference_inference", "classifier", "hierarchy_factors"):
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
    if "step_size" in result.get("reference_inference", {}):
        rows["reference step size"] = result["reference_inference"]["step_size"]
    if "hierarchy_factors" in result:
        rows.update({f"factor {k}: dominant layer": f"z{v}"
                     for k, v in result["hierarchy_factors"]["dominant_layer"].items()})
    return rows
# ---- end eval ----------------------------------------------------------------------------------------


@app.command()
def tune(
    run: Path = typer.Argument(..., help="run folder"),
    tuner: str | None = typer.Option(None, help="tuner plugin [default: the run's]"),
    tuner_opt: list[str] = typer.Option([], help=_OPT_HELP.format("tuner")),
    num_examples: int = typer.Option(16, help="test examples for the objective"),
    output: Path | None = typer.Option(None, help="PNG of J(s) [default: RUN/tune.png]"),
) -> None:
    """Run a tuner on a trained run's test data, print J at every point it tried and plot J(s)."""
    from inferkit.plots import plot_objective_curves
    from inferkit.registry import load_tuner
    from inferkit.runs import write_json_atomic

    if num_examples < 1:
        raise UserError(f"--num-examples must be a positive integer, got {num_examples}")
    if output is not None and output.suffix.lower() != ".png":
        raise UserError(f"--output must name a .png file, got {output}")
    spec, data, model, sampler, run_tuner, state = _load_run(run)
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
        app(args=argv, standalone_mode=False)
    except UserError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except click.exceptions.NoArgsIsHelpError:  # the help was already shown
        return 0
    except click.ClickException as exc:
        err_console.print(f"error: {exc.format_message()}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("error: interrupted", markup=False)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
