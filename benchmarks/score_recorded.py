"""AlgoPerf's score of adamlab's recorded benchmark runs, from their trials.csv alone.

    python benchmarks/score_recorded.py            # writes benchmarks/results/algoperf_adamlab/

Each recorded `adamlab benchmark` ran one tuning study per optimizer and workload. AlgoPerf's
time for a study is that of the trial its rules select: the trial that reaches the target at
the earliest evaluation; adamlab's trials of one study evaluate at the same steps, so that is
the fewest steps to target (a study where no trial reached it: inf). The per-study times go
through `adamlab.experiments.algoperf.score`, the code that reproduces AlgoPerf's published
leaderboard, over the workloads of each recorded run. Steps only: the recorded trials were
timed under different loads, so their seconds are no common clock.
"""

from __future__ import annotations

import argparse
import csv
import math
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adamlab.experiments import algoperf  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RECORDED = (  # The recorded runs with a tuning stage per optimizer (trials.csv).
    "benchmark_digits",
    "benchmark_two_workloads",
    "benchmark_mnist_logreg",
    "benchmark_mnist_cnn_8trials_5seeds",
    "benchmark_mnist_mlp",
)
# Studies rerun uninterrupted, taken in place of a recorded run's: run -> optimizer -> rerun.
# benchmark_mnist_mlp's Adam study was resumed by code that kept only the evaluations after
# the resume step (issue 27; its NOTE.md).
RERUNS = {"benchmark_mnist_mlp": {"adam": "benchmark_mnist_mlp_adam_rerun"}}


def study_times(path: pathlib.Path) -> tuple[dict[str, dict[str, list[float]]], list[str]]:
    """optimizer -> workload -> [the study's time in steps] and the workloads, from trials.csv."""
    best: dict[tuple[str, str], float] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            steps = float(row["steps_to_target"] or "nan")
            key = (row["optimizer"], row["workload"])
            reached = steps if math.isfinite(steps) else math.inf
            best[key] = min(best.get(key, math.inf), reached)
    workloads = sorted({w for _, w in best})
    times: dict[str, dict[str, list[float]]] = {}
    for (optimizer, workload), steps in best.items():
        times.setdefault(optimizer, {})[workload] = [steps]
    return times, workloads


def score_run(name: str) -> list[dict]:
    times, workloads = study_times(RESULTS / name / "trials.csv")
    for optimizer, rerun in RERUNS.get(name, {}).items():
        times[optimizer] = study_times(RESULTS / rerun / "trials.csv")[0][optimizer]
    board = algoperf.score(times, workloads)
    rows = []
    for optimizer in board.ranked():
        row = {"run": name, "optimizer": optimizer, "score": round(board.scores[optimizer], 4)}
        for workload in workloads:
            row[f"{workload}_steps"] = board.medians[optimizer][workload]
            row[f"{workload}_ratio"] = round(board.ratios[optimizer][workload], 4)
        rows.append(row)
    return rows


def markdown(rows_by_run: dict[str, list[dict]]) -> str:
    lines = ["# AlgoPerf score of adamlab's recorded benchmark runs (steps to target)", ""]
    lines.append("Written by `python benchmarks/score_recorded.py` from each run's trials.csv.")
    for run, reruns in RERUNS.items():
        for optimizer, rerun in reruns.items():
            lines.append(f"{run}: {optimizer}'s study from its uninterrupted rerun, {rerun}.")
    for run, rows in rows_by_run.items():
        columns = list(rows[0])[1:]
        lines += ["", f"## {run}", "", "| " + " | ".join(columns) + " |"]
        lines.append("|" + "---|" * len(columns))
        lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "algoperf_adamlab"))
    out = pathlib.Path(parser.parse_args(argv).out)
    out.mkdir(parents=True, exist_ok=True)
    rows_by_run = {name: score_run(name) for name in RECORDED}
    (out / "scores.md").write_text(markdown(rows_by_run))
    with (out / "scores.csv").open("w", newline="") as f:
        fields = sorted({k for rows in rows_by_run.values() for r in rows for k in r})
        writer = csv.DictWriter(
            f,
            fieldnames=["run", "optimizer", "score"]
            + [k for k in fields if k not in ("run", "optimizer", "score")],
        )
        writer.writeheader()
        for rows in rows_by_run.values():
            writer.writerows(rows)
    print(markdown(rows_by_run))


if __name__ == "__main__":
    main()
