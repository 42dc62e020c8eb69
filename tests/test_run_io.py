"""Tests for adamlab.training.run_io: run files that survive torn writes, damaged files named in
one clear error, and workdirs that cannot be written refused before anything is written."""

import errno
import json
import logging
import os
import subprocess
import sys
import tempfile
import textwrap

import ml_collections
import pytest

from adamlab import config_dict
from adamlab.training import run_io


def _write_records(workdir, steps, tail: bytes = b"") -> None:
    lines = [json.dumps({"step": s, "split": "train", "loss": 1.0 / s}) for s in steps]
    (workdir / run_io.METRICS_FILE).write_bytes(("\n".join(lines) + "\n").encode() + tail)


# -- metrics.jsonl: torn last lines --------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [b'{"step": 4, "split": "tr', b'{"step": 4, "split": "train"}\x00', b"\x00" * 64, b"\n\n"],
    ids=["cut_short", "garbage_after_a_record", "nul_bytes", "blank_lines"],
)
def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, tail, caplog):
    """Issue 15.5: a crash or a full disk mid-write left a partial last line, and resuming
    failed with a JSONDecodeError in `drop_records_after`."""
    _write_records(tmp_path, [1, 2, 3], tail)
    with caplog.at_level(logging.WARNING, "adamlab.training.run_io"):
        assert [r["step"] for r in run_io.read_metrics(tmp_path)] == [1, 2, 3]
    torn = tail.strip(b"\n\0") != b""
    assert any("torn last line 4" in r.getMessage() for r in caplog.records) == torn
    # Resuming from step 2 drops step 3 and the torn line; the run appends after them.
    with run_io.MetricWriter(tmp_path, resume_step=2) as writer:
        writer.write(3, "train", {"loss": 0.5})
    assert [r["step"] for r in run_io.read_metrics(tmp_path)] == [1, 2, 3]
    assert run_io.read_metrics(tmp_path)[-1]["loss"] == 0.5


def test_a_writer_never_appends_to_a_torn_line(tmp_path):
    """Without a resume step (a directory no earlier attempt finished) the torn line still goes:
    appended to, it would become an unreadable line in the middle of the file."""
    _write_records(tmp_path, [1, 2], tail=b'{"step": 3, "spl')
    with run_io.MetricWriter(tmp_path) as writer:
        writer.write(3, "train", {"loss": 0.25})
    lines = (tmp_path / run_io.METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def test_a_damaged_line_elsewhere_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / run_io.METRICS_FILE
    path.write_text('{"step": 1, "split": "train"}\n{"step": 2, "spl\n{"step": 3, "split": "x"}\n')
    with pytest.raises(run_io.RunDirError, match=f"^{path}:2: not a JSON record"):
        run_io.read_metrics(tmp_path)
    with pytest.raises(run_io.RunDirError, match=f"{path}:2:"):
        run_io.MetricWriter(tmp_path, resume_step=1)
    assert path.read_text().count("\n") == 3  # refused, not rewritten


def test_a_crash_mid_append_then_resume(tmp_path):
    """A real process dies (os._exit) halfway through writing a record; the next attempt
    resumes from its checkpoint step and reads back exactly one trajectory."""
    script = f"""
        import os
        from adamlab.training import run_io
        with run_io.MetricWriter({str(tmp_path)!r}) as writer:
            for step in (1, 2, 3):
                writer.write(step, "train", {{"loss": 1.0}})
            writer._file.write('{{"step": 4, "split": "train", "lo')  # the write in progress
            writer._file.flush()
            os._exit(9)
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 9, result.stderr[-2000:]
    with run_io.MetricWriter(tmp_path, resume_step=2) as writer:
        writer.write(3, "train", {"loss": 0.5})
        writer.write(4, "train", {"loss": 0.4})
    assert [(r["step"], r["loss"]) for r in run_io.read_metrics(tmp_path)] == [
        (1, 1.0),
        (2, 1.0),
        (3, 0.5),
        (4, 0.4),
    ]


def test_metric_writer_neither_imports_nor_blocks_torch_and_logs_nan_quietly(tmp_path):
    """tensorboardX imports torch when it is installed (seconds of start-up): the writer loads it
    with torch hidden, then unhides it; a NaN (a diverged run) is logged without warnings."""
    script = f"""
        import importlib.util, logging, sys
        from adamlab.training import run_io
        logging.basicConfig(level=logging.WARNING)
        with run_io.MetricWriter({str(tmp_path)!r}) as writer:
            writer.write(1, "train", {{"loss": float("nan")}})
        assert "torch" not in sys.modules, "tensorboardX imported torch"
        print("found torch:", importlib.util.find_spec("torch") is not None)
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "NaN or Inf" not in result.stderr
    assert run_io.read_metrics(tmp_path)[0]["step"] == 1


# -- atomic JSON files -------------------------------------------------------------------------


def _config(**train) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"seed": 0, "train": {"num_steps": 10, **train}})


def test_a_crash_while_writing_config_leaves_the_old_one_whole(tmp_path, monkeypatch):
    run_io.write_config(tmp_path, _config())
    before = (tmp_path / run_io.CONFIG_FILE).read_text()

    def crash(*args):
        raise KeyboardInterrupt  # e.g. Ctrl-C between writing the new file and renaming it

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        run_io.write_config(tmp_path, _config(num_steps=99))
    monkeypatch.undo()
    assert (tmp_path / run_io.CONFIG_FILE).read_text() == before
    assert os.listdir(tmp_path) == [run_io.CONFIG_FILE]  # no temporary file left behind
    run_io.write_json(tmp_path / "report.json", {"a": 1})
    assert json.loads((tmp_path / "report.json").read_text()) == {"a": 1}


@pytest.mark.parametrize("content", ['{"seed": 0, "tra', "[1, 2]", "\xff\xfe"])
def test_a_damaged_config_is_named_not_a_traceback(tmp_path, content):
    path = tmp_path / run_io.CONFIG_FILE
    path.write_bytes(content.encode("latin-1"))
    for call in (run_io.read_config, lambda w: run_io.check_resumable(w, _config())):
        with pytest.raises(run_io.RunDirError, match=f"'{path}' is damaged") as info:
            call(tmp_path)
        assert info.value.__cause__ is None and "\n" not in str(info.value)


def test_a_run_saved_before_a_field_existed_resumes_with_that_field_at_its_default(tmp_path):
    """Fields added to adamlab later (a whole section too) are absent from an older run's
    config.json; given at their default they resume it, given otherwise they are refused."""
    config = config_dict.load_config("digits")
    saved = run_io.config_to_dict(config)
    del saved["optimizer"]["l2"], saved["init"]  # as written before these fields existed
    (tmp_path / run_io.CONFIG_FILE).write_text(json.dumps(saved))
    assert run_io.check_resumable(tmp_path, config)
    config.optimizer.l2 = 1e-4
    with pytest.raises(run_io.ConfigMismatchError, match=r"optimizer.l2: '<missing>' \(saved\)"):
        run_io.check_resumable(tmp_path, config)
    config.optimizer.l2 = None
    config.init.workdir = "elsewhere"
    with pytest.raises(run_io.ConfigMismatchError, match="init.workdir"):
        run_io.check_resumable(tmp_path, config)


# -- workdirs that cannot be used ----------------------------------------------------------------


def test_prepare_workdir_creates_and_checks(tmp_path):
    workdir = run_io.prepare_workdir(tmp_path / "runs" / "a")
    assert workdir.is_dir() and os.listdir(workdir) == []  # the write probe left nothing


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("not a directory")
    with pytest.raises(run_io.RunDirError, match="is a file, not a directory"):
        run_io.prepare_workdir(tmp_path / "run")
    with pytest.raises(run_io.RunDirError, match="is a file"):
        run_io.prepare_workdir(tmp_path / "run" / "sub")


def test_a_read_only_workdir_is_refused(tmp_path, monkeypatch):
    """A read-only filesystem (simulated: EROFS from the write probe, as a ro mount answers)."""

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(run_io.RunDirError, match="is not writable: Read-only file system"):
        run_io.prepare_workdir(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_workdir_without_write_permission_is_refused(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir(mode=0o555)
    with pytest.raises(run_io.RunDirError, match="is not writable"):
        run_io.prepare_workdir(workdir)


# -- storage errors and file modes (issue 27, items 7 and 8) ------------------------------------


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write(2) says it: no file named


def test_a_full_disk_while_writing_json_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    run_io.write_config(tmp_path, _config())
    before = (tmp_path / run_io.CONFIG_FILE).read_text()
    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(OSError) as info:
        run_io.write_config(tmp_path, _config(num_steps=99))
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(tmp_path / run_io.CONFIG_FILE)
    monkeypatch.undo()
    assert (tmp_path / run_io.CONFIG_FILE).read_text() == before
    assert os.listdir(tmp_path) == [run_io.CONFIG_FILE]  # no temporary file left behind


def test_a_full_disk_while_writing_metrics_names_the_file(tmp_path):
    class FullDisk:
        write = flush = close = staticmethod(_disk_full)

    writer = run_io.MetricWriter(tmp_path)
    real, writer._file = writer._file, FullDisk()
    with pytest.raises(OSError) as info:
        writer.write(1, "train", {"loss": 0.5})
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(tmp_path / run_io.METRICS_FILE)
    with pytest.raises(OSError, match="No space left") as info:
        writer.close()
    assert info.value.filename == str(tmp_path / run_io.METRICS_FILE)
    real.close()


def test_a_full_disk_or_a_directory_where_the_lock_belongs_is_one_line(tmp_path, monkeypatch):
    from adamlab.training import workdir_lock

    monkeypatch.setattr(workdir_lock.os, "pwrite", _disk_full)
    lock = run_io.WorkdirLock(tmp_path)
    with pytest.raises(OSError) as info:
        lock.acquire()
    assert not lock.held and info.value.filename == str(tmp_path / ".lock")
    assert "cannot take the workdir lock: No space left on device" in info.value.strerror
    monkeypatch.undo()
    os.remove(tmp_path / ".lock")
    (tmp_path / ".lock").mkdir()
    with pytest.raises(IsADirectoryError) as info:
        run_io.WorkdirLock(tmp_path).acquire()
    assert info.value.filename == str(tmp_path / ".lock")
    assert "cannot take the workdir lock: Is a directory" in info.value.strerror


def test_every_run_file_follows_the_umask(tmp_path):
    """Issue 27.8: config.json and reports were 0600 (mkstemp) while checkpoints and metrics
    followed the umask: a restore needs the config as readable as the weights."""
    script = f"""
        import os, jax.numpy as jnp, ml_collections
        os.umask(0o027)
        from adamlab.training import checkpoint, run_io
        workdir = {str(tmp_path)!r}
        with run_io.WorkdirLock(workdir):
            run_io.write_config(workdir, ml_collections.ConfigDict({{"seed": 0}}))
            run_io.write_json(os.path.join(workdir, "result.json"), {{"a": 1}})
            with run_io.MetricWriter(workdir) as writer:
                writer.write(1, "train", {{"loss": 0.5}})
            with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
                ckpt.save(1, {{"w": jnp.ones(3)}})
            modes = {{}}
            for root, _, files in os.walk(workdir):
                for name in files:
                    path = os.path.join(root, name)
                    modes[os.path.relpath(path, workdir)] = os.stat(path).st_mode & 0o777
        print(sorted({{oct(m) for m in modes.values()}}), len(modes))
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    modes, count = result.stdout.split("] ")
    assert modes == "['0o640'" and int(count) > 10, result.stdout
