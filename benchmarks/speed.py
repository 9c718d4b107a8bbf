"""Speed of training the ladder model: seconds per training iteration at K=20, the K-step
ratio against its floor (K forward+backward passes of log_joint), the same ratio for the naive loop
the authors' code uses, and peak memory of a training step at K=5 and K=50.

Baselines side by side: seconds per training iteration and peak memory of one iteration
for the samplers shortrun, langevin, abp, vae and lvae on the same ladder model and batch (each
sampler trains its own copy of the same initial model; interleaved rounds, medians).

Speed options of the K-step loop: seconds per training iteration and the K-step ratio for
eager float32, compiled float32, eager bf16 and compiled bf16 side by side, with the device named
(compile warm-up timed apart; the loop run once under a host-sync check).

    python benchmarks/speed.py [--threads 2] [--batch 32] [--reps 5] [--json out.json]
    python benchmarks/speed.py --only samplers [--device cuda] [--steps 20] [--quick]
    python benchmarks/speed.py --only modes --device cuda --papers-scale   # 3x64x64, L=5, nf=64, batch 128

All figures come from one run, measured side by side (interleaved rounds, medians).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_speed

import inferkit
from inferkit.acceleration import autocast, forbid_host_sync


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


# -- baselines side by side ------------------------------------------------------------
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


# -- speed options of the K-step loop --------------------------------------------------
MODES = (("eager", "float32"), ("compiled", "float32"), ("eager", "bf16"), ("compiled", "bf16"))
PAPERS_SCALE = {"image_size": 64, "channels": 3, "layers": 5, "nf": 64, "batch": 128, "steps": 20}


def device_name(device: str) -> str:
    """The accelerator's name (``torch.cuda.get_device_name``), or the CPU's model name."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return f"CPU {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()}"


def measure_modes(args) -> dict:
    """Seconds per training iteration (infer, loss, backward, Adam step) and the K-step ratio
    (time of the K-step loop / K eager float32 forward+backward passes of log_joint w.r.t. z, as
    kernel_speed.measure_ratios defines its floor) for every mode in :data:`MODES`, on one model and
    one batch, in interleaved rounds with rotating order (medians). The first call of each mode is
    its warm-up (compilation included), timed and reported apart. Afterwards each mode's loop runs
    once under a host-sync check: on CUDA ``torch.cuda.set_sync_debug_mode("error")``; on the CPU the
    Python-level check of inferkit.acceleration.forbid_host_sync (eager modes only: a compiled step
    would recompile under it)."""
    device = args.device
    torch.manual_seed(0)
    options = {"image_size": args.image_size, "channels": args.channels}
    if args.layers is not None:
        options["num_layers"] = args.layers
    if args.nf is not None:
        options["nf"] = args.nf
    model = inferkit.load_model("ladder", **options).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    x = model.sample(args.batch, generator=generator).detach()
    z_floor = tuple(t.detach().requires_grad_() for t in model.sample_prior(args.batch, generator=generator))
    # One model for all modes: a compiled step is compiled once per precision, and Adam's tiny steps
    # leave the work per iteration unchanged.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    samplers, loops, iterations = {}, {}, {}
    for kind, precision in MODES:
        key = f"{kind} {precision}"
        compile_mode = args.compile_mode if kind == "compiled" else "none"
        sampler = inferkit.load_sampler(args.mode_sampler, num_steps=args.steps, step_size=0.01,
                                        compile=compile_mode, compile_backend=args.compile_backend).to(device)
        samplers[key] = sampler

        def loop(sampler=sampler, precision=precision):
            with autocast(device, precision):
                return sampler.infer(model, x, generator=generator)

        def iteration(sampler=sampler, precision=precision):
            with autocast(device, precision):
                inference = sampler.infer(model, x, generator=generator)
                loss = sampler.loss(model, x, inference)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        loops[key], iterations[key] = loop, iteration
    keys = list(loops)

    def floor():
        kernel_speed.gradient_floor(model, x, z_floor, args.steps)

    warm_up = {"floor": kernel_speed.timed(floor, device)}
    for key in keys:  # the first loop compiles the step; the first iteration also makes Adam's state
        warm_up[key] = kernel_speed.timed(loops[key], device) + kernel_speed.timed(iterations[key], device)
    checks = {}
    for key in keys:
        if not device.startswith("cuda") and samplers[key].compile != "none":
            checks[key] = "not run on the CPU (tests check the compiled step with aot_eager)"
            continue
        try:
            with forbid_host_sync(device, python_level=not device.startswith("cuda")):
                loops[key]()
            kernel_speed.sync(device)
            checks[key] = "no host sync"
        except RuntimeError as exc:  # HostSyncError, or CUDA's sync debug mode
            checks[key] = f"SYNC: {str(exc).splitlines()[0][:120]}"
    loop_times = {key: [] for key in keys}
    iteration_times = {key: [] for key in keys}
    floor_times = []
    for r in range(args.reps):
        floor_times.append(kernel_speed.timed(floor, device))
        for i in range(len(keys)):
            key = keys[(i + r) % len(keys)]
            loop_times[key].append(kernel_speed.timed(loops[key], device))
            iteration_times[key].append(kernel_speed.timed(iterations[key], device))
    base = statistics.median(loop_times["eager float32"])
    rows = []
    for key in keys:
        loop_s = statistics.median(loop_times[key])
        rows.append({"mode": key, "seconds_per_iteration": statistics.median(iteration_times[key]),
                     "loop_seconds": loop_s,
                     "k_step_ratio": statistics.median(t / f for t, f in zip(loop_times[key], floor_times)),
                     "loop_speedup_over_eager_float32": base / loop_s, "warm_up_seconds": warm_up[key],
                     "host_sync_check": checks[key]})
    return {"device": device, "device_name": device_name(device), "torch": torch.__version__,
            "model": (f"ladder L={model.num_layers}, z {'+'.join(str(s[0]) for s in model.latent_shapes)}, "
                      f"nf={model.config.nf}, {args.channels}x{args.image_size}x{args.image_size}"),
            "batch": args.batch, "steps": args.steps, "sampler": args.mode_sampler,
            "compile_mode": args.compile_mode, "compile_backend": args.compile_backend, "reps": args.reps,
            "threads": args.threads, "floor_seconds": statistics.median(floor_times),
            "floor_warm_up_seconds": warm_up["floor"], "rows": rows}


def modes_markdown(result: dict) -> str:
    """The modes side by side, and the speed targets read off them (not asserted)."""
    lines = [(f"## K-step loop modes: {result['model']}, batch {result['batch']}, K={result['steps']}, "
              f"{result['sampler']}, on {result['device_name']} ({result['device']}, torch "
              f"{result['torch']}, {result['threads']} threads), median of {result['reps']} interleaved "
              "rounds"), "",
             (f"compiled = torch.compile of one step, mode {result['compile_mode']}, backend "
              f"{result['compile_backend']}; bf16 = bfloat16 autocast of the generator, latents float32. "
              f"K-step ratio = loop time / K eager float32 forward+backward passes of log_joint "
              f"({result['floor_seconds']:.4f} s)."), "",
             ("| mode | seconds per training iteration | K-step loop s | K-step ratio | loop speed-up vs "
              "eager float32 | warm-up s (compile) | host-sync check |"),
             "|---|---:|---:|---:|---:|---:|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['mode']} | {row['seconds_per_iteration']:.4f} | {row['loop_seconds']:.4f} | "
                     f"{row['k_step_ratio']:.3f} | {row['loop_speedup_over_eager_float32']:.2f}x | "
                     f"{row['warm_up_seconds']:.1f} | {row['host_sync_check']} |")
    best = next(row for row in result["rows"] if row["mode"] == "compiled bf16")
    speedup = best["loop_speedup_over_eager_float32"]
    lines += ["", (f"Targets: compiled bf16 loop {speedup:.2f}x faster than eager float32 (target "
                   f">= 2), K-step ratio {best['k_step_ratio']:.3f} (target < 1.0).")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--only", choices=("all", "kernel", "samplers", "modes"), default="all",
                        help="kernel: the K-step figures; samplers: the baselines side by side; modes: "
                             "eager/compiled x float32/bf16 (in all only with --device cuda: compiling is "
                             "slow on a CPU)")
    parser.add_argument("--steps", type=int, default=20, help="K of shortrun, langevin and abp (samplers)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the samplers section)")
    parser.add_argument("--quick", action="store_true", help="2 rounds: a check that it runs, not a measurement")
    modes = parser.add_argument_group("modes (the ladder model these figures use)")
    modes.add_argument("--image-size", type=int, default=16)
    modes.add_argument("--channels", type=int, default=3)
    modes.add_argument("--layers", type=int, default=None, help="[default: the ladder's, 3]")
    modes.add_argument("--nf", type=int, default=None, help="[default: the ladder's, 16]")
    modes.add_argument("--papers-scale", action="store_true",
                       help="3x64x64, 5 layers, nf=64, batch 128, K=20 (the papers' scale)")
    modes.add_argument("--mode-sampler", choices=("shortrun", "langevin"), default="shortrun")
    modes.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"), default=None,
                       help="[default: reduce-overhead on cuda (CUDA graphs of one step), default on cpu]")
    modes.add_argument("--compile-backend", default="inductor", help="e.g. aot_eager for a quick check")
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
    if args.papers_scale:
        for name, value in PAPERS_SCALE.items():
            setattr(args, name, value)
    if args.compile_mode is None:
        args.compile_mode = "reduce-overhead" if args.device.startswith("cuda") else "default"
    report = {}
    if args.only == "modes" or (args.only == "all" and args.device.startswith("cuda")):
        report["modes"] = measure_modes(args)
        print(modes_markdown(report["modes"]) + "\n")
    if args.only == "modes":
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(report, handle, indent=2)
        return 0
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
