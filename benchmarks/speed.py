"""Speed of training the ladder model (issue 4): seconds per training iteration at K=20, the K-step
ratio against its floor (K forward+backward passes of log_joint), the same ratio for the naive loop
the authors' code uses, and peak memory of a training step at K=5 and K=50.

Baselines side by side (issue 6): seconds per training iteration and peak memory of one iteration
for the samplers shortrun, langevin, abp, vae and lvae on the same ladder model and batch (each
sampler trains its own copy of the same initial model; interleaved rounds, medians).

    python benchmarks/speed.py [--threads 2] [--batch 32] [--reps 5] [--json out.json]
    python benchmarks/speed.py --only samplers [--device cuda] [--steps 20] [--quick]

All figures come from one run, measured side by side (interleaved rounds, medians).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_speed

import inferkit


def seconds_per_iteration(model, sampler, x, reps: int) -> float:
    """One Algorithm-1 iteration without tuning: infer z_K, loss, backward, Adam step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def iteration():
        inference = sampler.infer(model, x)
        loss = sampler.loss(model, x, inference)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    iteration()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        iteration()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- baselines side by side (issue 6) -----------------------------------------------------------
SAMPLERS = ("shortrun", "langevin", "abp", "vae", "lvae")


def sampler_options(name: str, steps: int) -> dict:
    """The options each sampler is benchmarked with: K = ``steps`` for the gradient-based ones (step
    size 0.01 as above; ABP at its default step size), defaults for the amortized encoders."""
    return {"shortrun": {"num_steps": steps, "step_size": 0.01}, "langevin": {"num_steps": steps, "step_size": 0.01},
            "abp": {"num_steps": steps}, "vae": {}, "lvae": {}}[name]


def build_ladder(device: str):
    torch.manual_seed(0)
    return inferkit.load_model("ladder", image_size=16, channels=3).to(device)


def training_iteration(name: str, batch: int, steps: int, device: str):
    """(iteration function, model) for one Algorithm-1 iteration of sampler ``name``: infer (ABP: from
    the persistent chains of the batch's examples), loss, backward, one Adam step over the model's and
    the sampler's parameters. The model is a fresh copy of the same initial ladder model."""
    model = build_ladder(device)
    x = model.sample(batch, generator=torch.Generator(device=device).manual_seed(0)).detach()
    index = torch.arange(batch, device=device)
    sampler = inferkit.load_sampler(name, **sampler_options(name, steps))
    sampler.setup(model, num_examples=batch)
    sampler.to(device)
    parameters = [p for p in list(model.parameters()) + list(sampler.parameters()) if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(1)

    def iteration():
        inference = sampler.infer(model, x, index=index, generator=generator)
        loss = sampler.loss(model, x, inference)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    iteration.sampler = sampler
    return iteration, model


def state_bytes(sampler) -> int:
    """Bytes of the sampler's own state: parameters, buffers and extra state (ABP's chain store)."""
    total = 0
    for value in sampler.state_dict().values():
        tensors = [value] if torch.is_tensor(value) else [
            t for v in (value.values() if isinstance(value, dict) else [value])
            for t in (v if isinstance(v, (list, tuple)) else [v]) if torch.is_tensor(t)]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def measure_samplers(batch: int, steps: int, reps: int, device: str, threads: int) -> dict:
    """Seconds per training iteration of every sampler (interleaved rounds, rotating order; median and
    best-of) and the peak memory of one iteration (fresh subprocess per sampler)."""
    built = {name: training_iteration(name, batch, steps, device) for name in SAMPLERS}
    iterations = {name: built[name][0] for name in SAMPLERS}
    latent_bytes = built["abp"][1].latent_dim * 4
    for name in SAMPLERS:  # warm-up: Adam state, ABP chains seen once, lazy kernels
        iterations[name]()
    sizes = {name: state_bytes(iterations[name].sampler) for name in SAMPLERS}
    times: dict[str, list[float]] = {name: [] for name in SAMPLERS}
    for r in range(reps):
        for i in range(len(SAMPLERS)):
            name = SAMPLERS[(i + r) % len(SAMPLERS)]
            times[name].append(kernel_speed.timed(iterations[name], device))
    rows = []
    for name in SAMPLERS:
        command = [sys.executable, os.path.abspath(__file__), "--sampler-memory-child", name, "--batch", str(batch),
                   "--steps", str(steps), "--device", device, "--threads", str(threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory subprocess for {name} failed: {done.stderr.strip()[-500:]}")
        memory = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"sampler": name, "options": sampler_options(name, steps),
                     "seconds_per_iteration": statistics.median(times[name]), "best_seconds": min(times[name]),
                     "peak_step_bytes": memory["step_bytes"], "memory_method": memory["method"],
                     "sampler_state_bytes": sizes[name]})
    return {"batch": batch, "steps": steps, "reps": reps, "device": device, "rows": rows,
            "abp_store_bytes_per_example": latent_bytes}


def sampler_memory_child(name: str, batch: int, steps: int, device: str) -> dict:
    """Peak memory of the first training iteration over the level after building the model, the
    sampler (its encoder or chain store), the optimiser and the batch (as kernel_speed.py measures a
    training step); it includes the Adam moments the step creates. CPU: resident set, CUDA: allocated."""
    iteration, _ = training_iteration(name, batch, steps, device)
    kernel_speed.sync(device)
    if device.startswith("cuda"):
        how = "cuda"
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        how = kernel_speed.reset_peak_rss()
        base = (kernel_speed._proc_status_bytes("VmRSS") if how == "VmHWM"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    iteration()
    kernel_speed.sync(device)
    if how == "cuda":
        peak = torch.cuda.max_memory_allocated()
    elif how == "VmHWM":
        peak = kernel_speed._proc_status_bytes("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"step_bytes": peak - base, "method": how}


def samplers_markdown(result: dict, label: str) -> str:
    lines = [(f"## Baselines side by side: {label}, {result['device']}, median of {result['reps']} interleaved "
             f"rounds (best-of in brackets)"), "",
             "| sampler | options | seconds per training iteration | peak memory of an iteration | sampler state |",
             "|---|---|---:|---:|---:|"]
    for row in result["rows"]:
        options = ", ".join(f"{k}={v}" for k, v in row["options"].items()) or "defaults"
        lines.append(f"| {row['sampler']} | {options} | {row['seconds_per_iteration']:.3f} "
                     f"({row['best_seconds']:.3f}) | {row['peak_step_bytes'] / 2**20:.1f} MiB | "
                     f"{row['sampler_state_bytes'] / 2**20:.2f} MiB |")
    method = result["rows"][0]["memory_method"]
    lines += ["", (f"Peak memory: {'torch.cuda.max_memory_allocated' if method == 'cuda' else method} over the "
              "level after building model, sampler, optimiser and batch, during the first iteration (Adam "
              "moments included), one fresh process per sampler. Sampler state: the encoder's parameters, or "
              f"ABP's chain store, here for {result['batch']} examples ({result['abp_store_bytes_per_example']} "
              "bytes per training example).")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--only", choices=("all", "kernel", "samplers"), default="all",
                        help="kernel: the K-step figures; samplers: the baselines side by side")
    parser.add_argument("--steps", type=int, default=20, help="K of shortrun, langevin and abp (samplers)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the samplers section)")
    parser.add_argument("--quick", action="store_true", help="2 rounds: a check that it runs, not a measurement")
    parser.add_argument("--sampler-memory-child", metavar="SAMPLER", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.batch < 1 or args.reps < 1 or args.steps < 1:
        parser.error("--threads, --batch, --reps and --steps must be positive")
    torch.set_num_threads(args.threads)
    if args.sampler_memory_child:
        print(json.dumps(sampler_memory_child(args.sampler_memory_child, args.batch, args.steps, args.device)))
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.quick:
        args.reps = 2
    report = {}
    if args.only in ("all", "samplers"):
        model = build_ladder("cpu")
        label = (f"ladder defaults (L={model.num_layers}, z {'+'.join(str(s[0]) for s in model.latent_shapes)}, "
                 f"nf={model.config.nf}, 3x16x16), batch {args.batch}, {args.threads} threads")
        report["samplers"] = measure_samplers(args.batch, args.steps, args.reps, args.device, args.threads)
        report["samplers"]["model"] = label
        print(samplers_markdown(report["samplers"], label) + "\n")
    if args.only == "samplers":
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(report, handle, indent=2)
        return 0
    torch.manual_seed(0)
    model = inferkit.load_model("ladder", image_size=16, channels=3)
    label = (f"ladder defaults (L={model.num_layers}, z {'+'.join(str(s[0]) for s in model.latent_shapes)}, nf={model.config.nf}, 3x16x16), "
             f"batch {args.batch}, {args.threads} threads")
    sampler = inferkit.load_sampler("shortrun", num_steps=20, step_size=0.01)
    x = model.sample(args.batch, generator=torch.Generator().manual_seed(0)).detach()
    report.update({"model": label, "seconds_per_iteration_K20": seconds_per_iteration(model, sampler, x, args.reps)})
    report["ratios_K20"] = kernel_speed.measure_ratios(model, 0.01, args.batch, 20, args.reps, "cpu")
    memory_args = argparse.Namespace(threads=args.threads, batch=args.batch, device="cpu")
    report["memory"] = kernel_speed.measure_memory("ladder-default", memory_args)
    r = report["ratios_K20"]
    mem = report["memory"]
    mib = 1 / 2**20
    print(f"## {label}\n")
    print("| figure | value |\n|---|---|")
    print(f"| seconds per training iteration (K=20, no tuning) | {report['seconds_per_iteration_K20']:.3f} |")
    print(f"| K x (forward+backward of log_joint), K=20 | {r['floor_s']:.3f} s |")
    print(f"| ratio shortrun / floor (median, best-of) | {r['shortrun_ratio']:.3f}, {r['shortrun_best_ratio']:.3f} |")
    print(f"| ratio langevin / floor | {r['langevin_ratio']:.3f}, {r['langevin_best_ratio']:.3f} |")
    print(f"| ratio naive Langevin loop / floor | {r['naive_langevin_ratio']:.3f}, "
          f"{r['naive_langevin_best_ratio']:.3f} |")
    for method in ("ours", "naive", "control"):
        k5, k50 = mem[f"{method}_K5"], mem[f"{method}_K50"]
        print(f"| peak memory of a training step, {method}, K=5 / K=50 | {k5['step_bytes'] * mib:.1f} / "
              f"{k50['step_bytes'] * mib:.1f} MiB ({k5['method']}) |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
