#!/usr/bin/env python
"""Kernel speed of short-run inference: how close K steps come to K gradient evaluations.

    python benchmarks/kernel_speed.py [--quick] [--json out.json] [--threads 2] [--device cpu]

For each model (linear-gaussian at latent dimension 100 and 500, data dimension 784, and a small
convolutional generator) at batch 64 and for K = 5, 20, 50 it reports

* ``ratio = time(K-step inference) / (K x time of one forward+backward of log_joint w.r.t. z)``
  on the same batch, for inferkit's ``shortrun`` and ``langevin`` samplers and for a naive loop as
  the papers' code does it (fresh graph and ``torch.autograd.grad(..., retain_graph=True)`` per
  step, ``z`` updated through ``.data``, Langevin noise made on the CPU with ``torch.randn`` and
  copied with ``.to(device)``). The K-gradient floor is what the method cannot beat.
* peak memory of one training step (inference, then ``loss.backward()``) at K = 5 and K = 50, each
  measured in a fresh subprocess (CPU: growth of ``ru_maxrss`` over the process's level after
  building model and data; CUDA: ``torch.cuda.max_memory_allocated`` over the allocated level).
* seconds per ``kl_objective`` evaluation with the stepwise log-determinant (and the exact one for
  comparison) on a small batch.

Repetitions are interleaved (every method once per round, in rotating order) and the medians are
reported, so drifting machine load hits all methods alike and the ratios stand side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

import inferkit
from inferkit import LogDetEstimator, Model, kl_objective
from inferkit.models.linear_gaussian import LinearGaussian
from inferkit.samplers import Langevin, ShortRun

STEPS = (5, 20, 50)
MEMORY_STEPS = (5, 50)
_LOG_2PI = math.log(2 * math.pi)


# -- models -----------------------------------------------------------------------------------------
class TinyConvDecoder(Model):
    """A small DCGAN-style generator: z (32) -> Linear -> 32x4x4 -> ConvT -> 16x8x8 -> ConvT -> 1x16x16,
    Gaussian observation noise. Used when the ``ladder`` plugin is not installed."""

    def __init__(self, latent_dim: int = 32, nf: int = 32, sigma: float = 0.3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.latent_shapes = ((latent_dim,),)
        self.data_shape = (1, 16, 16)
        self.nf = nf
        self.fc = nn.Linear(latent_dim, nf * 4 * 4)
        self.up1 = nn.ConvTranspose2d(nf, nf // 2, 4, 2, 1)
        self.up2 = nn.ConvTranspose2d(nf // 2, 1, 4, 2, 1)
        self.sigma = sigma

    def sample_prior(self, n, *, generator=None):
        ref = self.fc.weight
        return (torch.randn(n, *self.latent_shapes[0], generator=generator, device=ref.device, dtype=ref.dtype),)

    def log_prior(self, z):
        return -0.5 * (z[0].pow(2).sum(-1) + z[0].shape[-1] * _LOG_2PI)

    def decode(self, z):
        h = torch.nn.functional.gelu(self.fc(z[0])).unflatten(-1, (self.nf, 4, 4))
        return torch.tanh(self.up2(torch.nn.functional.gelu(self.up1(h))))

    def log_joint(self, x, z, mask=None):
        per = -0.5 * ((x - self.decode(z)) / self.sigma) ** 2 - math.log(self.sigma) - 0.5 * _LOG_2PI
        if mask is not None:
            per = per * mask
        return self.log_prior(z) + per.flatten(1).sum(-1)


def build_model(name: str, device: str) -> tuple[str, Model, float]:
    """(label, model, step size) for a model key."""
    if name == "ladder-default":  # benchmarks/speed.py: the ladder plugin's defaults on 3x16x16
        torch.manual_seed(0)
        return "ladder defaults 3x16x16", inferkit.load_model("ladder", image_size=16, channels=3).to(device), 0.01
    if name.startswith("lg"):
        dim = int(name[2:])
        model = LinearGaussian(latent_dim=dim, data_dim=784, sigma=0.5, seed=0)
        return f"linear-gaussian d={dim}, D=784", model.to(device), 0.01
    try:  # the papers' generator, if its plugin is installed and imports
        model = inferkit.load_model("ladder", num_layers=2, nf=16, image_size=16, channels=1)
        label = "conv: ladder L=2 nf=16 1x16x16 (z " + "+".join(str(s[0]) for s in model.latent_shapes) + ")"
    except Exception as exc:  # noqa: BLE001 - any failure to build the plugin's model: fall back
        print(f"(ladder plugin unavailable: {type(exc).__name__}: {exc}; using the built-in tiny conv decoder)",
              file=sys.stderr)
        model = TinyConvDecoder()
        label = "conv: tiny decoder z32 -> 1x16x16"
    return label, model.to(device), 0.005


MODEL_KEYS = ("lg100", "lg500", "conv")


# -- the loops being timed ------------------------------------------------------------------------
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gradient_floor(model: Model, x: torch.Tensor, z, num_steps: int) -> None:
    """K forward+backward passes of log_joint w.r.t. z: the floor of K-step inference."""
    for _ in range(num_steps):
        torch.autograd.grad(model.log_joint(x, z).sum(), z)


def naive_langevin(model: Model, x: torch.Tensor, num_steps: int, step_size: float, device: str):
    """Short-run Langevin as research code often writes it (and as the papers' code does)."""
    z = [torch.randn(x.shape[0], *shape).to(device).requires_grad_() for shape in model.latent_shapes]
    for _ in range(num_steps):
        log_joint = model.log_joint(x, z)
        grads = torch.autograd.grad(log_joint.sum(), z, retain_graph=True)
        for t, g in zip(z, grads):
            noise = torch.randn(t.shape).to(device)
            t.data = t.data + step_size * g + math.sqrt(2 * step_size) * noise
    return [t.detach() for t in z]


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure_ratios(model: Model, step_size: float, batch: int, num_steps: int, reps: int, device: str) -> dict:
    generator = torch.Generator(device=device).manual_seed(0)
    x = model.sample(batch, generator=generator).detach()
    z = tuple(t.detach().requires_grad_() for t in model.sample_prior(batch, generator=generator))
    shortrun = ShortRun(num_steps=num_steps, step_size=step_size)
    langevin = Langevin(num_steps=num_steps, step_size=step_size)
    methods = {
        "floor": lambda: gradient_floor(model, x, z, num_steps),
        "shortrun": lambda: shortrun.infer(model, x),
        "langevin": lambda: langevin.infer(model, x),
        "naive_langevin": lambda: naive_langevin(model, x, num_steps, step_size, device),
    }
    names = list(methods)
    for name in names:  # warm-up
        methods[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for i in range(len(names)):
            name = names[(i + r) % len(names)]  # rotate the order every round
            times[name].append(timed(methods[name], device))
    med = {name: statistics.median(v) for name, v in times.items()}
    # Ratios are taken within each round (method and floor measured moments apart), then the median
    # over rounds: a burst of load from other processes spoils one round, not the comparison.
    ratio = {name: statistics.median(t / f for t, f in zip(times[name], times["floor"])) for name in names[1:]}
    # Best-of ratio (minimum over rounds of each): the usual estimator when other processes only ever
    # add time; reported beside the median so a contended run shows itself by the two disagreeing.
    best = {name: min(times[name]) / min(times["floor"]) for name in names[1:]}
    return {
        "K": num_steps,
        "floor_s": med["floor"],
        "per_gradient_ms": 1e3 * med["floor"] / num_steps,
        **{f"{name}_s": med[name] for name in names[1:]},
        **{f"{name}_ratio": ratio[name] for name in names[1:]},
        **{f"{name}_best_ratio": best[name] for name in names[1:]},
        "reps": reps,
    }


# -- memory: one training step in a fresh process ------------------------------------------------
def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> str:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0: ``5 > /proc/self/clear_refs``) so
    that the peak of the step alone is read back; returns the method used."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        _proc_status_bytes("VmHWM")
        return "VmHWM"
    except OSError:
        return "ru_maxrss"


def memory_child(model_key: str, num_steps: int, method: str, batch: int, device: str) -> dict:
    _, model, step_size = build_model(model_key, device)
    generator = torch.Generator(device=device).manual_seed(0)
    x = model.sample(batch, generator=generator).detach()
    how = "cuda"
    if device.startswith("cuda"):
        sync(device)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        how = reset_peak_rss()
        base = (_proc_status_bytes("VmRSS") if how == "VmHWM"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if method == "ours":
        sampler = ShortRun(num_steps=num_steps, step_size=step_size)
        inference = sampler.infer(model, x)
        loss = sampler.loss(model, x, inference)
    elif method == "control":  # the failure the measurement must see: one graph through all K steps
        z = tuple(t.requires_grad_() for t in model.sample_prior(x.shape[0], generator=generator))
        for _ in range(num_steps):
            grads = torch.autograd.grad(model.log_joint(x, z).sum(), z, create_graph=True)
            z = tuple(t + step_size * g for t, g in zip(z, grads))
        loss = -model.log_joint(x, z).mean()
    else:
        z = naive_langevin(model, x, num_steps, step_size, device)
        loss = -model.log_joint(x, tuple(z)).mean()
    loss.backward()
    sync(device)
    if how == "cuda":
        peak = torch.cuda.max_memory_allocated()
    elif how == "VmHWM":
        peak = _proc_status_bytes("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"base_bytes": base, "peak_bytes": peak, "step_bytes": peak - base, "method": how}


def measure_memory(model_key: str, args) -> dict:
    out = {}
    for method in ("ours", "naive", "control"):
        for num_steps in MEMORY_STEPS:
            command = [sys.executable, os.path.abspath(__file__), "--memory-child", model_key, str(num_steps), method,
                       "--threads", str(args.threads), "--batch", str(args.batch), "--device", args.device]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"memory subprocess failed: {done.stderr.strip()[-500:]}")
            out[f"{method}_K{num_steps}"] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


# -- kl_objective ---------------------------------------------------------------------------------
def measure_objective(model: Model, step_size: float, batch: int, num_steps: int, reps: int, device: str) -> dict:
    x = model.sample(batch, generator=torch.Generator(device=device).manual_seed(1)).detach()
    sampler = ShortRun(num_steps=num_steps, step_size=step_size)
    result = {"K": num_steps, "batch": batch}
    for logdet in ("stepwise", "exact"):
        def run(logdet=logdet):
            with torch.no_grad():
                kl_objective(model, sampler, x, estimator=LogDetEstimator(logdet),
                             generator=torch.Generator(device=device).manual_seed(0))
        try:
            run()  # warm-up (first use of torch.func compiles decompositions)
            result[f"{logdet}_s"] = statistics.median(timed(run, device) for _ in range(reps))
        except Exception as exc:  # noqa: BLE001 - report, do not abort the benchmark
            result[f"{logdet}_s"] = None
            result[f"{logdet}_error"] = f"{type(exc).__name__}: {exc}"[:200]
    return result


# -- report ---------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    title = (f"### inferkit kernel speed ({report['device']}, {report['threads']} threads, batch "
             f"{report['batch']}, median of {report['reps']} interleaved rounds)")
    machine = (f"torch {report['torch']}, {report['platform']}, load average at start {report['load_start']}, "
               f"at end {report['load_end']}")
    legend = ("Ratio = time(K-step inference) / (K x one forward+backward of log_joint w.r.t. z), same batch "
              "(1.00 = the floor; median over rounds of the within-round ratio).")
    lines = [title, "", f"command: `{report['command']}`", "", machine, "", legend, "",
             "Each cell: median ratio (best-of ratio in brackets).", "",
             "| model | K | grad ms | shortrun | langevin | naive langevin |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in report["speed"]:
        cells = [f"{row[f'{m}_ratio']:.3f} ({row[f'{m}_best_ratio']:.3f})"
                 for m in ("shortrun", "langevin", "naive_langevin")]
        lines.append(f"| {row['model']} | {row['K']} | {row['per_gradient_ms']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", f"Peak memory of one training step (inference + loss.backward()), {report['memory_method']}:", "",
              "(control: a loop that keeps one graph through all K steps, to show the measurement sees growth)", "",
              "| model | ours K=5 | ours K=50 | naive K=5 | naive K=50 | control K=5 | control K=50 |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for row in report["memory"]:
        cells = [f"{row[k]['step_bytes'] / 2**20:.2f} MiB"
                 for k in ("ours_K5", "ours_K50", "naive_K5", "naive_K50", "control_K5", "control_K50")]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    lines += ["", "Seconds per kl_objective evaluation (noise-free shortrun, one draw per example, no graph):", "",
              "| model | K | batch | stepwise log-det | exact log-det |", "|---|---:|---:|---:|---:|"]
    for row in report["objective"]:
        cells = [("error" if row[f"{m}_s"] is None else f"{row[f'{m}_s']:.3f} s") for m in ("stepwise", "exact")]
        lines.append(f"| {row['model']} | {row['K']} | {row['batch']} | {cells[0]} | {cells[1]} |")
        for m in ("stepwise", "exact"):
            if row.get(f"{m}_error"):
                lines.append(f"|  | | | {m} failed: {row[f'{m}_error']} | |")
    return "\n".join(lines)


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller objective runs")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=None, help="interleaved rounds (default 9, quick 5)")
    parser.add_argument("--models", default=",".join(MODEL_KEYS), help=f"subset of {','.join(MODEL_KEYS)}")
    parser.add_argument("--memory-child", nargs=3, metavar=("MODEL", "K", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.batch < 1:
        parser.error("--threads and --batch must be positive")
    torch.set_num_threads(args.threads)
    if args.memory_child:
        key, num_steps, method = args.memory_child
        print(json.dumps(memory_child(key, int(num_steps), method, args.batch, args.device)))
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    reps = args.reps or (5 if args.quick else 9)
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if busy > max(0, (os.cpu_count() or 1) - args.threads) + 1.5:  # 1-minute average: allow our own tail
        print(f"warning: load average {busy:.2f} on {os.cpu_count()} CPUs: other processes compete for the cores, "
              "timings (not the memory figures) will be noisy", file=sys.stderr)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODEL_KEYS]
    if unknown:
        parser.error(f"unknown model key(s) {unknown}; choose from {MODEL_KEYS}")
    report = {
        "device": args.device, "threads": args.threads, "batch": args.batch, "reps": reps, "quick": args.quick,
        "torch": torch.__version__, "platform": platform.platform(), "load_start": load_average(),
        "command": "python benchmarks/kernel_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "memory_method": ("peak resident set (VmHWM, reset through /proc/self/clear_refs after building model "
                          "and data; ru_maxrss where that is unavailable) minus the resident set at that point, "
                          "fresh subprocess per cell" if args.device == "cpu" else
                          "torch.cuda.max_memory_allocated over the allocated level, fresh subprocess per cell"),
        "speed": [], "memory": [], "objective": [],
    }
    started = time.perf_counter()
    for key in keys:
        label, model, step_size = build_model(key, args.device)
        for num_steps in STEPS:
            row = measure_ratios(model, step_size, args.batch, num_steps, reps, args.device)
            report["speed"].append({"model": label, **row})
            print(f"  {label} K={num_steps}: shortrun {row['shortrun_ratio']:.3f}, langevin "
                  f"{row['langevin_ratio']:.3f}, naive {row['naive_langevin_ratio']:.3f}", file=sys.stderr)
        if key in ("lg500", "conv"):
            report["memory"].append({"model": label, **measure_memory(key, args)})
        if key in ("lg100", "conv"):
            objective_steps = (5,) if args.quick else (5, 20)
            for num_steps in objective_steps:
                row = measure_objective(model, step_size, 4, num_steps, max(1, reps), args.device)
                report["objective"].append({"model": label, **row})
    report["load_end"] = load_average()
    report["seconds"] = time.perf_counter() - started
    print(markdown(report))
    print(f"\n(total {report['seconds']:.0f} s)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
