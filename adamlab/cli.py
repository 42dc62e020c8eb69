r"""The `adamlab` command line: `adamlab <command> [flags]` (also `python -m adamlab`).

    adamlab train --config configs/digits.py --workdir runs/digits \
        --config.optimizer.name=adamw --config.optimizer.learning_rate=3e-3
    adamlab evaluate --workdir runs/digits --checkpoint best --split test

Each command is a `Command`: a function that defines its absl flags on a fresh `FlagValues`
and a function that runs it from the parsed flags and returns the exit code. Adding a command
is adding one entry to `COMMANDS`. Configs are `ml_collections` config files (`--config`)
whose fields are overridden with `--config.<field>=<value>`, as in the Flax examples.

Exit codes: 0 done; 1 the run failed (e.g. a non-finite loss); 2 bad command line or config;
`EXIT_INTERRUPTED` (75, sysexits' EX_TEMPFAIL: "try again") a SIGTERM/SIGINT stopped training
after saving a checkpoint; running the same command again resumes it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import pathlib
import sys
from collections.abc import Callable, Sequence

from absl import flags
from ml_collections import config_flags

from adamlab import config_dict
from adamlab.experiments import compare, sweep

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 75

# The repository's default config; `adamlab` is installed editable from a clone (see README).
DEFAULT_CONFIG = config_dict.resolve_config_path("digits")


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: `define_flags(flag_values, argv)`, then `run(flag_values) -> exit code`."""

    help: str
    define_flags: Callable[[flags.FlagValues, list[str]], None]
    run: Callable[[flags.FlagValues], int]


def define_train_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    """--config (with --config.<field> overrides) and --workdir; `adamlab sweep` takes them too."""
    config_flags.DEFINE_config_file(
        "config",
        str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None,
        "Experiment config file (a Python file with get_config()); override fields with "
        "--config.<field>=<value>.",
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


def checked_config_path(fv: flags.FlagValues) -> str:
    """The --config file, checked to exist (a missing one is a command-line error)."""
    if fv["config"].value is None:
        raise flags.Error("--config is required (e.g. --config=configs/digits.py)")
    path = config_flags.get_config_filename(fv["config"])
    if not pathlib.Path(path).is_file():
        raise flags.Error(f"--config={path}: no such file (e.g. configs/digits.py)")
    return path


def _run_train(fv: flags.FlagValues) -> int:
    path = checked_config_path(fv)
    config = fv["config"].value
    workdir = fv["workdir"].value or default_workdir(path)
    from adamlab.training import (
        train,  # Imported here: `adamlab --help` need not import jax and TF.
    )

    try:
        result = train.train_and_evaluate(config, workdir)
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
    print(f"wrote {path}")
    return EXIT_OK


COMMANDS: dict[str, Command] = {
    "train": Command("Train (or resume) a run.", define_train_flags, _run_train),
    "evaluate": Command(
        "Evaluate a run's checkpoint on a split.", _define_evaluate_flags, _run_evaluate
    ),
    "compare": Command(
        "Ours vs the optax twin per optimizer, over seeds; writes a report.",
        compare.define_flags,
        compare.main,
    ),
    "sweep": Command(
        "A hyperparameter sweep x seeds in one compiled program; writes a report.",
        sweep.define_flags,
        sweep.main,
    ),
}


def default_workdir(config_path: str, now: datetime.datetime | None = None) -> str:
    """`runs/<config file stem>-<YYYYmmdd-HHMMSS>`."""
    now = now or datetime.datetime.now()
    return str(pathlib.Path("runs") / f"{pathlib.Path(config_path).stem}-{now:%Y%m%d-%H%M%S}")


def _usage(prog: str) -> str:
    lines = [f"usage: {prog} <command> [flags]   ({prog} <command> --help for its flags)", ""]
    lines += [f"  {name:<10} {command.help}" for name, command in COMMANDS.items()]
    return "\n".join(lines)


def parse_flags(name: str, args: Sequence[str], prog: str = "adamlab") -> flags.FlagValues:
    """The parsed flags of `prog name *args` (config overrides applied).

    Raises:
      flags.Error: bad flags or override values; AttributeError/KeyError: an unknown
      `--config.<field>` (ml_collections' message suggests the field meant).
    """
    sub_argv = [f"{prog} {name}", *args]
    fv = flags.FlagValues()
    COMMANDS[name].define_flags(fv, sub_argv)
    extra = fv(sub_argv)[1:]
    if extra:
        raise flags.Error(f"unexpected positional arguments {extra}")
    return fv


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `adamlab <command> [flags]`; returns the exit code (see module docstring)."""
    argv = list(sys.argv if argv is None else argv)
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
        command.define_flags(fv, [f"{prog} {name}"])
        help_text = fv.get_help(include_special_flags=False)
        print(f"usage: {prog} {name} [flags]\n{command.help}\n\n{help_text}")
        return EXIT_OK
    try:
        fv = parse_flags(name, args, prog)
    except (flags.Error, FileNotFoundError, AttributeError, KeyError) as e:
        unknown = isinstance(e, AttributeError | KeyError)
        print(f"{prog} {name}: {'unknown config field ' * unknown}{_message(e)}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging()
    try:
        return command.run(fv)
    except Exception as e:
        if not _is_user_error(e):
            raise  # A bug: keep the traceback.
        print(f"{prog} {name}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


def _is_user_error(error: Exception) -> bool:
    """Errors whose message says what to fix (bad config, workdir or checkpoint)."""
    if isinstance(error, flags.Error | FileNotFoundError):  # FileNotFoundError: no config.json,
        return True  # checkpoint or prepared dataset.
    from adamlab.training import checkpoint, run_io, train  # Loaded already when a command has run.

    user_errors = (
        train.ConfigError,
        run_io.ConfigMismatchError,
        checkpoint.CheckpointMismatchError,
    )
    return isinstance(error, user_errors)


def _message(error: BaseException) -> str:
    """The innermost message of an exception (KeyError wraps its message in quotes)."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0]).replace("\\'", "'")
    return str(error)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # orbax and absl-based libraries log every save at INFO; keep the run's own log readable.
    for noisy in ("absl", "orbax", "jax", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
