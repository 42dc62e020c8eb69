"""The `adamlab` command line: `adamlab <command> [flags]` (also `python -m adamlab`).

This module owns every flag and command (`COMMANDS`); the library never imports it. `--config`
takes a config file's path or a shipped config's name (`digits`, `mnist`, ...), and
`--config.<field>=<value>` overrides a field, as in the Flax examples (`None` sets None).

Exit codes: 0 done; 1 the run failed (e.g. a non-finite loss); 2 bad command line, config or
workdir (nothing was written); `EXIT_INTERRUPTED` (75, sysexits' EX_TEMPFAIL: "try again") a
SIGTERM/SIGINT stopped training after saving a checkpoint; the same command again resumes it.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib
import json
import logging
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import ml_collections
from absl import flags
from ml_collections import config_flags

from adamlab import config_dict, runtime

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 75


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: `define_flags(flag_values, argv)`, then `run(flag_values) -> exit code`.

    `module` is the library module `run` works with (and with it jax, TensorFlow, ...): `main`
    imports it before `run`, so that the `adamlab` command can keep the garbage collector off
    the imports (`adamlab.runtime`).
    """

    help: str
    define_flags: Callable[[flags.FlagValues, list[str]], None]
    run: Callable[[flags.FlagValues], int]
    module: str


# ---------------------------------------------------------------------------- shared flags


def _define_config(fv: flags.FlagValues, argv: list[str], default: str | None) -> None:
    config_flags.DEFINE_config_file(
        "config",
        str(config_dict.resolve_config_path(default)) if default else None,
        "Experiment config: a shipped config's name (digits, mnist, ...) or a Python file with "
        "get_config(); override fields with --config.<field>=<value>.",
        flag_values=fv,
        sys_argv=argv,
    )
    flags.DEFINE_string(
        "workdir",
        None,
        "Run directory (config.json, metrics, checkpoints). Default: runs/<config>-<time>. "
        "An existing run directory is resumed.",
        flag_values=fv,
    )


def _define_seeds(
    fv: flags.FlagValues,
    default: int | None,
    help: str = "Number of seeds: config.seed + 0, 1, ...",
) -> None:
    flags.DEFINE_integer("seeds", default, help, lower_bound=1, flag_values=fv)


def _config(fv: flags.FlagValues):
    """The parsed --config, its "None" strings turned into None (ml_collections parses
    `--config.train.best_metric=None` on a str field as the string 'None')."""
    if fv["config"].value is None:
        raise flags.Error("--config is required (e.g. --config=digits)")
    config = fv["config"].value
    if not isinstance(config, ml_collections.ConfigDict):
        raise flags.Error(
            f"--config {config_flags.get_config_filename(fv['config'])}: get_config() returned "
            f"a {type(config).__name__}, not an ml_collections.ConfigDict"
        )

    def clean(section):
        for key, value in section.items():
            if hasattr(value, "items"):
                clean(value)
            elif value == "None":
                with section.ignore_type():
                    section[key] = None

    clean(config)
    return config


def default_workdir(name: str, now: datetime.datetime | None = None) -> str:
    """`runs/<name>-<YYYYmmdd-HHMMSS>`."""
    now = now or datetime.datetime.now()
    return str(pathlib.Path("runs") / f"{name}-{now:%Y%m%d-%H%M%S}")


def _workdir(fv: flags.FlagValues, prefix: str = "") -> str:
    """--workdir, else `runs/<prefix><the config file's stem>-<time>`."""
    stem = pathlib.Path(config_flags.get_config_filename(fv["config"])).stem
    return fv["workdir"].value or default_workdir(prefix + stem)


# ---------------------------------------------------------------------------- commands


def _run_train(fv: flags.FlagValues) -> int:
    from adamlab.training import train  # Here: `adamlab --help` need not import jax and TF.

    config = _config(fv)
    try:
        result = train.train_and_evaluate(config, _workdir(fv))
    except train.NonFiniteError as e:
        logging.error("%s", e)
        return EXIT_FAILED
    print(json.dumps(result, indent=2, sort_keys=True))
    return EXIT_INTERRUPTED if result.get("interrupted") else EXIT_OK


def _define_evaluate_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    del argv  # No config overrides: the run's config.json is the config.
    flags.DEFINE_string("workdir", None, "Run directory to evaluate.", flag_values=fv)
    flags.DEFINE_string(
        "checkpoint", "latest", "Which checkpoint: latest, best or a step number.", flag_values=fv
    )
    flags.DEFINE_enum(
        "split", "test", ["test", "validation", "train"], "Split to evaluate.", flag_values=fv
    )
    flags.mark_flag_as_required("workdir", flag_values=fv)


def _run_evaluate(fv: flags.FlagValues) -> int:
    from adamlab.training import evaluate

    checkpoint = fv["checkpoint"].value
    if checkpoint not in ("latest", "best"):
        if not checkpoint.isdigit():
            raise flags.Error(f"--checkpoint={checkpoint!r}: use latest, best or a step number")
        checkpoint = int(checkpoint)
    result, path = evaluate.evaluate_checkpoint(
        fv["workdir"].value, checkpoint=checkpoint, split=fv["split"].value
    )
    print(evaluate.format_metrics(result))
    if path is not None:  # None: the run directory is read-only (evaluate said so).
        print(f"wrote {path}")
    return EXIT_OK


def _define_compare_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    from adamlab.experiments import compare

    _define_config(fv, argv, compare.DEFAULT_CONFIG)
    _define_seeds(fv, compare.DEFAULT_SEEDS)
    flags.DEFINE_string(
        "optimizers",
        ",".join(compare.DEFAULT_OPTIMIZERS),
        "Comma-separated optimizer names (each trained as ours and as its optax twin).",
        flag_values=fv,
    )


def _run_compare(fv: flags.FlagValues) -> int:
    from adamlab.experiments import compare

    optimizers = compare.parse_names(fv["optimizers"].value, error=flags.Error)
    workdir = _workdir(fv, "compare-")
    result = compare.run_compare(
        _config(fv), workdir, optimizers=optimizers, num_seeds=fv["seeds"].value
    )
    return _report_done(result, "results.csv, summary.md, curves.png, <optimizer>/members/")


def _define_sweep_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    from adamlab.experiments import sweep

    _define_config(fv, argv, default="digits")
    flags.DEFINE_string("sweep", None, f"What to sweep: {sweep.GRAMMAR}.", flag_values=fv)
    _define_seeds(fv, sweep.DEFAULT_SEEDS)
    flags.DEFINE_string(
        "optimizers",
        None,
        "Comma-separated optimizer names; default: config.optimizer.name.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "implementations", "ours", "ours, optax or ours,optax (lockstep).", flag_values=fv
    )
    flags.mark_flag_as_required("sweep", flag_values=fv)


def _run_sweep(fv: flags.FlagValues) -> int:
    from adamlab.experiments import compare, sweep

    config = _config(fv)
    sweep.parse_sweep(fv["sweep"].value, config)  # Before --optimizers, as run_sweep checks them.
    optimizers = fv["optimizers"].value or config.optimizer.name
    result = sweep.run_sweep(
        config,
        _workdir(fv, "sweep-"),
        sweep=fv["sweep"].value,
        optimizers=compare.parse_names(optimizers, error=flags.Error),
        implementations=compare.split_names(fv["implementations"].value),
        num_seeds=fv["seeds"].value,
    )
    return _report_done(result, "results.csv, summary.md, sweep.png, <optimizer>/members/")


def _define_study_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    from adamlab.experiments import studies

    name = _study_name(argv)
    _define_config(fv, argv, studies.STUDIES.get(name))
    _define_seeds(fv, None, "Number of seeds (0..n-1); default: the config's runs.seeds.")
    flags.DEFINE_string(
        "study", name, "The study (given as the positional argument).", flag_values=fv
    )


def _study_name(argv: list[str]) -> str | None:
    """The study's name: the first positional argument after `adamlab study`."""
    args = argv[1:]
    for i, arg in enumerate(args):
        takes_value = i > 0 and args[i - 1] in ("--config", "--workdir", "--seeds")
        if not arg.startswith("-") and not takes_value:
            return arg
    return None


def _run_study(fv: flags.FlagValues) -> int:
    from adamlab.experiments import studies

    name = fv["study"].value
    workdir = fv["workdir"].value or default_workdir(f"study-{name}")
    try:
        studies.run_study(name, _config(fv), workdir, fv["seeds"].value)
    except studies.StudyInterrupted as e:
        print(f"{e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"report: {pathlib.Path(workdir).absolute()} (summary.md, results.csv, *.png)")
    return EXIT_OK


def _define_benchmark_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    from adamlab.experiments import benchmark

    del argv  # Workloads are shipped configs (configs/bench_<workload>.py), not --config.
    flags.DEFINE_string(
        "workloads",
        ",".join(benchmark.DEFAULT_WORKLOADS),
        "Comma-separated workloads: " + ", ".join(benchmark.workload_names()) + ".",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "optimizers",
        ",".join(benchmark.DEFAULT_OPTIMIZERS),
        "Comma-separated optimizers, each with a search space in every workload.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "trials",
        None,
        f"Trials per study, optimizer and workload (default {benchmark.DEFAULT_TRIALS}; "
        "self_tuning: 1, the optimizer's default setting).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "seeds", benchmark.DEFAULT_SEEDS, "New seeds for the selected setting.", flag_values=fv
    )
    flags.DEFINE_integer(
        "studies",
        benchmark.DEFAULT_STUDIES,
        "Independent tuning studies per optimizer and workload, each with its own seeds; the "
        "AlgoPerf score takes the median over them.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "ruleset",
        benchmark.DEFAULT_RULESET,
        "AlgoPerf's ruleset: external_tuning (search each optimizer's space) or self_tuning "
        "(its default setting, one trial per study, 3x the step budget).",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "heatmap", True, "A learning rate x decay grid on the first workload.", flag_values=fv
    )
    flags.DEFINE_list(
        "heatmap_methods",
        None,
        "The grid's methods (adam_l2, adamw, lion); default the workload's "
        "benchmark.heatmap.methods (adam_l2,adamw).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "workdir", None, "Benchmark directory (resumed if it holds one).", flag_values=fv
    )


def _run_benchmark(fv: flags.FlagValues) -> int:
    from adamlab.experiments import benchmark

    plan = benchmark.plan_benchmark(
        benchmark.load_workloads(fv["workloads"].value),
        fv["optimizers"].value,
        trials=fv["trials"].value,
        seeds=fv["seeds"].value,
        studies=fv["studies"].value,
        ruleset=fv["ruleset"].value,
        heatmap=fv["heatmap"].value and (fv["heatmap_methods"].value or True),
    )  # BenchmarkError (names, ruleset, budget, config, data): exit 2 before anything is written.
    workdir = fv["workdir"].value or default_workdir("benchmark")
    result = benchmark.run_benchmark(plan, workdir)
    files = (
        "trials.csv, studies.csv, results.csv, summary.md, benchmark.json, score.png, "
        "profiles.png, curves.png, heatmap.png"
    )
    return _report_done(result, files)


def _report_done(result: dict, files: str) -> int:
    if result["interrupted"]:
        print(f"interrupted; run the same command again to resume {result['workdir']}")
        return EXIT_INTERRUPTED
    print(result["summary"])
    print(f"report: {pathlib.Path(result['workdir']).absolute()} ({files})")
    return EXIT_OK


def _define_algoperf_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    from adamlab.experiments import algoperf

    del argv  # The positional DIR: a track's logs, laid out as algoperf.LAYOUT.
    flags.DEFINE_enum("track", None, algoperf.TRACKS, "The logs' tuning ruleset.", flag_values=fv)
    flags.DEFINE_string("out", None, "Directory for the leaderboard.", flag_values=fv)
    flags.DEFINE_string(
        "logs", None, "The track's log directory (the argument DIR).", flag_values=fv
    )
    flags.mark_flags_as_required(["track", "out"], flag_values=fv)


def _run_algoperf(fv: flags.FlagValues) -> int:
    from adamlab.experiments import algoperf

    board, logs, written = algoperf.score_track(
        fv["logs"].value, fv["track"].value, fv["out"].value
    )
    for warning in logs.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for rank, sub in enumerate(board.ranked(), start=1):
        print(f"{rank:>3}. {sub:<28} {board.scores[sub]:.4f}")
    print(
        f"report: {pathlib.Path(fv['out'].value).absolute()} ({', '.join(p.name for p in written)})"
    )
    return EXIT_OK


def _define_diagnostics_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    del argv  # The runs' metrics.jsonl and config.json are the input.
    flags.DEFINE_list(
        "workdir",
        None,
        "Run directories trained with diagnostics (comma-separated).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "overlay",
        None,
        "Also draw the runs' sharpness vs thresholds in one PNG here.",
        flag_values=fv,
    )
    flags.mark_flag_as_required("workdir", flag_values=fv)


def _run_diagnostics(fv: flags.FlagValues) -> int:
    from adamlab.diagnostics import figures

    workdirs = [pathlib.Path(w) for w in fv["workdir"].value]
    for workdir in workdirs:
        if not (workdir / figures.CONFIG_FILE).is_file():
            raise flags.Error(f"--workdir={workdir}: no run there (no {figures.CONFIG_FILE})")
    for workdir in workdirs:
        written = figures.write_figures(workdir)
        members = sorted(p.parent for p in workdir.glob("members/**/" + figures.METRICS_FILE))
        for member in members or [workdir]:
            summary = figures.stability_summary(member)
            if summary is not None:
                print(f"{member}: {figures.format_summary(summary)}")
        for path in written:
            print(f"wrote {path}")
        if not written:
            print(
                f"{workdir} has no diagnostics: set diagnostics.layer_stats_every_steps or "
                "diagnostics.curvature_every_steps in its config"
            )
    if fv["overlay"].value:
        print(f"wrote {figures.write_overlay(workdirs, fv['overlay'].value)}")
    return EXIT_OK


COMMANDS: dict[str, Command] = {
    "train": Command(
        "Train (or resume) a run.",
        functools.partial(_define_config, default="digits"),
        _run_train,
        "adamlab.training.train",
    ),
    "evaluate": Command(
        "Evaluate a run's checkpoint on a split.",
        _define_evaluate_flags,
        _run_evaluate,
        "adamlab.training.evaluate",
    ),
    "compare": Command(
        "Ours vs the optax twin per optimizer, over seeds; writes a report.",
        _define_compare_flags,
        _run_compare,
        "adamlab.experiments.compare",
    ),
    "sweep": Command(
        "A hyperparameter sweep x seeds in one compiled program; writes a report.",
        _define_sweep_flags,
        _run_sweep,
        "adamlab.experiments.sweep",
    ),
    "study": Command(
        "A study (batch_size, schedules, weight_decay, kingma_ba, transfer); writes a report.",
        _define_study_flags,
        _run_study,
        "adamlab.experiments.studies",
    ),
    "benchmark": Command(
        "Tuned optimizers on workloads with targets: time-to-target, profiles; a report.",
        _define_benchmark_flags,
        _run_benchmark,
        "adamlab.experiments.benchmark",
    ),
    "algoperf-score": Command(
        "AlgoPerf's score of a track's logs (DIR --track --out): leaderboard and profiles.",
        _define_algoperf_flags,
        _run_algoperf,
        "adamlab.experiments.algoperf",
    ),
    "diagnostics": Command(
        "Figures of a run with diagnostics (layer ratios, effective steps, sharpness).",
        _define_diagnostics_flags,
        _run_diagnostics,
        "adamlab.diagnostics.figures",
    ),
}


# ---------------------------------------------------------------------------- main


def _usage(prog: str) -> str:
    lines = [f"usage: {prog} <command> [flags]   ({prog} <command> --help for its flags)", ""]
    lines += [f"  {name:<10} {command.help}" for name, command in COMMANDS.items()]
    return "\n".join(lines)


def _resolve_config_names(args: Sequence[str]) -> list[str]:
    """`--config digits` / `--config=digits` -> the shipped config's path (a path stays)."""
    out, args = [], list(args)
    for i, arg in enumerate(args):
        if arg.startswith("--config="):
            out.append("--config=" + str(config_dict.resolve_config_path(arg.split("=", 1)[1])))
        elif i > 0 and args[i - 1] == "--config":
            out.append(str(config_dict.resolve_config_path(arg)))
        else:
            out.append(arg)
    return out


def parse_flags(name: str, args: Sequence[str], prog: str = "adamlab") -> flags.FlagValues:
    """The parsed flags of `prog name *args` (config overrides applied).

    Raises:
      flags.Error: bad flags or override values; FileNotFoundError: no such config;
      AttributeError/KeyError: an unknown `--config.<field>` (ml_collections' message suggests
      the field meant).
    """
    sub_argv = [f"{prog} {name}", *_resolve_config_names(args)]
    fv = flags.FlagValues()
    COMMANDS[name].define_flags(fv, sub_argv)
    extra = fv(sub_argv)[1:]
    if name == "study":
        from adamlab.experiments import studies

        if len(extra) != 1 or extra[0] not in studies.STUDIES:
            raise flags.Error(
                f"give one study name from: {', '.join(studies.STUDIES)} (got {extra})"
            )
        fv["study"].value = extra[0]
    elif name == "algoperf-score":
        if len(extra) != 1:
            raise flags.Error(f"give one log directory DIR (got {extra})")
        fv["logs"].value = extra[0]
    elif extra:
        raise flags.Error(f"unexpected positional arguments {extra}")
    return fv


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `adamlab <command> [flags]`; returns the exit code (see module docstring)."""
    argv = list(sys.argv if argv is None else argv)
    runtime.use_eigen_convolutions()  # First: before anything can start jax's backends.
    # Before any flag definition imports a library: orbax's import leaves a WARNING-level
    # handler on the root logger, after which basicConfig does nothing and INFO lines vanish.
    _setup_logging()
    prog = pathlib.Path(argv[0]).name if argv else "adamlab"
    if prog in ("__main__.py", "cli.py"):
        prog = "adamlab"
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage(prog))
        return EXIT_OK if len(argv) >= 2 else EXIT_USAGE
    name, args = argv[1], argv[2:]
    if name not in COMMANDS:
        print(f"{prog}: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USAGE
    command = COMMANDS[name]
    if any(a in ("-h", "--help", "--helpfull") for a in args):
        fv = flags.FlagValues()
        command.define_flags(fv, [f"{prog} {name}", *args])
        help_text = fv.get_help(include_special_flags=False)
        print(f"usage: {prog} {name} [flags]\n{command.help}\n\n{help_text}")
        return EXIT_OK
    try:
        fv = parse_flags(name, args, prog)
    except (flags.Error, FileNotFoundError, AttributeError, KeyError, SyntaxError) as e:
        unknown = isinstance(e, AttributeError | KeyError)
        print(f"{prog} {name}: {'unknown config field ' * unknown}{_message(e)}", file=sys.stderr)
        return EXIT_USAGE
    runtime.keep_freed_memory()
    # The command's library module; then a collector `console` paused goes back on, with the
    # imported objects frozen (a no-op unless it was paused).
    importlib.import_module(command.module)
    runtime.resume_collector()
    try:
        return command.run(fv)
    except Exception as e:
        # A full disk, `ulimit -f`, a directory where a file belongs: the run failed (its files
        # are intact), said in one line naming the file, as a user error is.
        failed = isinstance(e, OSError) and not isinstance(e, FileNotFoundError)
        if not (failed or _is_user_error(e)):
            raise  # A bug: keep the traceback.
        print(f"{prog} {name}: error: {_message(e)}", file=sys.stderr)
        return EXIT_FAILED if failed else EXIT_USAGE


def console(argv: Sequence[str] | None = None) -> NoReturn:
    """The `adamlab` command, `python -m adamlab` and the scripts in experiments/: `main(argv)`
    in a process of its own, which then exits with its code.

    Python's garbage collector is kept off the libraries' objects while they import and at
    exit, and jax's persistent compilation cache and the decoded-data cache are on
    (`adamlab.runtime`), which `main` alone, called in someone else's process, does not do.
    """
    runtime.pause_collector()
    runtime.use_compilation_cache()
    runtime.use_data_cache()
    code = main(argv)
    runtime.freeze_before_exit()
    sys.exit(code)


def _is_user_error(error: Exception) -> bool:
    """Errors whose message says what to fix (bad config, workdir, checkpoint or argument)."""
    from adamlab.experiments import algoperf, sweep  # Loaded already when a command has run.
    from adamlab.training import checkpoint, evaluate, experiment, run_io, workdir_lock

    user_errors = (
        flags.Error,
        FileNotFoundError,  # No config.json, checkpoint or prepared dataset.
        experiment.ConfigError,
        run_io.ConfigMismatchError,
        run_io.RunDirError,
        workdir_lock.WorkdirBusyError,
        checkpoint.CheckpointMismatchError,
        checkpoint.CheckpointCorruptError,
        sweep.SweepSpecError,
        evaluate.EvaluationError,
        algoperf.LogError,
    )
    return isinstance(error, user_errors)


def _message(error: BaseException) -> str:
    """The innermost message of an exception (KeyError wraps its message in quotes), an
    OSError's as "file: cause", a SyntaxError's as "file:line: ..."."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    if isinstance(error, SyntaxError):
        return f"{error.filename}:{error.lineno}: {type(error).__name__}: {error.msg}"
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.filename}: {error.strerror}"
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0]).replace("\\'", "'")
    return str(error)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # orbax and absl-based libraries log every save at INFO; keep the run's own log readable.
    for noisy in ("absl", "orbax", "jax", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
