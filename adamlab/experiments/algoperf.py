"""AlgoPerf's benchmark score (`score`), and AlgoPerf's published logs read and scored with it.

The rules are those of AlgoPerf's code, which produced the published leaderboards;
docs/algoperf.md gives them, the usage, and where AlgoPerf's documentation differs.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from adamlab.experiments import profiles, report

TRACKS = ("external_tuning", "self_tuning")
TIME_COLUMN = "score"  # AlgoPerf's logger: accumulated submission time in seconds.
MEASUREMENTS = "eval_measurements.csv"
LAYOUT = f"<track>/<submission>/study_<n>/<workload>_<jax|pytorch>/trial_<n>/{MEASUREMENTS}"

_STUDY = re.compile(r"study_(\d+)")
_TRIAL = re.compile(r"trial_(\d+)")
_WORKLOAD = re.compile(r"(.+)_(jax|pytorch)")


class LogError(ValueError):
    """Logs that cannot be scored: the message names the file and what was expected."""


@dataclasses.dataclass(frozen=True)
class Target:
    """A workload's validation target: reached at the first evaluation with `column` at least
    (`higher_is_better`) or at most `value`."""

    column: str
    value: float
    higher_is_better: bool


@dataclasses.dataclass(frozen=True)
class Version:
    """One AlgoPerf version's scoring constants.

    Attributes:
      targets: workload -> validation target, for the base workloads and held-out variants.
      base_workloads: the workloads the score is over (the profile's fixed n).
      held_out: held-out variant -> its base workload.
      unscored: AlgoPerf's other workloads: their logs are ignored (with a warning).
      studies: studies per workload; trials: track -> trials per study.
    """

    name: str
    targets: Mapping[str, Target]
    base_workloads: tuple[str, ...]
    held_out: Mapping[str, str]
    unscored: frozenset[str]
    studies: int
    trials: Mapping[str, int]


def _targets(**columns: tuple[str, float]) -> dict[str, Target]:
    higher = {"accuracy", "ssim", "mean_average_precision", "bleu"}  # loss, wer: lower.
    return {
        w: Target(f"validation/{metric}", value, metric in higher)
        for w, (metric, value) in columns.items()
    }


# mlcommons/submissions_algorithms scoring/workload_targets_v05.json and
# scoring/algoperf_v05/held_out_workloads_algoperf_v05.json.
V05 = Version(
    name="v0.5",
    targets=_targets(
        criteo1tb=("loss", 0.123735),
        criteo1tb_embed_init=("loss", 0.129657),
        fastmri=("ssim", 0.723653),
        fastmri_tanh=("ssim", 0.71784),
        imagenet_resnet=("accuracy", 0.77431),
        imagenet_resnet_large_bn_init=("accuracy", 0.76526),
        imagenet_vit=("accuracy", 0.77309),
        librispeech_conformer=("wer", 0.085884),
        librispeech_conformer_layernorm=("wer", 0.09731),
        librispeech_deepspeech=("wer", 0.119936),
        ogbg=("mean_average_precision", 0.28098),
        ogbg_model_size=("mean_average_precision", 0.269446),
        wmt=("bleu", 30.8491),
        wmt_glu_tanh=("bleu", 29.5779),
    ),
    base_workloads=(
        "criteo1tb",
        "fastmri",
        "imagenet_resnet",
        "imagenet_vit",
        "librispeech_conformer",
        "librispeech_deepspeech",
        "ogbg",
        "wmt",
    ),
    held_out={
        "criteo1tb_embed_init": "criteo1tb",
        "fastmri_tanh": "fastmri",
        "imagenet_resnet_large_bn_init": "imagenet_resnet",
        "librispeech_conformer_layernorm": "librispeech_conformer",
        "ogbg_model_size": "ogbg",
        "wmt_glu_tanh": "wmt",
    },
    unscored=frozenset(
        """cifar mnist criteo1tb_test criteo1tb_layernorm criteo1tb_resnet fastmri_model_size
        fastmri_layernorm imagenet_resnet_silu imagenet_resnet_gelu imagenet_vit_glu
        imagenet_vit_post_ln imagenet_vit_map librispeech_conformer_attention_temperature
        librispeech_conformer_gelu librispeech_deepspeech_tanh librispeech_deepspeech_no_resnet
        librispeech_deepspeech_norm_and_spec_aug ogbg_gelu ogbg_silu wmt_post_ln
        wmt_attention_temp""".split()
    ),
    studies=5,
    trials={"external_tuning": 5, "self_tuning": 1},
)


# ---------------------------------------------------------------------------- trial selection


def first_reached(values: np.ndarray, target: Target) -> int | None:
    """Index of the first evaluation whose value reaches the target; None if none does (NaN,
    a diverged or missing evaluation, never does)."""
    values = np.asarray(values, np.float64)
    with np.errstate(invalid="ignore"):
        reached = values >= target.value if target.higher_is_better else values <= target.value
    return int(np.argmax(reached)) if reached.any() else None


def select_trial(
    trials: Sequence[tuple[np.ndarray, np.ndarray]], target: Target
) -> tuple[int | None, float]:
    """AlgoPerf's trial selection within a study: (index of the selected trial, its time).

    `trials` holds each trial's (times, values) over its evaluations. AlgoPerf's code selects
    the trial that reaches the target at the earliest evaluation *index* (ties: the first
    trial) and takes that trial's time at that evaluation; (None, inf) when no trial reaches
    it. Its docs say "the fastest trial" (the least time); the two differ only when trials
    evaluate at different times.
    """
    best, best_index = None, None
    for i, (_, values) in enumerate(trials):
        index = first_reached(values, target)
        if index is not None and (best_index is None or index < best_index):
            best, best_index = i, index
    if best is None:
        return None, math.inf
    return best, float(trials[best][0][best_index])


# ---------------------------------------------------------------------------- the score


@dataclasses.dataclass(frozen=True)
class Scores:
    """The score table of `score`; every mapping is submission -> workload -> value.

    Attributes:
      workloads: the scored (base) workloads, the profile's n.
      medians: median over studies, every workload given (base and held-out).
      times: base workloads' times after the cut-off and the held-out rule (inf: no credit).
      ratios: times / the fastest submission's time on the workload.
      taus, rho: the performance profile rho(tau) of each submission on the grid `taus`.
      scores: submission -> the normalised area of its profile (`profiles.profile_area`).
    """

    workloads: tuple[str, ...]
    medians: dict[str, dict[str, float]]
    times: dict[str, dict[str, float]]
    ratios: dict[str, dict[str, float]]
    taus: np.ndarray
    rho: dict[str, np.ndarray]
    scores: dict[str, float]

    def ranked(self) -> list[str]:
        """Submissions by score, best first (ties by name)."""
        return sorted(self.scores, key=lambda s: (-self.scores[s], s))


def median_over_studies(times: Iterable[float]) -> float:
    """t_{s,w} = median over studies of the per-study times, a missed target (inf or NaN)
    taking part as inf (np.median: with an even count the mean of the middle two)."""
    t = np.array([math.inf if math.isnan(x) else x for x in map(float, times)], np.float64)
    return float(np.median(t)) if t.size else math.inf


def apply_held_out_rule(
    medians: Mapping[str, Mapping[str, float]],
    base_workloads: Sequence[str],
    held_out: Mapping[str, str],
    r_max: float = profiles.R_MAX,
) -> dict[str, dict[str, float]]:
    """The base workloads' times after AlgoPerf's cut-off and held-out-variant rule.

    In the order of AlgoPerf's code (a missing time counts as inf throughout):
      1. a variant's time becomes inf where its base workload's is inf (only submissions that
         reached the base target set the fastest time on the variant);
      2. on every workload, base and variant, a time above r_max times the fastest
         submission's becomes inf;
      3. a base workload's time becomes inf where its variant's is inf.
    Base workloads without a variant keep their (cut-off) time.
    """
    subs, workloads = list(medians), [*base_workloads, *held_out]
    t = {s: {w: profiles.time_of(medians[s], w) for w in workloads} for s in subs}
    for variant, base in held_out.items():
        for s in subs:
            if math.isinf(t[s][base]):
                t[s][variant] = math.inf
    for w in workloads:
        best = min((t[s][w] for s in subs), default=math.inf)
        for s in subs:
            if t[s][w] > r_max * best:
                t[s][w] = math.inf
    for variant, base in held_out.items():
        for s in subs:
            if math.isinf(t[s][variant]):
                t[s][base] = math.inf
    return {s: {w: t[s][w] for w in base_workloads} for s in subs}


def score(
    study_times: Mapping[str, Mapping[str, Sequence[float]]],
    base_workloads: Sequence[str],
    held_out: Mapping[str, str] | None = None,
    *,
    taus: Sequence[float] = profiles.ALGOPERF_TAUS,
    r_max: float = profiles.R_MAX,
) -> Scores:
    """AlgoPerf's benchmark score of each submission from its per-study times.

        t_{s,w} = median_j t_{s,w,j}                     (a miss: inf)
        r_{s,w} = t_{s,w} / min_s' t_{s',w}              (after `apply_held_out_rule`)
        rho_s(tau) = |{w in W : r_{s,w} <= tau}| / |W|   (W: the base workloads, fixed)
        B_s = trapezoid(rho_s, taus) / (tau_max - tau_min)

    Args:
      study_times: submission -> workload -> the per-study times to target (seconds, steps:
        any time; inf for a study that missed it). Base workloads and held-out variants.
      base_workloads: the scored workloads; one a submission has no times for is a miss.
      held_out: held-out variant -> its base workload (none: no variant rule).
      taus: the grid rho is computed and integrated on (default AlgoPerf's, 1 to r_max).
      r_max: the cut-off: no credit beyond r_max times the fastest.

    Example:
      >>> s = score({"a": {"w": [1.0, 2.0, 3.0]}, "b": {"w": [4.0, 4.0, math.inf]}}, ["w"])
      >>> s.medians["b"]["w"], s.ratios["b"]["w"]   # median of 4, 4, inf; 2x the fastest
      (4.0, 2.0)
      >>> s.scores["a"], round(s.scores["b"], 4)   # b: rho = 1 from tau = 2 (exact: 2/3)
      (1.0, 0.6717)
    """
    if not study_times:
        raise ValueError("score needs at least one submission")
    held_out = dict(held_out or {})
    medians = {
        s: {w: median_over_studies(times) for w, times in per.items()}
        for s, per in study_times.items()
    }
    times = apply_held_out_rule(medians, base_workloads, held_out, r_max)
    ratios = profiles.performance_ratios(times, base_workloads)
    taus = np.asarray(taus, np.float64)
    rho = profiles.performance_profile(times, taus, workloads=base_workloads)
    return Scores(
        workloads=tuple(base_workloads),
        medians=medians,
        times=times,
        ratios=ratios,
        taus=taus,
        rho=rho,
        scores={s: profiles.profile_area(r, taus) for s, r in rho.items()},
    )


# ---------------------------------------------------------------------------- reading logs


@dataclasses.dataclass(frozen=True)
class Study:
    """One study's result: the selected trial (None: no trial reached the target) and its
    time to target (inf when none did); `trials` is how many trials it logged."""

    time: float
    trial: str | None
    trials: int


@dataclasses.dataclass(frozen=True)
class TrackLogs:
    """A track's logs reduced to studies: submission -> workload -> study -> `Study`."""

    track: str
    version: Version
    studies: dict[str, dict[str, dict[str, Study]]]
    warnings: tuple[str, ...]

    def study_times(self) -> dict[str, dict[str, list[float]]]:
        """submission -> workload -> per-study times: `score`'s input."""
        return {
            s: {w: [st.time for st in per.values()] for w, per in workloads.items()}
            for s, workloads in self.studies.items()
        }


def read_track(directory: str | os.PathLike, track: str, version: Version = V05) -> TrackLogs:
    """Reads one track's logs laid out as mlcommons/submissions_algorithms'
    `previous_leaderboards/algoperf_v05/logs/<track>` (`LAYOUT`), selecting a trial per study.

    Uneven logs are scored as AlgoPerf scores them, each with a warning: a workload without
    logs (a miss; a missing held-out variant makes its base workload a miss), a study short of
    trials or a missing study (the median over the studies there), a trial directory without
    eval_measurements.csv (skipped), logs of workloads this version does not score (ignored).

    Raises:
      LogError: an unknown track or workload, a directory not laid out as `LAYOUT`, a CSV
        without the needed columns or with a non-numeric value; the message names the path.
    """
    if track not in TRACKS:
        raise LogError(f"unknown track {track!r}: expected one of {', '.join(TRACKS)}")
    root = pathlib.Path(directory)
    if not root.is_dir():
        raise LogError(f"{root}: not a directory; expected a track's logs, {LAYOUT}")
    if root.name in TRACKS and root.name != track:
        raise LogError(f"{root}: holds {root.name} logs, not {track} logs")
    entries = _subdirs(root)
    if any(_STUDY.fullmatch(d.name) for d in entries):
        raise LogError(
            f"{root}: holds study_<n> directories, one submission's logs; expected the track's "
            f"directory, with one directory per submission: {LAYOUT}"
        )
    if not entries:
        raise LogError(f"{root}: no submission directories; expected {LAYOUT}")
    warnings: list[str] = []
    studies = {d.name: _read_submission(d, track, version, warnings) for d in entries}
    warnings += _coverage_warnings(studies, track, version)
    return TrackLogs(track, version, studies, tuple(warnings))


def _subdirs(path: pathlib.Path) -> list[pathlib.Path]:
    return sorted(
        (p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_natural
    )


def _natural(path: pathlib.Path) -> tuple:
    """trial_2 before trial_10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))


def _read_submission(
    path: pathlib.Path, track: str, version: Version, warnings: list[str]
) -> dict[str, dict[str, Study]]:
    study_dirs = [d for d in _subdirs(path) if _STUDY.fullmatch(d.name)]
    if not study_dirs:
        raise LogError(f"{path}: no study_<n> directories; expected {LAYOUT}")
    others = [d.name for d in _subdirs(path) if not _STUDY.fullmatch(d.name)]
    if others:
        warnings.append(f"{path.name}: not study directories, ignored: {', '.join(others)}")
    out: dict[str, dict[str, Study]] = {}
    frameworks: dict[str, str] = {}
    ignored: set[str] = set()
    stray: list[str] = []
    for study_dir in study_dirs:
        for workload_dir in _subdirs(study_dir):
            where = f"{path.name}/{study_dir.name}/{workload_dir.name}"
            match = _WORKLOAD.fullmatch(workload_dir.name)
            if match is None and _TRIAL.fullmatch(workload_dir.name):
                # AlgoPerf takes it for a workload and finds no trial_<n> directories in it.
                stray.append(f"{study_dir.name}/{workload_dir.name}")
                continue
            if match is None:
                raise LogError(
                    f"{workload_dir}: expected a workload directory named "
                    f"<workload>_jax or <workload>_pytorch ({LAYOUT})"
                )
            workload, framework = match.groups()
            if workload in version.unscored:
                ignored.add(workload)
                continue
            if workload not in version.targets:
                raise LogError(
                    f"{workload_dir}: unknown workload {workload!r} for AlgoPerf "
                    f"{version.name}; expected one of {', '.join(sorted(version.targets))}"
                )
            if frameworks.setdefault(workload, framework) != framework:
                raise LogError(
                    f"{workload_dir}: {workload} logged in both jax and pytorch; expected one "
                    "framework per workload and submission"
                )
            study = _read_study(workload_dir, version.targets[workload], where, warnings)
            if study is not None:
                out.setdefault(workload, {})[study_dir.name] = study
    if stray:
        warnings.append(f"{path.name}: trials outside any workload, ignored: {', '.join(stray)}")
    if ignored:
        warnings.append(
            f"{path.name}: not scored in AlgoPerf {version.name}, ignored: "
            + ", ".join(sorted(ignored))
        )
    return out


def _read_study(
    workload_dir: pathlib.Path, target: Target, where: str, warnings: list[str]
) -> Study | None:
    """The study's selected trial and time; None when it has no trial with measurements."""
    trial_dirs = [d for d in _subdirs(workload_dir) if _TRIAL.fullmatch(d.name)]
    present = [d for d in trial_dirs if (d / MEASUREMENTS).is_file()]
    absent = [d.name for d in trial_dirs if d not in present]
    if absent:
        warnings.append(f"{where}: no {MEASUREMENTS} in {', '.join(absent)}: skipped")
    if not present:
        warnings.append(f"{where}: no trial with {MEASUREMENTS}: the study does not count")
        return None
    curves = [read_measurements(d / MEASUREMENTS, target.column) for d in present]
    index, time = select_trial(curves, target)
    return Study(time, None if index is None else present[index].name, len(present))


def read_measurements(
    path: str | os.PathLike, column: str, time_column: str = TIME_COLUMN
) -> tuple[np.ndarray, np.ndarray]:
    """(times, values of `column`) over the evaluations of one eval_measurements.csv.

    Empty cells (an evaluation without that metric) are NaN, as pandas reads them.

    Raises:
      LogError: not text, no header, a needed column missing, or a value that is not a
        number.
    """
    path, needed = pathlib.Path(path), (time_column, column)
    try:
        with path.open(newline="") as f:
            header, *rows = list(csv.reader(f)) or [[]]
    except UnicodeDecodeError:
        raise LogError(f"{path}: not a text file; expected AlgoPerf's {MEASUREMENTS}") from None
    missing = [c for c in needed if c not in header]
    if missing:
        raise LogError(
            f"{path}: no column {', '.join(missing)}; expected AlgoPerf's "
            f"{MEASUREMENTS} with the columns {', '.join(needed)}"
        )
    index = {c: header.index(c) for c in needed}
    cells = [
        [_number(row[i] if i < len(row) else "", path, line, c) for c, i in index.items()]
        for line, row in enumerate(rows, start=2)
    ]
    times, values = np.array(cells, np.float64).reshape(-1, 2).T
    return times, values


def _number(text: str, path: pathlib.Path, line: int, column: str) -> float:
    if not text.strip():
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise LogError(f"{path}, line {line}, column {column}: {text!r} is not a number") from None


def _coverage_warnings(
    studies: Mapping[str, Mapping[str, Mapping[str, Study]]], track: str, version: Version
) -> list[str]:
    """What is missing against the version's full set: workloads, studies, trials."""
    out = []
    expected_trials = version.trials[track]
    for sub, per in studies.items():
        missing = [w for w in version.targets if w not in per]
        if missing:
            consequence = sorted(
                {version.held_out.get(w, w) for w in missing} & set(version.base_workloads)
            )
            out.append(
                f"{sub}: no logs for {', '.join(missing)}: "
                f"{', '.join(consequence)} scored as missed"
            )
        for workload, by_study in per.items():
            if len(by_study) != version.studies:
                out.append(
                    f"{sub}/{workload}: {len(by_study)} of {version.studies} studies "
                    f"({', '.join(by_study)}): the median over those"
                )
            short = [
                f"{name} {st.trials}"
                for name, st in by_study.items()
                if st.trials != expected_trials
            ]
            if short:
                out.append(
                    f"{sub}/{workload}: trials per study (expected {expected_trials}): "
                    + ", ".join(short)
                )
    return out


# ---------------------------------------------------------------------------- the leaderboard


def score_track(
    directory: str | os.PathLike, track: str, out: str | os.PathLike, version: Version = V05
) -> tuple[Scores, TrackLogs, list[pathlib.Path]]:
    """Reads a track's logs, scores them and writes the leaderboard into `out`.

    Everything is read and scored before anything is written: bad logs (`LogError`) leave
    `out` untouched.
    """
    if pathlib.Path(out).exists() and not pathlib.Path(out).is_dir():
        raise LogError(f"--out {out}: is a file, not a directory for the leaderboard")
    logs = read_track(directory, track, version)
    board = score(logs.study_times(), version.base_workloads, version.held_out)
    return board, logs, write_leaderboard(out, board, logs, source=str(directory))


def leaderboard_rows(board: Scores) -> list[dict[str, object]]:
    """One row per submission, best first: rank, submission, score, then per base workload
    the time that counts (`<w>_time`, inf: no credit) and its ratio to the fastest."""
    rows = []
    for rank, sub in enumerate(board.ranked(), start=1):
        row: dict[str, object] = {"rank": rank, "submission": sub, "score": board.scores[sub]}
        for w in board.workloads:
            row[f"{w}_time"] = board.times[sub][w]
            row[f"{w}_ratio"] = board.ratios[sub][w]
        rows.append(row)
    return rows


def study_rows(logs: TrackLogs) -> list[dict[str, object]]:
    """One row per submission, workload and study: the selected trial and its time."""
    return [
        {
            "submission": sub,
            "workload": w,
            "study": name,
            "trials": st.trials,
            "selected_trial": st.trial or "",
            "time": st.time,
        }
        for sub, per in logs.studies.items()
        for w, by_study in sorted(per.items())
        for name, st in by_study.items()
    ]


def write_leaderboard(
    out: str | os.PathLike, board: Scores, logs: TrackLogs, *, source: str = ""
) -> list[pathlib.Path]:
    """leaderboard.csv, studies.csv, summary.md and profiles.png in `out` (created), through
    the one report writer."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"AlgoPerf {logs.version.name} {logs.track}"
    report.write_report(
        out,
        leaderboard_rows(board),
        rows_file="leaderboard.csv",
        title=f"{title} leaderboard",
        sections=summary_sections(board, logs, source=source),
        tables={"studies.csv": study_rows(logs)},
        figures={"profiles.png": lambda path: plot_leaderboard(path, board, title=title)},
    )
    return [out / name for name in ("leaderboard.csv", "studies.csv", "summary.md", "profiles.png")]


def plot_leaderboard(path: str | os.PathLike, board: Scores, *, title: str) -> pathlib.Path:
    """profiles.png: every submission's rho(tau) on the grid, best first, the legend (with
    the scores) beside the axes; colours and dash patterns keep a dozen lines apart."""
    styles = ("-", "--", "-.", ":")
    with report.figure(path, (9, 4.2), dpi=100) as (ax,):
        for i, sub in enumerate(board.ranked()):
            ax.step(
                board.taus,
                board.rho[sub],
                styles[i // 10 % len(styles)],
                where="post",
                color=f"C{i % 10}",
                lw=1.5,
                label=f"{sub} ({board.scores[sub]:.4f})",
            )
        ax.set_xlim(board.taus[0], board.taus[-1])
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("tau (time to target / the fastest submission's)")
        ax.set_ylabel(f"fraction of the {len(board.workloads)} workloads")
        ax.set_title(f"{title}: performance profiles (legend: score)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return pathlib.Path(path)


def summary_sections(board: Scores, logs: TrackLogs, *, source: str = "") -> list[str]:
    """summary.md's sections: the logs, the score's rules, the leaderboard with per-workload
    ratios, and the warnings."""
    version = logs.version
    ranks = [
        [str(rank), sub, f"{board.scores[sub]:.4f}"]
        + [_ratio_cell(board.ratios[sub][w]) for w in board.workloads]
        for rank, sub in enumerate(board.ranked(), start=1)
    ]
    table = report.table(["rank", "submission", "score", *board.workloads], ranks)
    warnings = [f"- {w}" for w in logs.warnings] or ["None: every workload, study and trial."]
    return [
        f"Logs: `{source}`." if source else "",
        f"Score: the normalised area under each submission's performance profile over the "
        f"{len(board.workloads)} base workloads, a trapezoid on AlgoPerf's grid of "
        f"{board.taus.size} taus from {board.taus[0]:g} to {board.taus[-1]:g}; per study the "
        f"trial reaching the target at the earliest evaluation, per workload the median over "
        f"{version.studies} studies (a miss: inf), no credit beyond {board.taus[-1]:g}x the "
        "fastest or when the held-out variant misses (docs/algoperf.md).",
        table,
        "Cells: time to target over the fastest submission's (-: no credit).",
        "## Warnings",
        "\n".join(warnings),
        "![profiles](profiles.png)",
    ]


def _ratio_cell(ratio: float) -> str:
    return f"{ratio:.2f}" if math.isfinite(ratio) else "-"
