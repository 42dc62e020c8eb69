r"""Benchmark: time to result of `adamlab train --config mnist`, and the same job in PyTorch.

Times the whole command as a subprocess, wall clock from outside (interpreter start to process
exit), and breaks it down with what the run reports itself: the phases of `RunsResult.phases`
(`adamlab.training.train.PHASES`: setup, data, compile, train, evaluate, save, test, teardown),
which the run logs on one INFO line ("phases: ...") at its end and writes to result.json.
From outside come the rest: everything before the run started (interpreter, imports of jax,
flax, TensorFlow/TFDS and adamlab, the config) = the time of that log line less the run's
own time, and the process exit = the time after that line. The imports are also broken down
in a separate process (`python -X importtime`: the first import of each package, cumulative,
so a package's share includes what it imports first).

Beside it, the same job in plain PyTorch in a subprocess: the same CNN
(`benchmarks/torch_cnn.py`), `torch.optim.Adam(fused=True)`, the same warmup + cosine schedule
and step count (steps per epoch = training examples // batch, times the epochs), batch 128, one
evaluation on the test split at the end. Its data are in-memory tensors: the parent process
reads MNIST's training split (less the validation fraction, exactly adamlab's examples, already
normalized by adamlab's pipeline) and test split once through TFDS into an .npz in a temporary
directory, so the PyTorch side pays neither TensorFlow's import nor its pipelines (adamlab's
command pays both: that is part of what is measured). Its wall time is the child's, from
outside, loading the .npz included.

Also recorded, in a child process: the seconds of the start-up work the training code no
longer does (`startup_costs_job`: a second config validation, the rows' parameter norm by
`optax.tree.norm`), the before/after of those changes.

With `--malloc_default`, one more job: the same `adamlab train` with glibc's default allocation
(`ADAMLAB_KEEP_FREED_MEMORY=0`; the command otherwise keeps freed memory for reuse,
`adamlab.runtime`); with `--ynnpack_convolutions`, one with XLA:CPU's YNNPACK
convolutions (`ADAMLAB_EIGEN_CONVOLUTIONS=0`; the command otherwise routes them to Eigen,
`adamlab.runtime`); with `--gc_default`, one with Python's default garbage collection
(`ADAMLAB_GC_FREEZE=0`; the command otherwise keeps the collector off the imported libraries'
objects, `adamlab.runtime`): each switch's effect on the whole command. Every job compiles
its programs: the persistent compilation cache is off (`ADAMLAB_COMPILATION_CACHE=0`).

The jobs alternate (`--repeats`); medians. The JSON (default
benchmarks/results/time_to_result_cpu.json) records every run, the machine and the load average
before and after: on a shared machine the absolute times move with the load.

    pip install -e '.[bench]'   # torch, the CPU wheel
    python benchmarks/time_to_result.py                      # MNIST must be prepared (TFDS)
    python benchmarks/time_to_result.py --repeats 1 --num_steps 50 --out /tmp/t.json  # smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from adamlab import runtime

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import child  # noqa: E402

PACKAGES = ("jax", "flax", "optax", "orbax", "tensorflow", "tensorflow_datasets", "adamlab")
_PHASES_LINE = re.compile(r"^(\S+ \S+) INFO phases: (.*)$", re.MULTILINE)


# ---------------------------------------------------------------------------- adamlab's side


def phases_lines(stderr: str) -> list[dict]:
    """Every run's "phases: setup 1.00 s, ..., teardown 0.30 s; run 9.00 s; startup 3.00 s,
    first_step 5.00 s" log line (`train.format_phases`), in order: {"logged": epoch seconds of
    the line, "phases": {phase: seconds}, "run": the run's own time, and "startup",
    "first_step" where the line has them}."""
    lines = []
    for stamp, text in _PHASES_LINE.findall(stderr):
        logged = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        phases, run, *before = text.split("; ")
        seconds = lambda part: {k: float(v) for k, v in re.findall(r"(\w+) (-?[\d.]+|nan) s", part)}
        lines.append(
            {
                "logged": logged,
                "phases": seconds(phases),
                **seconds(run),
                **seconds(" ".join(before)),
            }
        )
    return lines


def parse_phases_line(stderr: str) -> tuple[float, dict[str, float], float]:
    """(epoch seconds of the line, {phase: seconds}, the run's own time) of the first
    "phases:" log line (`phases_lines`)."""
    lines = phases_lines(stderr)
    if not lines:
        raise ValueError("no 'phases:' line in the command's log")
    return lines[0]["logged"], lines[0]["phases"], lines[0]["run"]


def breakdown(launched: float, ended: float, logged: float, phases: dict, run_total: float):
    """Seconds of the whole command by part: before the run, its phases, what no phase counts
    (logging, divergence checks: "other"), and the process exit after its last line."""
    before = logged - launched - run_total
    return {
        "interpreter_imports_config": before,
        **phases,
        "other": run_total - sum(phases.values()),
        "process_exit": ended - logged,
    }


# The command's process settings, and the `adamlab train` jobs that switch one of them off.
COMMAND_ENV = {
    runtime.MEMORY_SWITCH: "1",
    runtime.CONV_SWITCH: "1",
    runtime.GC_SWITCH: "1",
    runtime.CACHE_SWITCH: "0",  # Cold: every job compiles, as the recorded results did.
}
ADAMLAB_SIDES = {
    "adamlab": {},
    # glibc's default allocation
    "adamlab_malloc_default": {runtime.MEMORY_SWITCH: "0"},
    # XLA:CPU's default convolutions, YNNPACK
    "adamlab_ynnpack_convolutions": {runtime.CONV_SWITCH: "0"},
    # Python's garbage collection at import and exit
    "adamlab_gc_default": {runtime.GC_SWITCH: "0"},
}


def adamlab_job(config: str, overrides: list[str], side: str = "adamlab") -> dict:
    """One `adamlab train` in a fresh temporary workdir, timed from outside, with the process
    settings of `side` (`ADAMLAB_SIDES`: the command's own, or one of them switched off)."""
    command = pathlib.Path(sys.executable).with_name("adamlab")
    env = {**os.environ, **COMMAND_ENV, **ADAMLAB_SIDES[side]}
    with tempfile.TemporaryDirectory() as workdir:
        argv = [str(command), "train", "--config", config, "--workdir", workdir, *overrides]
        launched = time.time()
        done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        ended = time.time()
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
        result = json.loads((pathlib.Path(workdir) / "result.json").read_text())
    logged, phases, run_total = parse_phases_line(done.stderr)
    return {
        "wall_s": ended - launched,
        "test_accuracy": result["finals"][0]["test_accuracy"],
        "num_steps": result["num_steps"],
        "steps_per_sec": result["steps_per_sec"],
        "breakdown_s": breakdown(launched, ended, logged, phases, run_total),
        "result_json_phases_s": result["phases"],
    }


def import_times() -> dict:
    """Seconds to start the interpreter, and the first import of each of `PACKAGES` when
    `adamlab train` imports its loop (cumulative, `python -X importtime`, one process)."""
    started = time.time()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    interpreter = time.time() - started
    code = "import adamlab.cli; from adamlab.training import train"
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    )
    wall = time.time() - started
    first = {}
    for line in done.stderr.splitlines():
        fields = line.split("|")
        if len(fields) != 3 or not fields[1].strip().isdigit():
            continue
        name = fields[2].strip()
        if name in PACKAGES and name not in first:  # Printed when each import finishes.
            first[name] = int(fields[1]) / 1e6
    return {
        "python_c_pass_s": interpreter,
        "importing_the_loop_wall_s": wall,
        "first_import_s": first,
    }


# ---------------------------------------------------------------------------- PyTorch's side


def export_mnist(config_name: str, path: pathlib.Path) -> dict:
    """Writes adamlab's training examples (the train split less validation) and the test
    split, normalized as adamlab's pipeline does, to `path` (.npz, NCHW float32)."""
    from adamlab import config_dict, data

    config = config_dict.load_config(config_name)
    arrays = {}
    for split in ("train", "test"):
        batches = list(data.eval_batches(config.data, split=split, global_batch_size=10_000))
        mask = np.concatenate([b["mask"] for b in batches])
        images = np.concatenate([b["image"] for b in batches])[mask]
        arrays[f"{split}_images"] = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        arrays[f"{split}_labels"] = np.concatenate([b["label"] for b in batches])[mask]
    np.savez(path, **arrays)
    optimizer = config.optimizer
    return {
        "batch_size": config.train.batch_size,
        "num_epochs": config.train.num_epochs,
        "learning_rate": optimizer.learning_rate,
        "warmup_steps": optimizer.warmup_steps,
        "num_train": len(arrays["train_labels"]),
        "num_test": len(arrays["test_labels"]),
    }


def warmup_cosine(count: int, warmup: int, total: int) -> float:
    """The factor of the peak rate at optimizer step `count` (0-based), as optax's
    warmup_cosine_decay_schedule(0, peak, warmup, total, 0) that adamlab uses."""
    if count < warmup:
        return count / warmup
    progress = min(count - warmup, total - warmup) / (total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def torch_job(npz: str, settings: dict, seed: int) -> dict:
    """The PyTorch job (runs in the child; imports torch alone): train, then test once."""
    import torch
    import torch.nn.functional as F

    from benchmarks.torch_cnn import TorchCNN

    torch.manual_seed(seed)
    loaded = np.load(npz)
    train_x, train_y = (torch.from_numpy(loaded[f"train_{k}"]) for k in ("images", "labels"))
    test_x, test_y = (torch.from_numpy(loaded[f"test_{k}"]) for k in ("images", "labels"))
    train_y, test_y = train_y.long(), test_y.long()
    batch, epochs = settings["batch_size"], settings["num_epochs"]
    per_epoch = len(train_y) // batch
    total = max(1, math.ceil(epochs * per_epoch))  # As experiment.total_steps.
    total = settings.get("num_steps") or total
    model = TorchCNN(tuple(train_x.shape[2:]) + (train_x.shape[1],))
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["learning_rate"], fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda c: warmup_cosine(c, settings["warmup_steps"], total)
    )
    step = 0
    while step < total:
        order = torch.randperm(len(train_y))
        for i in range(min(per_epoch, total - step)):
            index = order[i * batch : (i + 1) * batch]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(train_x[index]), train_y[index]).backward()
            optimizer.step()
            scheduler.step()
            step += 1
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test_y), 1000):
            logits = model(test_x[start : start + 1000])
            correct += int((logits.argmax(1) == test_y[start : start + 1000]).sum())
    return {"num_steps": step, "test_accuracy": correct / len(test_y)}


def run_torch(npz: pathlib.Path, settings: dict, seed: int, python: str = sys.executable) -> dict:
    """`torch_job` in a child process of the interpreter `python` (one with torch and numpy),
    timed from outside."""
    argv = [python, __file__, "--torch_job", str(npz), "--settings", json.dumps(settings)]
    argv += ["--seed", str(seed)]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    launched = time.time()
    result = child.json_of(argv, env=env)
    return {"wall_s": time.time() - launched, **result}


# ---------------------------------------------------------------------------- start-up costs


def startup_costs_job(config_name: str) -> dict:
    """Seconds of the start-up work the training code no longer does (in a fresh process, as
    `adamlab train` met it): validating the config a second time (`train_and_evaluate` did,
    then `run`'s `build_experiment` again), and the rows' parameter norm by `optax.tree.norm`
    on host arrays (it compiled small programs) against NumPy (`train._host_norm`)."""
    import jax
    import optax

    from adamlab import config_dict
    from adamlab.training import experiment, train

    config = config_dict.load_config(config_name)
    tick = time.perf_counter()
    experiment.validate_config(config)
    first_validation = time.perf_counter() - tick
    tick = time.perf_counter()
    experiment.validate_config(config)
    second_validation = time.perf_counter() - tick
    built = experiment.build_experiment(config)
    params = jax.device_get(experiment.initial_members(built).states[0].params)
    tick = time.perf_counter()
    float(optax.tree.norm(params))
    optax_norm = time.perf_counter() - tick
    tick = time.perf_counter()
    train._host_norm(params)
    numpy_norm = time.perf_counter() - tick
    return {
        "validate_config_first_s": first_validation,
        "validate_config_again_s": second_validation,
        "param_norm_optax_first_call_s": optax_norm,
        "param_norm_numpy_s": numpy_norm,
    }


def startup_costs(config_name: str) -> dict:
    """`startup_costs_job` in a child process."""
    argv = [sys.executable, __file__, "--startup_costs_job", config_name]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return child.json_of(argv, env=env)


# ---------------------------------------------------------------------------- report


def medians(runs: list[dict]) -> dict:
    """Per-key medians of runs' numbers (one level of nested dicts)."""
    out = {}
    for key, value in runs[0].items():
        if isinstance(value, dict):
            out[key] = {k: statistics.median(r[key][k] for r in runs) for k in value}
        elif isinstance(value, int | float):
            out[key] = statistics.median(r[key] for r in runs)
    return out


def machine() -> dict:
    """vs_pytorch's machine record (CPU, cores, versions, threads, XLA_FLAGS)."""
    from benchmarks import vs_pytorch

    return vs_pytorch.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="mnist")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating")
    parser.add_argument("--num_steps", type=int, default=None, help="shorter runs (smoke)")
    parser.add_argument("--override", action="append", default=[], help="--config.X=Y flags")
    parser.add_argument("--skip_torch", action="store_true")
    parser.add_argument(
        "--malloc_default",
        action="store_true",
        help="also run adamlab with glibc's default allocation (ADAMLAB_KEEP_FREED_MEMORY=0)",
    )
    parser.add_argument(
        "--ynnpack_convolutions",
        action="store_true",
        help="also run adamlab with XLA's YNNPACK convolutions (ADAMLAB_EIGEN_CONVOLUTIONS=0)",
    )
    parser.add_argument(
        "--gc_default",
        action="store_true",
        help="also run adamlab with Python's default garbage collection (ADAMLAB_GC_FREEZE=0)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/time_to_result_cpu.json"))
    parser.add_argument("--torch_job", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--startup_costs_job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_job:
        print(json.dumps(torch_job(args.torch_job, json.loads(args.settings), args.seed)))
        return
    if args.startup_costs_job:
        print(json.dumps(startup_costs_job(args.startup_costs_job)))
        return
    load_before = os.getloadavg()
    started = time.time()
    overrides = list(args.override)
    if args.num_steps:
        overrides += [f"--config.train.num_steps={args.num_steps}"]
        overrides += [f"--config.optimizer.warmup_steps={max(1, args.num_steps // 8)}"]
    runs = {side: [] for side in [*ADAMLAB_SIDES, "torch"]}
    with tempfile.TemporaryDirectory() as tmp:
        npz = pathlib.Path(tmp) / "mnist.npz"
        settings = {} if args.skip_torch else export_mnist(args.config, npz)
        if args.num_steps:
            settings.update(num_steps=args.num_steps, warmup_steps=max(1, args.num_steps // 8))
        for r in range(args.repeats):
            sides = ["adamlab"] + ["adamlab_malloc_default"] * args.malloc_default
            sides += ["adamlab_ynnpack_convolutions"] * args.ynnpack_convolutions
            sides += ["adamlab_gc_default"] * args.gc_default
            sides += [] if args.skip_torch else ["torch"]
            for side in sides[:: 1 if r % 2 == 0 else -1]:
                if side.startswith("adamlab"):
                    run = adamlab_job(args.config, overrides, side)
                else:
                    run = run_torch(npz, settings, seed=r)
                runs[side].append(run)
                print(f"{side}: {json.dumps(run)}", flush=True)
    report = {
        "benchmark": "time_to_result",
        "command": " ".join(["python", *sys.argv]),
        "config": args.config,
        "overrides": overrides,
        "torch_settings": settings,
        "imports": import_times(),
        "startup_costs_removed": startup_costs(args.config),
        "median": {side: medians(r) for side, r in runs.items() if r},
        "runs": runs,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "wall_s": time.time() - started,
    }
    if runs["torch"]:
        report["adamlab_over_torch_wall"] = (
            report["median"]["adamlab"]["wall_s"] / report["median"]["torch"]["wall_s"]
        )
    if runs["adamlab_malloc_default"]:
        report["kept_over_malloc_default_wall"] = (
            report["median"]["adamlab"]["wall_s"]
            / report["median"]["adamlab_malloc_default"]["wall_s"]
        )
    if runs["adamlab_ynnpack_convolutions"]:
        report["eigen_over_ynnpack_convolutions_wall"] = (
            report["median"]["adamlab"]["wall_s"]
            / report["median"]["adamlab_ynnpack_convolutions"]["wall_s"]
        )
    report["machine"] = machine()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["median"], indent=2))
    print(f"load average {load_before} -> {report['load_average_after']}; wrote {out}")


if __name__ == "__main__":
    main()
