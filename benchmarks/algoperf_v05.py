r"""Reproduction: the published AlgoPerf v0.5 leaderboard, both tracks, from AlgoPerf's own logs.

    git -C submissions_algorithms archive HEAD previous_leaderboards/algoperf_v05/logs \
        | tar -x -C /tmp/algoperf --wildcards '*eval_measurements.csv'
    python benchmarks/algoperf_v05.py --logs /tmp/algoperf/previous_leaderboards/algoperf_v05/logs

(`submissions_algorithms`: a checkout of github.com/mlcommons/submissions_algorithms; only the
eval_measurements.csv files are needed, 92 MB.) For each track this runs the command,
`adamlab algoperf-score <logs>/<track> --track <track> --out <out>/<track>`, in a subprocess,
and compares its leaderboard.csv with the scores published in that repository's
previous_leaderboards/algoperf_v05/README.md (`PUBLISHED`, 4 decimals). It writes
`<out>/reproduction.csv` and `<out>/reproduction.md`: per submission the published and the
reproduced score, their difference and the largest per track, and beside them two scores
computed as AlgoPerf's documentation words the rules where its code differs: the exact
integral of the profile instead of the trapezoid on its grid, and the trial with the least
time to target instead of the one reaching it at the earliest evaluation.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adamlab.experiments import algoperf, profiles, report  # noqa: E402

SOURCE = (
    "github.com/mlcommons/submissions_algorithms@12c8e4ea93dc41a1ff6abc3debba9accd8ac1e3a "
    "previous_leaderboards/algoperf_v05"
)
PUBLISHED = {
    "external_tuning": {
        "shampoo_submission": 0.7784,
        "schedule_free_adamw": 0.7077,
        "generalized_adam": 0.6383,
        "cyclic_lr": 0.6301,
        "nadamp": 0.5909,
        "baseline": 0.5707,
        "amos": 0.4918,
        "caspr_adaptive": 0.4722,
        "lawa_queue": 0.3699,
        "lawa_ema": 0.3384,
        "schedule_free_prodigy": 0.0000,
    },
    "self_tuning": {
        "schedule_free_adamw": 0.8542,
        "baseline": 0.8194,
        "nadamw_sequential": 0.3308,
        "sinv6_75": 0.1420,
        "sinv6": 0.0903,
        "adamg": 0.0000,
    },
}
TOLERANCE = 1e-3


def run_command(logs: pathlib.Path, track: str, out: pathlib.Path) -> str:
    """`adamlab algoperf-score` in a subprocess; its stdout (the ranking). It runs in the
    directory above `previous_leaderboards/`, so the reports name the logs as that repository
    does."""
    logs = logs.resolve()
    layout = ("previous_leaderboards", "algoperf_v05", "logs")
    cwd = logs.parents[2] if logs.parts[-3:] == layout else logs
    args = [sys.executable, "-m", "adamlab", "algoperf-score", str(logs.relative_to(cwd) / track)]
    args += ["--track", track, "--out", str((out / track).resolve())]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def exact_integral(row: dict[str, str], workloads) -> float:
    """The docs' B = 1/(r_max - 1) * integral_1^r_max rho(tau) dtau, exactly: each workload
    with r <= r_max contributes (r_max - r) / n."""
    r = np.array([float(row[f"{w}_ratio"]) for w in workloads])
    credit = np.where(np.isfinite(r), np.clip(profiles.R_MAX - r, 0.0, None), 0.0)
    return float(credit.sum() / (len(workloads) * (profiles.R_MAX - 1.0)))


def fastest_trial_scores(logs: pathlib.Path, track: str) -> dict[str, float]:
    """Scores with the docs' trial selection: per study the least time to target."""
    version = algoperf.V05
    study_times: dict[str, dict[str, list[float]]] = {}
    for sub in sorted(p for p in (logs / track).iterdir() if p.is_dir()):
        per: dict[str, dict[str, float]] = {}
        for csv_path in sorted(sub.glob(f"study_*/*_*/trial_*/{algoperf.MEASUREMENTS}")):
            study, workload_dir = csv_path.parts[-4], csv_path.parts[-3]
            workload = workload_dir.rsplit("_", 1)[0]
            if workload not in version.targets:
                continue
            target = version.targets[workload]
            times, values = algoperf.read_measurements(csv_path, target.column)
            index = algoperf.first_reached(values, target)
            time = math.inf if index is None else float(times[index])
            best = per.setdefault(workload, {}).get(study, math.inf)
            per[workload][study] = min(best, time)
        study_times[sub.name] = {w: list(s.values()) for w, s in per.items()}
    board = algoperf.score(study_times, version.base_workloads, version.held_out)
    return board.scores


def compare(logs: pathlib.Path, out: pathlib.Path) -> list[dict[str, object]]:
    rows = []
    for track, published in PUBLISHED.items():
        leaderboard = report.read_csv(out / track / "leaderboard.csv")
        workloads = algoperf.V05.base_workloads
        docs_trial = fastest_trial_scores(logs, track)
        ranks = {s: i for i, s in enumerate(published, start=1)}
        for row in leaderboard:
            sub = row["submission"]
            reproduced = float(row["score"])
            rows.append(
                {
                    "track": track,
                    "submission": sub,
                    "published_rank": ranks[sub],
                    "rank": int(row["rank"]),
                    "published": published[sub],
                    "reproduced": reproduced,
                    "difference": reproduced - published[sub],
                    "docs_exact_integral": exact_integral(row, workloads),
                    "docs_fastest_trial": docs_trial[sub],
                }
            )
        missing = set(published) - {r["submission"] for r in leaderboard}
        if missing:
            raise SystemExit(f"{track}: no reproduced score for {sorted(missing)}")
    return rows


def markdown(rows: list[dict[str, object]], rankings: dict[str, str]) -> str:
    lines = [
        "# AlgoPerf v0.5 leaderboard, reproduced from its logs",
        "",
        f"Logs and published scores: `{SOURCE}` (README.md; logs/<track>/, the",
        "eval_measurements.csv files only). Command, per track:",
        "`adamlab algoperf-score <logs>/<track> --track <track> --out <track>/`",
        "(leaderboard.csv, studies.csv, summary.md, profiles.png in this directory's",
        "<track>/). Regenerate: `python benchmarks/algoperf_v05.py --logs <logs>`.",
        "",
    ]
    for track in PUBLISHED:
        mine = [r for r in rows if r["track"] == track]
        worst = max(abs(float(r["difference"])) for r in mine)
        lines += [
            f"## {track}: largest difference {worst:.1e} (tolerance {TOLERANCE:g})",
            "",
            "| rank | submission | published | reproduced | difference "
            "| docs: exact integral | docs: fastest trial |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in mine:
            lines.append(
                f"| {r['rank']} | {r['submission']} | {float(r['published']):.4f} "
                f"| {float(r['reproduced']):.5f} | {float(r['difference']):+.1e} "
                f"| {float(r['docs_exact_integral']):.5f} | {float(r['docs_fastest_trial']):.5f} |"
            )
        lines += ["", f"![{track}]({track}/profiles.png)", ""]
    same_ranks = all(r["rank"] == r["published_rank"] for r in rows)
    off_integral = max(abs(float(r["docs_exact_integral"]) - float(r["reproduced"])) for r in rows)
    off_trial = max(
        rows, key=lambda r: abs(float(r["docs_fastest_trial"]) - float(r["reproduced"]))
    )
    lines += [
        "The published scores have 4 decimals, so a faithful reproduction differs by at most",
        f"5e-5. The ranks are {'all' if same_ranks else 'NOT all'} the published ranks. The",
        "last two columns apply the rules as AlgoPerf's documentation words them where its code",
        "differs (docs/algoperf.md): the exact integral of the step profile (up to",
        f"{off_integral:.1e} from the published scores), and per study the trial with the least",
        "time to target instead of the one reaching the target at the earliest evaluation (up",
        f"to {float(off_trial['docs_fastest_trial']) - float(off_trial['reproduced']):+.1e},"
        f" {off_trial['submission']}, {off_trial['track']}).",
        "",
        "## The command's output",
        "",
    ]
    for track, text in rankings.items():
        text = text.replace(f"{ROOT}/", "").rstrip()  # Paths relative to the repository.
        lines += [f"{track}:", "", "```", text, "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=pathlib.Path, required=True, help="algoperf_v05/logs")
    parser.add_argument(
        "--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "algoperf_v05"
    )
    args = parser.parse_args()
    rankings = {track: run_command(args.logs, track, args.out) for track in PUBLISHED}
    rows = compare(args.logs, args.out)
    report.write_csv(args.out / "reproduction.csv", rows)
    (args.out / "reproduction.md").write_text(markdown(rows, rankings))
    for track in PUBLISHED:
        worst = max(abs(float(r["difference"])) for r in rows if r["track"] == track)
        print(f"{track}: largest difference {worst:.1e}")
        if worst > TOLERANCE:
            raise SystemExit(f"{track}: not reproduced within {TOLERANCE:g}")
    print(f"wrote {args.out / 'reproduction.md'}")


if __name__ == "__main__":
    main()
