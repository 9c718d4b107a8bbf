"""The papers' comparison on real data: samplers side by side on one ladder generator, and
the ablations over the number of layers L and of inference steps K. MNIST is read from
``--data-dir``, else from ``$INFERKIT_DATA/mnist`` or the cache (``inferkit data fetch mnist``).

    python benchmarks/compare.py --budget cpu --out bench/cpu
    python benchmarks/compare.py --budget gpu --device cuda --out bench/gpu
    python benchmarks/compare.py --budget smoke --samplers shortrun,langevin
    python benchmarks/compare.py --budget cpu --suite ebm --out bench/ebm
    python benchmarks/compare.py --budget cpu --suite discrete --out bench/discrete

Every sampler trains the same ladder generator (same options, seed, data, iteration budget and
Algorithm-1 settings) and is evaluated by :func:`inferkit.evaluation.evaluate` with the same
settings: test MSE with its own sampler and with the common reference inference, AIS
log-likelihood (Monte Carlo standard errors), IWAE (amortized samplers) on the same seeded test subset, a
Fréchet distance (not FID, never compared with FID values) in the features of a classifier
trained on MNIST's training split (shared by all runs), FID when ``--inception-weights`` is given,
and seconds per training iteration. Samplers that are not installed are skipped with a note.

Writes ``OUT/results.json`` (everything, per run) and ``OUT/results.md`` (Tables 1-3 in the
papers' shape); each run's folder (``OUT/runs/<name>``) keeps its checkpoint, eval.json and figures.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch

from inferkit.errors import UserError
from inferkit.evaluation import EvalConfig, evaluate
from inferkit.options import parse_assignments
from inferkit.runs import PluginSpec, RunSpec, TrainConfig, build_objects, resolve_device, write_json_atomic
from inferkit.trainer import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables_suite import (
    TABLES,
    Cell,
    CellRunner,
    cell_dict,
    cell_from_dict,
    claims,
    equal_time_iterations,
    means_table,
    paired_table,
    sampler_pairs,
    table_cells,
    with_iterations,
)

SAMPLERS = ("shortrun", "vae", "lvae", "langevin", "abp")  # the papers' comparison first
FLOW_SAMPLERS = ("shortrun", "langevin")  # tuned by kl-grid; the others keep their own settings
LAYERS = (1, 3, 5)
STEPS = (5, 10, 20, 40)


@dataclass
class Budget:
    """One preset: the generator, the training budget and the evaluation sizes."""

    num_layers: int
    nf: int
    num_steps: int
    iterations: int
    batch_size: int
    tune_every: int
    num_train: int  # 0: all (8,000 of the 10,000 t10k images)
    num_test: int  # 0: all (2,000)
    main_eval: EvalConfig
    ablation_eval: EvalConfig
    tuner_options: dict[str, Any] = field(default_factory=dict)
    sigma_start: float = 0.2
    sigma_end: float = 0.05
    """The papers' observation sigma, annealed 0.2 -> 0.05 (over the trainer's default half of the run)."""
    seeds: tuple[int, ...] = (0,)


BUDGETS = {
    # A few iterations of everything: checks the harness end to end in about a minute.
    "smoke": Budget(num_layers=3, nf=8, num_steps=5, iterations=4, batch_size=16, tune_every=4,
                    num_train=256, num_test=64,
                    main_eval=EvalConfig(reference_steps=10, inpaint_examples=16, ais_examples=4, ais_chains=2,
                                         ais_steps=10, iwae_samples=4, iwae_examples=8, fd_samples=64,
                                         classifier_iterations=50, factor_rows=4),
                    ablation_eval=EvalConfig(reference_steps=0, inpaint_examples=0, ais_examples=0, bdmc_examples=0, iwae_samples=0,
                                             fd_samples=64, figures=False),
                    tuner_options={"batch_size": 2, "grid": (0.01, 0.05), "logdet": "stochastic", "search": "grid"}),
    # Three seeds of every cell; one Table-1 cell took 25-35 min on one CPU thread with the machine shared, most
    # of it the K=100 reference inference on 2,000 test images (benchmarks/RESULTS.md).
    "cpu": Budget(num_layers=3, nf=16, num_steps=20, iterations=300, batch_size=32, tune_every=100,
                  num_train=0, num_test=0, seeds=(0, 1, 2),
                  main_eval=EvalConfig(num_examples=2000, reference_steps=100, inpaint_examples=64,
                                       ais_examples=32, ais_chains=4, ais_steps=200, ais_leapfrog=5,
                                       bdmc_examples=4, iwae_samples=64, iwae_examples=32, fd_samples=1000,
                                       classifier_iterations=600),
                  ablation_eval=EvalConfig(num_examples=2000, reference_steps=0, inpaint_examples=0, ais_examples=0,
                                           bdmc_examples=0, iwae_samples=0, fd_samples=1000, figures=False),
                  # stochastic log-determinants: at L=5 one tuning takes a fifth of the stepwise time; the whole
                  # 5-point grid at every tuning
                  tuner_options={"batch_size": 2, "grid": (0.01, 0.03, 0.05, 0.08, 0.12), "logdet": "stochastic",
                                 "search": "grid"}),
    # The papers' scale on one GPU: L=5, K=20, nf=64, full data, long training, full evaluation.
    "gpu": Budget(num_layers=5, nf=64, num_steps=20, iterations=30000, batch_size=128, tune_every=2000,
                  num_train=0, num_test=0,
                  main_eval=EvalConfig(reference_steps=200, inpaint_examples=2000, ais_examples=256, ais_chains=16,
                                       ais_steps=1000, ais_leapfrog=10, iwae_samples=1000, iwae_examples=2000,
                                       fd_samples=2000, classifier_iterations=3000),
                  ablation_eval=EvalConfig(reference_steps=0, inpaint_examples=0, ais_examples=0, bdmc_examples=0, iwae_samples=0,
                                           fd_samples=2000, figures=False),
                  tuner_options={"batch_size": 8}),
}


def mnist_folder(data_dir: Path | str | None) -> Path:
    """``data_dir``, else the folder :func:`inferkit.data.default_data_dir` finds for MNIST; a missing
    one ends the script with its one-line error."""
    if data_dir is not None:
        return Path(data_dir)
    from inferkit.data import default_data_dir

    try:
        return Path(default_data_dir("mnist"))
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None


def installed_samplers() -> set[str]:
    return {ep.name for ep in entry_points(group="inferkit.samplers")}


def run_spec(budget: Budget, sampler: str, num_layers: int, num_steps: int, args, model: str = "ladder",
             seed: int | None = None, latent_dims: tuple[int, ...] = (), iterations: int = 0) -> RunSpec:
    """One cell's run: ``budget``'s training settings for ``sampler`` on the ladder with ``num_layers``
    layers (``latent_dims``: the plugin's default when empty) and K = ``num_steps`` for flow samplers;
    ``iterations`` 0: the budget's."""
    flow = sampler in FLOW_SAMPLERS
    iterations = iterations or budget.iterations
    sampler_options: dict[str, Any] = {"num_steps": num_steps} if flow else {}
    data_options: dict[str, Any] = {"data_dir": str(args.data_dir)}
    if budget.num_train:
        data_options["num_train"] = budget.num_train
    if budget.num_test:
        data_options["num_test"] = budget.num_test
    train_config = TrainConfig(iterations=iterations, batch_size=budget.batch_size,
                               tune_every=budget.tune_every if flow else 0,
                               seed=args.seeds[0] if seed is None else seed, device=args.device,
                               sigma_start=budget.sigma_start, sigma_end=budget.sigma_end,
                               log_every=max(1, iterations // 20),
                               checkpoint_every=iterations, image_every=iterations)
    model_options: dict[str, Any] = {"num_layers": num_layers, "nf": budget.nf, **args.model_opt}
    if latent_dims:
        model_options["latent_dims"] = tuple(latent_dims)
    return RunSpec(model=PluginSpec(model, model_options),
                   sampler=PluginSpec(sampler, sampler_options),
                   tuner=PluginSpec("kl-grid" if flow else "fixed", dict(budget.tuner_options) if flow else {}),
                   data=PluginSpec("mnist", data_options), train=train_config)


def train_and_evaluate(name: str, spec: RunSpec, eval_config: EvalConfig, out: Path) -> dict[str, Any]:
    run_dir = out / "runs" / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SystemExit(f"error: {run_dir} already exists; give a new --out")
    began = time.perf_counter()
    data, model, sampler, tuner = build_objects(spec)
    trained = train(model, sampler, tuner, data, spec, run_dir, progress=False)
    trained_at = time.perf_counter()
    result = evaluate(trained.model, trained.sampler, data, eval_config, out_dir=run_dir,
                      log=lambda message: print(f"    {name}: {message}", flush=True))
    write_json_atomic(run_dir / "eval.json", result)
    summary = trained.summary
    record = {
        "name": name, "sampler": spec.sampler.name, "num_layers": spec.model.options["num_layers"],
        "num_steps": spec.sampler.options.get("num_steps"), "config": spec.to_dict(), "train": summary,
        "seconds_per_iteration": summary["seconds"] / max(summary["iterations"], 1),
        "train_seconds": trained_at - began, "eval_seconds": time.perf_counter() - trained_at, "eval": result,
    }
    print(f"  {name}: {summary['seconds'] / max(summary['iterations'], 1):.3f} s/iteration, "
          f"train {record['train_seconds']:.0f} s, eval {record['eval_seconds']:.0f} s, "
          f"MSE {result['test_reconstruction_mse']:.4f}", flush=True)
    return record


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _cell_label(cell: Cell) -> str:
    if cell.label:
        return cell.label
    dims = "+".join(map(str, cell.latent_dims))
    steps = f", K={cell.num_steps}" if cell.num_steps else ""
    return f"{cell.sampler}, L={cell.num_layers} (z {dims}){steps}"


def markdown(results: dict[str, Any]) -> str:
    """Tables 1-3 as means over seeds, and the paired per-image comparisons with their verdicts."""
    out, seeds = Path(results["out"]), results["seeds"]
    tables = {key: [cell_from_dict(c) for c in cells] for key, cells in results["tables"].items()}
    equal_time = next((cell_from_dict(r["cell"]) for r in results["records"].values() if r["cell"]["label"]), None)
    header = (f"{results['device']}; seeds {', '.join(map(str, seeds))}; ladder nf={results['nf']}; "
              f"{results['iterations']} iterations of batch {results['batch_size']}; sigma "
              f"{results['sigma']}; wall time of this invocation {results['wall_seconds'] / 60:.1f} min.")
    options = results.get("model_options")
    if options:
        header += " Generator options: " + ", ".join(f"{k}={v}" for k, v in options.items()) + "."
    lines = [f"# inferkit comparison on MNIST (`--budget {results['budget']}`)", "", header, ""]
    if results["skipped"]:
        lines += [f"Not installed, skipped: {', '.join(results['skipped'])}.", ""]
    titles = {"samplers": "Table 1: samplers on one generator", "layers-paper": "Table 2: layers L, the papers' dims",
              "layers-matched": "Table 2: layers L, 28 latent units at every L", "steps": "Table 3: inference steps K"}
    records = results["records"]
    for key, cells in tables.items():
        rows = cells + ([equal_time] if key == "samplers" and equal_time else [])
        lines += [f"## {titles[key]}", "", "Mean over seeds ± s.e. over seeds (seeds).", "",
                  *means_table(records, rows, seeds, _cell_label), ""]
    lines += ["## Paired per-image differences against shortrun", "",
              ("Per seed: mean of (row's run - shortrun) over the same test images ± s.e. (images); * significant "
               "(paired t-test p < 0.05 and |mean| > 2 s.e.). MSE: negative is better than shortrun; log p(x): "
               "positive is."), "", *paired_table(out, sampler_pairs(tables, equal_time), seeds, with_verdict=False), ""]
    pairs = [(c.text, c.better, c.worse, c.measure) for c in claims(tables, equal_time)]
    lines += ["## The papers' orderings", "",
              ("Per seed: mean of (papers' better - papers' worse) ± s.e. (images); reproduced: significant in "
               "the papers' direction on every seed (at least three); contradicted: significant against it on "
               "every seed; otherwise inconclusive."), "", *paired_table(out, pairs, seeds, with_verdict=True)]
    return "\n".join(lines) + "\n"


EBM_MODELS = ("ladder", "ladder-ebm")


def ebm_markdown(results: dict[str, Any]) -> str:
    """The Gaussian-prior ladder against the energy-based-prior ladder, one row each."""
    lines = [f"# Gaussian vs energy-based top prior on MNIST (`--budget {results['budget']}`)", "",
             (f"{results['device']}; seed {results['seed']}; ladder L={results['main_layers']}, nf={results['nf']}, "
             f"shortrun K={results['main_steps']} tuned by kl-grid; {results['iterations']} iterations of batch "
             f"{results['batch_size']}; total wall time {results['wall_seconds'] / 60:.1f} min."), "",
             "| model | MSE (own) | MSE (reference K) | classifier FD (not FID) | s / iteration |",
             "|---|---:|---:|---:|---:|"]
    for record in results["ebm"]:
        e = record["eval"]
        lines.append(f"| {record['model']} | {_fmt(e['test_reconstruction_mse'])} | "
                     f"{_fmt(e.get('test_reconstruction_mse_reference'))} | "
                     f"{_fmt(e.get('classifier_frechet_distance'))} | {record['seconds_per_iteration']:.3f} |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, stem: str, results: dict[str, Any], render) -> int:
    """Write ``OUT/STEM.json`` and ``OUT/STEM.md`` (``render(results)``), print the tables; exit code 0."""
    write_json_atomic(out / f"{stem}.json", results)
    (out / f"{stem}.md").write_text(render(results))
    print(render(results))
    print(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.md'}")
    return 0


def parse_seeds(text: str | None, budget: Budget | None) -> list[int]:
    """``--seeds 0,1,2`` as integers; without it the budget's seeds (0 for the other suites)."""
    if text is None:
        return list(budget.seeds) if budget is not None else [0]
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"error: --seeds takes comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if not seeds:
        raise SystemExit("error: --seeds is empty; give e.g. 0,1,2")
    return seeds


def parse_methods(text: str | None, allowed: tuple[str, ...], suite: str) -> tuple[str, ...] | None:
    """``--methods`` as names from ``allowed`` (``None``: the suite's own), or exit with one line."""
    if text is None:
        return None
    methods = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [m for m in methods if m not in allowed]
    if not methods or unknown:
        raise SystemExit(f"error: --methods for --suite {suite} takes comma-separated names from "
                         f"{', '.join(allowed)}; got {text!r}")
    return methods


def parse_tables(text: str) -> tuple[str, ...]:
    """``--tables`` as names from :data:`TABLES` in their order, or exit with one line."""
    names = {part.strip() for part in text.split(",") if part.strip()}
    if not names or not names <= set(TABLES):
        raise SystemExit(f"error: --tables takes comma-separated names from {', '.join(TABLES)}; got {text!r}")
    return tuple(t for t in TABLES if t in names)


CELL_SHAPE = ("num_layers", "latent_dims", "nf")
"""Generator options a cell sets itself: ``--model-opt`` may not give them."""


def parse_model_options(items: list[str]) -> dict[str, str]:
    """``--model-opt KEY=VALUE`` items as a dict (the plugin checks the values), or exit with one line."""
    try:
        options = parse_assignments(items, "--model-opt")
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    fixed = sorted(set(options) & set(CELL_SHAPE))
    if fixed:
        raise SystemExit(f"error: --model-opt cannot set {', '.join(fixed)}: each cell sets the generator's "
                         "layers, dims and nf")
    return options


def parse_iterations(text: str | None) -> tuple[int, ...] | None:
    """``--iterations`` as increasing positive integers (``None``: the budget's), or exit with one line."""
    if text is None:
        return None
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        counts = ()
    if not counts or any(c < 1 for c in counts) or list(counts) != sorted(set(counts)):
        raise SystemExit(f"error: --iterations takes increasing positive integers, e.g. 300,1200; "
                         f"got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with the MNIST IDX files "
                        "[default: $INFERKIT_DATA/mnist, else the cache of `inferkit data fetch mnist`]")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="smoke")
    parser.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated sampler names")
    parser.add_argument("--no-ablations", action="store_true", help="skip Tables 2 and 3 (--tables samplers)")
    parser.add_argument("--tables", default=",".join(TABLES), help="comma-separated tables to run, from "
                        f"{', '.join(TABLES)}; without samplers the main shortrun cell is one ablation cell "
                        "(evaluated as those are: give it its own --out)")
    parser.add_argument("--suite", choices=("tables", "ebm", "discrete", "pyro", "ladder-curve"), default="tables",
                        help="tables: the papers' Tables 1-3; ebm: Gaussian vs energy-based top prior; discrete: "
                             "rbm-prior trained by vimco and rws, AIS and RAISE log-likelihoods ("
                             "benchmarks/discrete.py, budgets smoke and cpu); pyro: short-run inference against "
                             "Pyro's SVI VAE on examples/pyro_mnist.py (benchmarks/pyro_suite.py, budgets smoke and "
                             "cpu); ladder-curve: the same learning curves on the ladder generator")
    parser.add_argument("--methods", default=None, help="--suite pyro / ladder-curve: comma-separated "
                        "methods [default: the suite's]")
    parser.add_argument("--iterations", default=None, help="--suite pyro / ladder-curve: comma-separated "
                        "iteration counts [default: the budget's]")
    parser.add_argument("--seeds", default=None, help="comma-separated training seeds [default: the budget's]")
    parser.add_argument("--report", action="store_true", help="train nothing: write the tables from the cells "
                        "of --out evaluated so far")
    parser.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="--suite tables / ebm: a generator option for every cell (e.g. sigma_head=softplus); "
                             "the cells' layers, dims and nf stay the budget's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--inception-weights", type=Path, default=None, help="FID weights file (no download)")
    parser.add_argument("--out", type=Path, default=None, help="output folder [default: bench/<budget>]")
    args = parser.parse_args(argv)
    args.tables = parse_tables(args.tables)
    args.model_opt = parse_model_options(args.model_opt)
    seeds_given = args.seeds is not None
    args.seeds = parse_seeds(args.seeds, BUDGETS.get(args.budget))
    args.data_dir = mnist_folder(args.data_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    resolve_device(args.device)
    if args.suite == "discrete":
        from discrete import BUDGETS as DISCRETE_BUDGETS
        from discrete import markdown as discrete_markdown
        from discrete import run_discrete

        if args.budget not in DISCRETE_BUDGETS:
            raise SystemExit(f"error: --suite discrete has budgets {', '.join(DISCRETE_BUDGETS)}, not {args.budget!r}")
        out = args.out or Path("bench") / f"discrete-{args.budget}"
        print(discrete_markdown(run_discrete(args.data_dir, out, args.budget, seeds=tuple(args.seeds), device=args.device)))
        return 0
    if args.suite in ("pyro", "ladder-curve"):
        from pyro_suite import BUDGETS as PYRO_BUDGETS
        from pyro_suite import allowed_methods, run_pyro
        from pyro_suite import markdown as pyro_markdown

        if args.budget not in PYRO_BUDGETS:
            raise SystemExit(f"error: --suite {args.suite} has budgets {', '.join(PYRO_BUDGETS)}, not {args.budget!r}")
        model = "pyro" if args.suite == "pyro" else "ladder"
        methods = parse_methods(args.methods, allowed_methods(model), args.suite)
        out = args.out or Path("bench") / f"{args.suite}-{args.budget}"
        stem = "results_pyro" if model == "pyro" else "results_ladder_curve"
        seeds = tuple(args.seeds) if seeds_given else None
        iterations = parse_iterations(args.iterations)
        results = run_pyro(args.data_dir, out, args.budget, model, methods, seeds, iterations,
                           report=args.report)
        return write_results(out, stem, results, pyro_markdown)
    budget = BUDGETS[args.budget]
    out = args.out or Path("bench") / args.budget
    out.mkdir(parents=True, exist_ok=True)
    classifier_path = out / "feature_classifier.pt"
    weights = str(args.inception_weights) if args.inception_weights else None
    main_eval = replace(budget.main_eval, classifier=str(classifier_path), inception_weights=weights)
    ablation_eval = replace(budget.ablation_eval, classifier=str(classifier_path), inception_weights=weights)

    wanted = [s.strip() for s in args.samplers.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SAMPLERS]
    if unknown:
        print(f"note: {', '.join(unknown)} not among the compared samplers {', '.join(SAMPLERS)}; running them too")
    available = installed_samplers()
    skipped = [s for s in wanted if s not in available]
    for name in skipped:
        print(f"note: sampler {name!r} is not installed (no inferkit.samplers entry point); skipped", flush=True)
    samplers = [s for s in wanted if s in available]
    began = time.perf_counter()
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else (
        f"CPU, {torch.get_num_threads()} torch threads")
    if args.report:
        device_name = "tables of the cells evaluated so far (each measured by the invocation that trained it)"
    results: dict[str, Any] = {"budget": args.budget, "budget_settings": asdict(budget), "seeds": args.seeds,
                               "seed": args.seeds[0], "device": device_name, "main_layers": budget.num_layers,
                               "main_steps": budget.num_steps, "nf": budget.nf, "iterations": budget.iterations,
                               "batch_size": budget.batch_size, "skipped": skipped, "out": str(out),
                               "sigma": f"{budget.sigma_start} -> {budget.sigma_end}", "records": {},
                               "model_options": args.model_opt}
    if args.suite == "ebm":
        eval_config = replace(main_eval, ais_examples=0, iwae_samples=0)  # no nats for an unnormalised model
        results["ebm"] = []
        for model in EBM_MODELS:
            spec = run_spec(budget, "shortrun", budget.num_layers, budget.num_steps, args, model=model)
            record = train_and_evaluate(f"{model}-L{budget.num_layers}", spec, eval_config, out)
            record["model"] = model
            results["ebm"].append(record)
        results["wall_seconds"] = time.perf_counter() - began
        return write_results(out, "results_ebm", results, ebm_markdown)
    run_tables(args, budget, samplers, out, main_eval, ablation_eval, results)
    results["wall_seconds"] = time.perf_counter() - began
    return write_results(out, "results", results, markdown)


def run_tables(args, budget: Budget, samplers: list[str], out: Path, main_eval: EvalConfig,
               ablation_eval: EvalConfig, results: dict[str, Any]) -> None:
    """Every cell of Tables 1-3 (and the equal-time VAE) for every seed, into ``results['records']``."""
    every = table_cells(samplers, budget.num_layers, budget.num_steps, FLOW_SAMPLERS)
    tables = {key: every[key] for key in (("samplers",) if args.no_ablations else args.tables)}
    main_cells = tables.get("samplers", [])
    results["tables"] = {key: [cell_dict(c) for c in cells] for key, cells in tables.items()}
    runner = CellRunner(out, None if args.report else train_and_evaluate)
    records = results["records"]
    ablations = list(dict.fromkeys(c for key in ("layers-matched", "layers-paper", "steps") if key in tables
                                   for c in tables[key] if c not in main_cells))
    by_sampler = {c.sampler: c for c in main_cells}
    for seed in args.seeds:
        print(f"seed {seed}: {len(main_cells)} samplers, then {len(ablations)} ablation cells", flush=True)
        equal_time_done = False
        for cell in main_cells:
            keep(records, cell.name(seed), runner.run(cell, seed, cell_spec(budget, cell, seed, args), main_eval))
            names = {"shortrun", "vae"}
            if not equal_time_done and names <= set(by_sampler) and all(by_sampler[m].name(seed) in records
                                                                        for m in names):
                run_equal_time(runner, records, by_sampler, seed, budget, args, main_eval)
                equal_time_done = True
        for cell in ablations:
            keep(records, cell.name(seed), runner.run(cell, seed, cell_spec(budget, cell, seed, args), ablation_eval))


def keep(records: dict[str, Any], name: str, record: dict[str, Any] | None) -> None:
    if record is not None:
        records[name] = record


def run_equal_time(runner: CellRunner, records: dict[str, Any], by_sampler: dict[str, Cell], seed: int,
                   budget: Budget, args, eval_config: EvalConfig) -> None:
    """The ``vae`` cell again, for as many iterations as take the ``shortrun`` cell's training seconds."""
    shortrun, vae = (records[by_sampler[m].name(seed)] for m in ("shortrun", "vae"))
    iterations = equal_time_iterations(shortrun["train"]["seconds"], vae["seconds_per_iteration"])
    cell = with_iterations(by_sampler["vae"], iterations)
    keep(records, cell.name(seed), runner.run(cell, seed, cell_spec(budget, cell, seed, args), eval_config))


def cell_spec(budget: Budget, cell: Cell, seed: int, args) -> RunSpec:
    return run_spec(budget, cell.sampler, cell.num_layers, cell.num_steps, args, seed=seed,
                    latent_dims=cell.latent_dims, iterations=cell.iterations)


if __name__ == "__main__":
    sys.exit(main())
