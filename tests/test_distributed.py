"""A distributed audit (several processes, each its share of the images) leaves the run directory of one
process; the records file ends up the same whatever the processes and sessions that wrote it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import psutil
import pytest

import fairgen
from fairgen.store import RunStore

from conftest import write_suite

CONCEPTS = [f"job{i}" for i in range(6)]
N = 40  # images per prompt
SEED = 7
ARGS = ["audit", "--model", "world", "-n", str(N), "--batch-size", "4", "--seed", str(SEED)]
SAME_FILES = ("results.json", "results.csv", "perception.jsonl")


def _env(**extra: str) -> dict[str, str]:
    """The test's environment for a fairgen process: one torch thread (the machine is shared), no launcher
    variables of its own, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return dict(env, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="200", **extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mpirun_style(args: list[str], **popen) -> list[subprocess.Popen]:
    """Two fairgen processes started as mpirun starts them under `accelerate launch --cpu --num_processes 2
    --mpirun_hostfile ...`: Open MPI's rank variables, and accelerate's MASTER_ADDR / MASTER_PORT."""
    port = str(_free_port())
    return [
        subprocess.Popen([sys.executable, "-m", "fairgen", *args], **popen,
                         env=_env(OMPI_COMM_WORLD_RANK=str(r), OMPI_COMM_WORLD_SIZE="2",
                                  OMPI_COMM_WORLD_LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                                  MASTER_PORT=port, ACCELERATE_USE_CPU="True"))
        for r in range(2)
    ]


def _shard_keys(run: Path) -> dict[int, list[tuple[str, int]]]:
    """The (prompt id, sample) of every complete record in each shard file present, by rank."""
    out = {}
    for path in run.glob("perception-*.jsonl"):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # merged away meanwhile
            continue
        out[int(path.stem.split("-")[1])] = [(r["prompt_id"], r["sample"]) for r in
                                             map(json.loads, data[: data.rfind(b"\n") + 1].splitlines())]
    return out


def _kill_when(procs: list[subprocess.Popen], ready: Callable[[], bool]) -> None:
    """SIGKILL every process and any descendants at once, as a machine failure would, when ready() holds."""
    deadline = time.time() + 120
    while time.time() < deadline and all(p.poll() is None for p in procs) and not ready():
        time.sleep(0.002)
    family = [psutil.Process(p.pid) for p in procs]
    family += [child for parent in family for child in parent.children(recursive=True)]
    for member in family:
        try:
            member.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:  # it finished first: the caller's checks say so
            pass
    psutil.wait_procs(family, timeout=30)
    for p in procs:
        p.wait()


def _assert_same_run(run: Path, ref: Path) -> None:
    """run holds what the one-process reference holds: the same results, records, table and images, and no
    shards."""
    for name in SAME_FILES:
        assert (run / name).read_bytes() == (ref / name).read_bytes(), name
    assert json.loads((run / "manifest.json").read_text())["finished"]
    ref_images = sorted(p.relative_to(ref) for p in (ref / "images").glob("*/*.png"))
    assert sorted(p.relative_to(run) for p in (run / "images").glob("*/*.png")) == ref_images
    assert all((run / p).read_bytes() == (ref / p).read_bytes() for p in ref_images)
    assert not list(run.glob("perception-*.jsonl"))


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    return write_suite(tmp_path_factory.mktemp("suite") / "s.yaml", CONCEPTS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, suite) -> Path:
    """The audit run by one plain process (this one: the CLI's audit is this call)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    fairgen.audit(model="world", suite=str(suite), images_per_prompt=N, batch_size=4, seed=SEED, out=out)
    return out


def test_two_process_accelerate_audit_equals_one_process(tmp_path, suite, reference):
    """Each process saving and perceiving in a host worker process of its own (hostwork.py)."""
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(_free_port()), "-m", "fairgen", *ARGS, "--suite", str(suite),
         "--out", str(out)],
        capture_output=True, text=True, env=_env(FAIRGEN_HOST_WORKERS="1"), timeout=300,
    )
    assert done.returncode == 0, done.stderr
    _assert_same_run(out, reference)
    assert done.stdout.count("results: ") == 1  # the summary comes from rank 0 only


def test_killed_distributed_audit_resumes_with_two_then_one_process(tmp_path, suite, reference):
    out = tmp_path / "run"
    args = [*ARGS, "--suite", str(suite), "--out", str(out)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}

    # two processes as mpirun starts them, killed once each has recorded two batches
    _kill_when(_mpirun_style(args, **quiet),
               lambda: all(len(_shard_keys(out).get(r, [])) >= 8 for r in (0, 1)))
    assert not (out / "results.json").exists(), "the run finished before it could be killed"
    plan = [(c, k) for c in CONCEPTS for k in range(N)]
    first = _shard_keys(out)
    assert set(first) == {0, 1}
    for rank, keys in first.items():  # image i of the plan is rank i % 2's, and written once
        assert len(keys) == len(set(keys)) and all(plan.index(key) % 2 == rank for key in keys)
    first_keys = {k for keys in first.values() for k in keys}

    # resumed by two processes again, killed again once both have new records
    def new_records() -> bool:
        shards = _shard_keys(out)
        new = {k for keys in shards.values() for k in keys}
        return not new & first_keys and all(len(shards.get(r, [])) >= 8 for r in (0, 1))

    _kill_when(_mpirun_style(args, **quiet), new_records)
    assert not (out / "results.json").exists(), "the run finished before it could be killed"
    merged = [(r["prompt_id"], r["sample"])
              for r in map(json.loads, (out / "perception.jsonl").read_bytes().splitlines())]
    assert set(merged) >= first_keys  # the first session's shards, merged before any new work
    assert not set(merged) & {k for keys in _shard_keys(out).values() for k in keys}  # nothing redone

    # finished by one plain process
    done = subprocess.run([sys.executable, "-m", "fairgen", *args], capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    _assert_same_run(out, reference)


def test_distributed_input_error_is_one_line_and_exit_2(reference, suite):
    """Reopening a run with another seed fails on rank 0 (which checks the run directory); rank 1 learns it
    at the barrier, so both exit 2 and only one line is printed."""
    args = ["audit", "--model", "world", "-n", str(N), "--seed", "8", "--suite", str(suite),
            "--out", str(reference)]
    procs = _mpirun_style(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [2, 2]
    assert outs[0][1].strip().splitlines() == [
        f"error: {reference} holds a run made with a different seed (7 -> 8); use another --out, or the same "
        "inputs to resume (only --images-per-prompt may change)"]
    assert outs[1][1].strip() == ""


def test_settle_records_folds_shards_into_plan_order(tmp_path):
    """Records spread over perception.jsonl (out of order, one duplicate) and two shards (one torn by a
    crash) become one file in plan order, each record once and byte for byte; the shards go."""
    store = RunStore.open(tmp_path / "r", {"model": "world"}, {})
    rec = [{"prompt_id": p, "sample": k, "face": True, "note": "ä"} for p in ("a", "b") for k in range(3)]
    store.append_records([rec[4], rec[0], rec[4]])
    store.append_records([rec[1], rec[5]], shard=1)
    store.append_records([rec[3]], shard=0)
    with open(store.shard_path(1), "ab") as f:
        f.write(b'{"prompt_id": "a", "sam')  # a write cut short
    plan = [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    store.settle_records(plan)
    lines = (tmp_path / "r/perception.jsonl").read_bytes().splitlines()
    assert [json.loads(line) for line in lines] == [rec[0], rec[1], rec[3], rec[4], rec[5]]
    assert not store.shards()
    before = (tmp_path / "r/perception.jsonl").stat().st_ino
    store.settle_records(plan)
    assert (tmp_path / "r/perception.jsonl").stat().st_ino == before  # canonical already: not replaced
    store.append_records([rec[2]])  # a grown plan's records, appended after the others (no shards)
    store.settle_records(plan)
    assert (tmp_path / "r/perception.jsonl").read_bytes().splitlines() == lines[:2] + [
        json.dumps(rec[2], ensure_ascii=False, separators=(",", ":")).encode()] + lines[2:]

