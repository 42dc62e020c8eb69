r"""Benchmark: how fast a researcher iterates, the commands rerun all day, cold and again.

Times side by side, each command as a subprocess from outside (interpreter start to process
exit) and broken down by what its runs report (`adamlab.training.train.format_phases`: the
phases of every run, the process's start-up before its first run and the time before each
run's first step, read by `time_to_result.phases_lines`):

- `adamlab compare` (its default: adam and adamw, ours and the optax twin, 3 seeds),
- `adamlab train --config mnist`, beside the same job in PyTorch eager
  (`time_to_result.export_mnist`, `time_to_result.run_torch`: the job time_to_result.py
  times, here in the interpreter `--torch_python`),
- one study (`adamlab study schedules`),
- the digits benchmark (`adamlab benchmark --workloads digits_cnn`, seven optimizers, 16
  trials, 5 seeds: the command docs/benchmark.md records),

each twice: "cold", its compilation cache and its decoded-data cache fresh empty directories,
then "second", the same command again on the caches the first filled
(`ADAMLAB_COMPILATION_CACHE_DIR`, `ADAMLAB_DATA_CACHE_DIR`; every other process setting is the
command's own). Each run writes to a fresh temporary workdir. The jobs
alternate (`--repeats`, the order reversed every other repeat); medians. The JSON (default
benchmarks/results/iteration_cpu.json) records every run, the machine and the load average
before and after, and the ratios the issue sets targets for (`ratios`): on a shared machine the
absolute times move with the load, so take the numbers on a quiet one.

    python benchmarks/iteration.py --torch_python /path/to/torch/python   # MNIST prepared (TFDS)
    python benchmarks/iteration.py --quick --out /tmp/iteration.json      # smoke: tiny runs

`--jax_times` adds, per command, the seconds jax itself logged tracing, lowering and compiling
(or loading from the cache) its programs (`JAX_LOG_COMPILES=1`; its logging costs a little
time of its own): what of a second run's compile phase is spent before the cache lookup.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from adamlab import runtime

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import time_to_result  # noqa: E402

CACHES = ("cold", "second")
BENCHMARK = (
    "--workloads digits_cnn --optimizers adam,adamw,nadam,radam,amsgrad,adabelief,sgd "
    "--trials 16 --seeds 5"
).split()


def commands(quick: bool) -> dict[str, list[str]]:
    """Job name -> the `adamlab` command's arguments (without --workdir); `quick`: each run
    a few steps, one seed, the benchmark one optimizer and two trials."""
    steps = ["--config.train.num_steps=6", "--config.optimizer.warmup_steps=2"] if quick else []
    jobs = {
        "compare": ["compare", *(["--seeds", "1", *steps] if quick else [])],
        "train_mnist": ["train", "--config", "mnist", *steps],
        "study": ["study", "schedules", *(["--seeds", "1", *steps] if quick else [])],
        "benchmark": ["benchmark", *BENCHMARK],
    }
    if quick:
        jobs["benchmark"] = "benchmark --workloads digits_cnn --optimizers adam --trials 2 "
        jobs["benchmark"] = jobs["benchmark"].split() + "--seeds 1 --noheatmap".split()
    return jobs


def run_command(args: list[str], cache_dir: pathlib.Path, jax_times: bool = False) -> dict:
    """`python -m adamlab ARGS --workdir <fresh>` with its compilation cache and its decoded
    data in `cache_dir`: its wall time from outside, each run's phases and what came before
    and after them; with `jax_times`, also the seconds jax logged tracing, lowering and
    compiling (or loading from the cache) its programs (`jax_seconds`)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    if jax_times:
        env["JAX_LOG_COMPILES"] = "1"
    env |= {runtime.CACHE_SWITCH: "1", runtime.CACHE_DIR_ENV: str(cache_dir / "jax")}
    env |= {runtime.DATA_CACHE_SWITCH: "1", runtime.DATA_CACHE_DIR_ENV: str(cache_dir / "data")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    with tempfile.TemporaryDirectory() as workdir:
        argv = [sys.executable, "-m", "adamlab", *args, "--workdir", f"{workdir}/run"]
        launched = time.time()
        done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        ended = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    runs = time_to_result.phases_lines(done.stderr)
    if not runs:
        raise RuntimeError(f"{' '.join(argv)} logged no 'phases:' line")
    summary = summarize(launched, ended, runs)
    return summary | ({"jax_s": jax_seconds(done.stderr)} if jax_times else {})


# jax's own log lines with JAX_LOG_COMPILES=1 (jax._src.dispatch.log_elapsed_time), by stage.
JAX_STAGES = {
    "trace": "Finished tracing",
    "lower": "Finished jaxpr to MLIR module conversion",
    "compile": "Finished XLA compilation",  # A compilation, or a load from the cache.
}


def jax_seconds(log: str) -> dict[str, float]:
    """Seconds per stage (`JAX_STAGES`) summed over every program that `log`, a command's
    stderr with JAX_LOG_COMPILES=1, says jax traced, lowered and compiled. A message printed
    twice (by the command's log handler and by Python's default one) counts once: its seconds,
    to the nanosecond, tell it from another program's."""
    messages = set(re.findall(r"(Finished .*) in ([0-9.e+-]+) sec$", log, re.M))
    return {
        stage: sum(float(t) for m, t in messages if m.startswith(prefix))
        for stage, prefix in JAX_STAGES.items()
    }


def summarize(launched: float, ended: float, runs: list[dict]) -> dict:
    """A command's seconds: its wall time; per phase, summed over its runs; the time before its
    first step (the first run's `first_step`: start-up, setup, data, compiling); what came
    before its first run (interpreter, imports, config, every run's preparation) and after its
    last (reports, figures, exit); and every run's line."""
    first, last = runs[0], runs[-1]
    phases = {k: sum(r["phases"].get(k, 0.0) for r in runs) for k in first["phases"]}
    return {
        "wall_s": ended - launched,
        "phases_s": phases,
        "compile_and_setup_s": phases.get("compile", 0.0) + phases.get("setup", 0.0),
        "before_first_step_s": first.get("first_step", float("nan")),
        "before_first_run_s": first["logged"] - first["run"] - launched,
        "after_last_run_s": ended - last["logged"],
        "runs": [{k: v for k, v in r.items() if k != "logged"} for r in runs],
    }


def medians(runs: list[dict]) -> dict:
    """Per-key medians of the numbers of `runs` (and of their dicts of numbers)."""
    numbers = {k: v for k, v in runs[0].items() if k != "runs"}
    return time_to_result.medians([{k: r[k] for k in numbers} for r in runs])


def ratios(median: dict, recorded_benchmark_s: float) -> dict:
    """The issue's targets, as measured: the second run's compile and setup over the first's
    (at most 0.2), the whole second compare over the first (0.6), `adamlab train --config
    mnist` over PyTorch (1.0) and the cold digits benchmark over its recorded wall time
    (0.75)."""
    out = {}
    for job, sides in median.items():
        if set(CACHES) <= set(sides):
            cold, second = sides["cold"], sides["second"]
            out[f"{job}_second_over_cold_compile_and_setup"] = (
                second["compile_and_setup_s"] / cold["compile_and_setup_s"]
            )
            out[f"{job}_second_over_cold_wall"] = second["wall_s"] / cold["wall_s"]
    if "torch" in median.get("train_mnist", {}):
        for cache in CACHES:
            out[f"train_mnist_{cache}_over_torch_wall"] = (
                median["train_mnist"][cache]["wall_s"] / median["train_mnist"]["torch"]["wall_s"]
            )
    if "cold" in median.get("benchmark", {}):
        out["benchmark_cold_over_recorded_wall"] = (
            median["benchmark"]["cold"]["wall_s"] / recorded_benchmark_s
        )
    return out


def machine(torch_python: str | None) -> dict:
    """train_step's machine record (CPU, cores, jax), XLA_FLAGS, and the PyTorch side's
    version and threads (asked of `torch_python`: this interpreter may have no torch)."""
    from benchmarks import train_step

    out = {**train_step.machine(), "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if torch_python:
        code = "import torch; print(torch.__version__, torch.get_num_threads())"
        done = subprocess.run([torch_python, "-c", code], capture_output=True, text=True)
        version, threads = done.stdout.split()
        out |= {"torch": version, "torch_threads": int(threads)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each job, alternating")
    parser.add_argument("--jobs", default="compare,train_mnist,study,benchmark")
    parser.add_argument("--quick", action="store_true", help="tiny runs (smoke)")
    parser.add_argument(
        "--jax_times",
        action="store_true",
        help="also jax's seconds tracing, lowering and compiling (JAX_LOG_COMPILES=1)",
    )
    parser.add_argument(
        "--torch_python", default=None, help="an interpreter with torch (none: no PyTorch job)"
    )
    parser.add_argument(
        "--recorded_benchmark_s",
        type=float,
        default=535.0,
        help="the digits benchmark's recorded wall time (docs/benchmark.md)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/iteration_cpu.json"))
    args = parser.parse_args()
    jobs = {k: v for k, v in commands(args.quick).items() if k in args.jobs.split(",")}
    load_before, started = os.getloadavg(), time.time()
    runs = {job: {side: [] for side in CACHES} for job in jobs}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        torch = args.torch_python and "train_mnist" in jobs
        if torch:
            settings = time_to_result.export_mnist("mnist", tmp / "mnist.npz")
            if args.quick:
                settings.update(num_steps=6, warmup_steps=2)
            runs["train_mnist"]["torch"] = []
        for r in range(args.repeats):
            for job in list(jobs)[:: 1 if r % 2 == 0 else -1]:
                cache = tmp / f"cache_{job}_{r}"  # Fresh and empty: cold.
                for side in CACHES:
                    runs[job][side].append(run_command(jobs[job], cache, args.jax_times))
                    print(f"{job} {side}: {runs[job][side][-1]['wall_s']:.1f} s", flush=True)
                if torch and job == "train_mnist":
                    run = time_to_result.run_torch(
                        tmp / "mnist.npz", settings, r, args.torch_python
                    )
                    runs[job]["torch"].append(run)
                    print(f"{job} torch: {run['wall_s']:.1f} s", flush=True)
    median = {job: {s: medians_of(runs[job], s) for s in runs[job]} for job in runs}
    report = {
        "benchmark": "iteration",
        "command": " ".join(["python", *sys.argv]),
        "commands": {job: ["adamlab", *a] for job, a in jobs.items()},
        "median": median,
        "ratios": ratios(median, args.recorded_benchmark_s),
        "runs": runs,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "wall_s": time.time() - started,
        "machine": machine(args.torch_python),
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"median": median, "ratios": report["ratios"]}, indent=2))
    print(f"load average {load_before} -> {report['load_average_after']}; wrote {out}")


def medians_of(job_runs: dict, side: str) -> dict:
    """The medians of one side of a job: a command's (`medians`) or PyTorch's."""
    if side in CACHES:
        return medians(job_runs[side])
    return time_to_result.medians(job_runs[side])


if __name__ == "__main__":
    main()
