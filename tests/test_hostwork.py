"""Host workers (hostwork.py): an audit's and the balanced set's saving and perceiving in worker processes
give the run directory one thread gives, byte for byte; an error in a worker stops the run after the work
in flight is recorded; a backend that is not process safe perceives in the main process."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

import fairgen
from fairgen import hostwork, models, perception, suites
from fairgen.distributed import LOCAL_WORLD_VARS, WORLD_VARS
from fairgen.fix.data import build
from fairgen.hostwork import ENV, host_workers
from fairgen.perception.world import WorldPerception
from fairgen.store import RunStore

from conftest import run_cli, write_suite


def _files(run: Path) -> dict[str, bytes]:
    """Every image and the records file of a run directory, by relative path."""
    paths = [*run.glob("images/*/*.png"), run / "perception.jsonl"]
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in paths}


def test_tiny_audit_with_worker_processes_equals_one_thread(tmp_path, monkeypatch):
    """fairgen-tiny perceived by `world`: 3 worker processes (each batch of 8 cut into chunks of 3, 3, 2)
    write the same images, records and results.json as everything in one thread."""
    prompts = suites.load("occupations:test")[:3]
    model = models.load("tiny")
    runs = {}
    for workers in (0, 3):
        monkeypatch.setenv(ENV, str(workers))
        runs[workers] = fairgen.audit(model, suite=prompts, images_per_prompt=8, batch_size=10, seed=3,
                                      perception_backend="world", out=tmp_path / str(workers))
    assert hostwork._POOL is not None and hostwork._POOL[0] == 3  # the second run did use 3 processes
    assert runs[3].results == runs[0].results
    one, many = _files(tmp_path / "0"), _files(tmp_path / "3")
    assert len(one) == 3 * 8 + 1 and many == one
    assert (tmp_path / "3/results.json").read_bytes() == (tmp_path / "0/results.json").read_bytes()
    assert runs[0].summary["face_rate"] > 0.5  # perception read the images, not empty records


def test_balanced_set_with_worker_processes_equals_one_thread(tmp_path, monkeypatch):
    prompts = suites.load("occupations:train")[:2]
    source, backend = models.load("world"), perception.load("world")
    sets = {}
    for workers in (0, 2):
        monkeypatch.setenv(ENV, str(workers))
        sets[workers] = build(prompts, ["gender", "race"], source, backend, tmp_path / str(workers),
                              images_per_group=3, seed=1, batch_size=7, check_concept=True)
    assert sets[2].frame.equals(sets[0].frame) and sets[2].stats == sets[0].stats
    assert len(sets[0].frame) == 2 * 6 * 3  # every group of both attributes read back: nothing dropped
    assert _files(tmp_path / "2") == _files(tmp_path / "0")


def test_a_worker_error_stops_the_audit_after_the_work_in_flight(tmp_path, monkeypatch):
    """A save that fails in a worker (a directory where pilot's image 4 goes) stops the audit: the batch's
    other chunk is recorded, the batch generated meanwhile is not, every record names an image on disk,
    and once the obstacle is gone the same command finishes with the uninterrupted results."""
    monkeypatch.setenv(ENV, "2")
    suite = str(write_suite(tmp_path / "s.yaml", ["nurse", "pilot"]))
    run = tmp_path / "run"
    fairgen.audit(model="world", suite=suite, images_per_prompt=2, batch_size=4, out=run)
    (run / "images/pilot/00004.png/x").mkdir(parents=True)
    # the 16 new images go as batches [nurse 2-5] [nurse 6-9] [pilot 2-5] [pilot 6-9]; batch 3's chunks
    # are [pilot 2, 3] and [pilot 4, 5]
    with pytest.raises(IsADirectoryError):
        fairgen.audit(model="world", suite=suite, images_per_prompt=10, batch_size=4, out=run)
    records = RunStore(run).load_records()
    assert sorted(records) == sorted([("nurse", k) for k in range(10)] + [("pilot", k) for k in range(4)])
    assert all(RunStore(run).load_image(pid, k) is not None for pid, k in records)
    shutil.rmtree(run / "images/pilot/00004.png")
    resumed = fairgen.audit(model="world", suite=suite, images_per_prompt=10, batch_size=4, out=run)
    whole = fairgen.audit(model="world", suite=suite, images_per_prompt=10, batch_size=4, out=tmp_path / "ref")
    assert resumed.results == whole.results
    assert (run / "perception.jsonl").read_bytes() == (tmp_path / "ref/perception.jsonl").read_bytes()


class _MainProcessWorld(WorldPerception):
    """The world reader as a backend that is not process safe (as a GPU one is): it holds a lock, which
    cannot be pickled, and notes the process every call runs in."""

    process_safe = False

    def __init__(self) -> None:
        self.lock, self.pids = threading.Lock(), set()

    def perceive(self, images):
        with self.lock:
            self.pids.add(os.getpid())
        return super().perceive(images)


def test_a_backend_that_is_not_process_safe_perceives_in_the_main_process(tmp_path, monkeypatch):
    suite = str(write_suite(tmp_path / "s.yaml", ["nurse", "pilot"]))
    monkeypatch.setenv(ENV, "0")
    ref = fairgen.audit(model="world", suite=suite, images_per_prompt=6, batch_size=4, out=tmp_path / "ref")
    monkeypatch.setenv(ENV, "2")
    backend = _MainProcessWorld()
    res = fairgen.audit(model="world", suite=suite, images_per_prompt=6, batch_size=4, perception_backend=backend,
                        out=tmp_path / "run")
    assert backend.pids == {os.getpid()}
    assert res.results == ref.results and _files(tmp_path / "run") == _files(tmp_path / "ref")


def test_host_workers_default_and_override(monkeypatch):
    for var in (ENV, *LOCAL_WORLD_VARS, *WORLD_VARS):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hostwork, "_POOL", None)  # no pool running in this process
    for cores, expected in ((1, 0), (2, 1), (16, 15), (64, hostwork.MAX_WORKERS)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert host_workers() == host_workers(hostwork.MIN_POOL_IMAGES) == expected
        assert host_workers(hostwork.MIN_POOL_IMAGES - 1) == 0  # small work: not worth starting the pool
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four processes of a launch share the 64 cores
    assert host_workers() == 15
    monkeypatch.setenv(ENV, "5")
    assert host_workers() == host_workers(1) == 5  # as given, whatever the work
    for bad in ("-1", "many"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(fairgen.FairgenError, match=ENV):
            host_workers()


def test_a_bad_worker_count_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "lots")
    proc = run_cli("audit", "--model", "world", "--suite", str(write_suite(tmp_path / "s.yaml", ["nurse"])),
                   "-n", "2", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and ENV in proc.stderr and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "run").exists()


def test_a_killed_audit_leaves_no_workers_and_resumes(tmp_path, monkeypatch):
    """SIGKILL of an audit's main process (as a machine failure, the workers not told): its worker
    processes exit on their own, and the same command finishes with the uninterrupted results."""
    import json
    import signal
    import subprocess
    import sys
    import time

    import psutil

    suite = str(write_suite(tmp_path / "s.yaml", [f"job{i}" for i in range(4)]))
    args = [sys.executable, "-m", "fairgen", "audit", "--model", "world", "--suite", suite, "-n", "24",
            "--batch-size", "8", "--seed", "2"]
    env = dict(os.environ, FAIRGEN_HOST_WORKERS="2", OMP_NUM_THREADS="1")
    run = tmp_path / "run"
    proc = subprocess.Popen([*args, "--out", str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records, workers, deadline = run / "perception.jsonl", [], time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if records.exists() and records.read_bytes().count(b"\n") >= 16:
            workers = [c for c in psutil.Process(proc.pid).children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert workers and not (run / "results.json").exists(), "the run finished before it could be killed"
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive
    resumed = subprocess.run([*args, "--out", str(run)], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    monkeypatch.setenv(ENV, "0")  # the reference: one thread, uninterrupted
    fairgen.audit(model="world", suite=suite, images_per_prompt=24, batch_size=8, seed=2, out=tmp_path / "ref")
    assert json.loads((run / "results.json").read_text()) == json.loads((tmp_path / "ref/results.json").read_text())
    assert (run / "perception.jsonl").read_bytes() == (tmp_path / "ref/perception.jsonl").read_bytes()
