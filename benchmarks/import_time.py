r"""Benchmark: what every adamlab process pays to import, with the installed ml_dtypes and another.

pyproject.toml keeps ml_dtypes below 0.7: its 0.7.0 takes about a second to import (registering
its types with numpy), and every `adamlab` command, every test worker and every subprocess a
test starts imports it, through jax. This times, in fresh interpreters, side by side and
alternating (the installed one first in even repeats): `import ml_dtypes`, `import jax`, and
the imports of `adamlab train` (`adamlab.training.train`: jax, flax, optax, orbax, TensorFlow),
with the installed ml_dtypes and with the one in `--other` (a directory put first on the path),
medians over the repeats and the ratio other / installed.

    pip install --no-deps --target /tmp/ml_dtypes_070 ml_dtypes==0.7.0
    python benchmarks/import_time.py --other /tmp/ml_dtypes_070       # ~3 minutes, 2 CPU cores

Writes JSON (default benchmarks/results/import_time_cpu.json) with the versions, the machine
and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import child  # noqa: E402  (the standard library only: no jax here)

MODULES = ("ml_dtypes", "jax", "adamlab.training.train")
# Imports each module in turn and prints the seconds each added, with ml_dtypes' version.
_PROBE = """
import json, sys, time
seconds = {}
for name in sys.argv[1:]:
    tick = time.perf_counter()
    __import__(name)
    seconds[name] = time.perf_counter() - tick
import ml_dtypes
print(json.dumps({"seconds": seconds, "ml_dtypes": ml_dtypes.__version__}))
"""


def probe(other: str | None) -> dict:
    """One fresh interpreter's import seconds per module (each after the ones before it)."""
    env = dict(os.environ)
    if other:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [other, env.get("PYTHONPATH")]))
    return child.json_of([sys.executable, "-c", _PROBE, *MODULES], env=env, cwd=str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", required=True, help="a directory holding another ml_dtypes")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/import_time_cpu.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    settings = {"installed": None, "other": args.other}
    seconds = {k: {m: [] for m in MODULES} for k in settings}
    versions = {}
    for repeat in range(args.repeats):
        order = list(settings) if repeat % 2 == 0 else list(reversed(settings))
        for setting in order:
            result = probe(settings[setting])
            versions[setting] = result["ml_dtypes"]
            for module, s in result["seconds"].items():
                seconds[setting][module].append(s)
    if versions["installed"] == versions["other"]:
        raise SystemExit(
            f"--other holds the installed ml_dtypes {versions['other']}: nothing to compare"
        )
    from benchmarks.train_step import machine  # After the children: this process imports jax.

    for setting in settings:  # The whole import, per interpreter.
        seconds[setting]["total"] = [sum(t) for t in zip(*seconds[setting].values(), strict=True)]
    median = {k: {m: statistics.median(v) for m, v in s.items()} for k, s in seconds.items()}
    out = {
        "command": " ".join(["python", *sys.argv]),
        "repeats": args.repeats,
        "ml_dtypes": versions,
        "seconds": seconds,
        "median_s": median,
        "other_over_installed": {
            m: median["other"][m] / median["installed"][m] for m in median["other"]
        },
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": machine(),
    }
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for module in median["other"]:
        print(
            f"{module:24s} ml_dtypes {versions['installed']}: {median['installed'][module]:.3f} s"
            f"  {versions['other']}: {median['other'][module]:.3f} s"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
