"""Helpers shared by the test modules (importable as `helpers`: pytest puts tests/ on sys.path)."""

import json
import pathlib
import sys

import jax
import numpy as np
from sklearn.datasets import load_digits

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import child  # noqa: E402  (the standard library only)


def digits_batches(num_steps: int, batch_size: int, channels: int = 1) -> list[dict]:
    """The first `num_steps` batches of scikit-learn's digits, in file order, in [0, 1]."""
    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).reshape(-1, 8, 8, 1).astype(np.float32)
    images = np.repeat(images, channels, axis=-1)
    return [
        {
            "image": images[i * batch_size : (i + 1) * batch_size],
            "label": labels[i * batch_size : (i + 1) * batch_size].astype(np.int32),
        }
        for i in range(num_steps)
    ]


def assert_trees_equal(actual, expected) -> None:
    """Same structure and bitwise-equal leaves (dtypes included; PRNG keys by their data)."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), e in zip(
        jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree.leaves(expected), strict=True
    ):
        where = jax.tree_util.keystr(path)
        if isinstance(e, jax.Array) and jax.dtypes.issubdtype(e.dtype, jax.dtypes.prng_key):
            assert a.dtype == e.dtype, where
            a, e = jax.random.key_data(a), jax.random.key_data(e)
        assert np.asarray(a).dtype == np.asarray(e).dtype, where
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e), err_msg=where)


def child_json(code: str, *args: str, env: dict | None = None) -> dict:
    """Runs `code` in a fresh Python process (settings read once per process, such as XLA's
    flags or the allocator's, need one) and returns the JSON object it printed last."""
    return child.json_of([sys.executable, "-c", code, *args], env=env, timeout=120)


def _is_timing(key: str) -> bool:
    """What measures time (wall and compile seconds, steps/s and what derives from them, such
    as seconds-to-target): the only fields an interrupted run may report differently."""
    key = key.lower()
    return key == "phases" or "sec" in key or "time" in key or key.endswith("_s")


def without_timing(value):
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if not _is_timing(k)}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    if isinstance(value, float) and value != value:
        return "nan"  # NaN != NaN: compared as a marker.
    return value


def persisted_outputs(workdir) -> dict:
    """Every result file under `workdir` (metrics records, JSON results, CSV tables), parsed and
    with timing fields removed, by relative path: equal for an interrupted-and-resumed run and
    an uninterrupted one. Checkpoints, TensorBoard events, figures and locks are left out."""
    import csv
    import pathlib

    root = pathlib.Path(workdir)
    out = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if not path.is_file() or "checkpoints" in path.parts or path.name.startswith("."):
            continue
        if path.suffix == ".jsonl":
            lines = path.read_text().splitlines()
            out[relative] = [without_timing(json.loads(line)) for line in lines]
        elif path.suffix == ".json":
            out[relative] = without_timing(json.loads(path.read_text()))
        elif path.suffix == ".csv":
            with path.open(newline="") as f:
                out[relative] = without_timing(list(csv.DictReader(f)))
    return out
