"""The run directory (store.py) in process, file by file: what a crash, a resume or a second process must
find on disk. Each check compares with bytes or values worked out here, not with store.py's own output."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import stat
import threading
from importlib.metadata import PackageNotFoundError, version

import pytest
from PIL import Image

from fairgen import store
from fairgen.store import RunStore
from fairgen.types import FairgenError, Perception

CONFIG = {"model": "world", "seed": 0, "images_per_prompt": 4, "prompts": {"nurse": "a nurse"}}


def rec(pid, sample, **extra):
    return {"prompt_id": pid, "sample": sample, "face": True, **extra}


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def leftovers(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


# --- helpers -----------------------------------------------------------------------------------------


def test_derive_seed_is_the_documented_hash():
    for run_seed, pid, sample in [(0, "nurse", 0), (7, "ceo", 12), (123456789, "a b", 99999)]:
        digest = hashlib.blake2b(f"{run_seed}\x1f{pid}\x1f{sample}".encode(), digest_size=8).digest()
        expected = int.from_bytes(digest, "little") // 2
        assert store.derive_seed(run_seed, pid, sample) == expected
        assert 0 <= expected < 2**63
    # pinned values: a changed formula silently changes every image of a resumed or repeated run
    assert store.derive_seed(0, "nurse", 0) == 1318398510524759607
    assert store.derive_seed(1, "nurse", 0) != store.derive_seed(0, "nurse", 0)
    assert store.derive_seed(0, "nurse", 1) != store.derive_seed(0, "nurse", 0)


def test_atomic_write_bytes_makes_parents_shares_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a" / "b" / "x.bin"
    for durable in (True, False):
        store.atomic_write_bytes(path, b"first" if durable else b"second", durable=durable)
        assert path.read_bytes() == (b"first" if durable else b"second")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert leftovers(path.parent) == []


def test_atomic_write_bytes_renames_a_hidden_sibling_synced_unless_told_not_to(tmp_path, monkeypatch):
    """What a crash can leave is settled before the rename: the bytes in a hidden .NAME.*.tmp beside the
    target (one filesystem, so the rename is atomic), on disk first unless durable=False. The real os.replace
    and os.fsync run; the test only notes their arguments."""
    replaced, synced = [], []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(store.os, "replace", lambda a, b: (replaced.append((a, b)), real_replace(a, b))[1])
    monkeypatch.setattr(store.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    path = tmp_path / "x.json"
    store.atomic_write_bytes(path, b"1")  # durable by default
    assert len(synced) == 1
    store.atomic_write_bytes(path, b"2", durable=False)
    assert len(synced) == 1 and len(replaced) == 2 and path.read_bytes() == b"2"
    for tmp, target in replaced:
        assert target == path and os.path.dirname(tmp) == str(tmp_path)
        assert re.fullmatch(r"\.x\.json\..+\.tmp", os.path.basename(tmp))


def test_atomic_write_bytes_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        store.atomic_write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_strict_replaces_every_non_finite_float_at_any_depth():
    obj = {"a": math.nan, "b": [1.5, math.inf, (-math.inf, 2)], "c": {"d": 3, "e": "nan", "f": None}}
    assert store.strict(obj) == {"a": None, "b": [1.5, None, [None, 2]], "c": {"d": 3, "e": "nan", "f": None}}
    assert store.strict(0.25) == 0.25 and store.strict(math.nan) is None and store.strict(7) == 7


def test_dumps_is_strict_json_and_keeps_non_ascii():
    assert store.dumps({"x": math.nan, "é": [math.inf, 1.0]}) == '{"x": null, "é": [null, 1.0]}'
    assert store.dumps([1, 2], separators=(",", ":")) == "[1,2]"
    with pytest.raises(ValueError):  # a NaN strict() cannot replace (a key) is refused, never written
        store.dumps({math.nan: 1})


def test_atomic_write_json_is_indented_one_space_with_a_final_newline(tmp_path):
    path = tmp_path / "o.json"
    store.atomic_write_json(path, {"a": [1, math.nan], "ü": 1})
    assert path.read_text() == '{\n "a": [\n  1,\n  null\n ],\n "ü": 1\n}\n'


def test_cache_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("FAIRGEN_CACHE_DIR", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.cache_dir() == tmp_path / "own"
    monkeypatch.setenv("FAIRGEN_CACHE_DIR", "")  # empty counts as unset
    assert store.cache_dir() == tmp_path / "xdg" / "fairgen"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store.cache_dir() == tmp_path / "home" / ".cache" / "fairgen"


def test_in_background_runs_in_a_named_daemon_thread_and_carries_errors():
    seen = {}

    def work():
        me = threading.current_thread()
        seen.update(name=me.name, daemon=me.daemon, main=me is threading.main_thread())
        return 42

    assert store.in_background(work).result(timeout=10) == 42
    assert seen == {"name": "fairgen-work", "daemon": True, "main": False}

    def broken():
        raise KeyError("lost")

    with pytest.raises(KeyError, match="lost"):
        store.in_background(broken).result(timeout=10)
    nameless = store.in_background(lambda: threading.current_thread().name)
    assert nameless.result(timeout=10) == "fairgen-<lambda>"
    import functools

    unnamed = store.in_background(functools.partial(lambda: threading.current_thread().name))  # no __name__
    assert unnamed.result(timeout=10) == "fairgen-background"


def test_json_object_is_empty_unless_the_file_holds_an_object(tmp_path):
    path = tmp_path / "c.json"
    assert store._json_object(path) == {}
    path.write_text("{broken")
    assert store._json_object(path) == {}
    path.write_text("[1, 2]")
    assert store._json_object(path) == {}
    path.write_text('{"k": 1}')
    assert store._json_object(path) == {"k": 1}


def test_versions_name_what_ran():
    out = store.versions()
    assert out["python"] == platform.python_version()
    for name in ("fairgen", "torch", "transformers", "numpy"):
        try:
            assert out[name] == version(name)
        except PackageNotFoundError:
            assert name not in out
    assert set(out) <= {"python", "fairgen", "torch", "transformers", "numpy"}


def test_perception_record_lines():
    seen = Perception(face=True, box=(1, 2, 30, 40), probs={"gender": {"female": 0.75, "male": 0.25}})
    assert store.perception_record("nurse", 3, 99, seen) == {
        "prompt_id": "nurse", "sample": 3, "seed": 99, "face": True, "box": [1, 2, 30, 40],
        "probs": {"gender": {"female": 0.75, "male": 0.25}}, "label": {"gender": "female"}}
    full = Perception(face=False, concept_read="ceo", error="truncated file")
    assert store.perception_record("ceo", 0, 5, full, source="x/1.png") == {
        "prompt_id": "ceo", "sample": 0, "seed": 5, "face": False, "box": None, "probs": {}, "label": {},
        "concept_read": "ceo", "error": "truncated file", "source": "x/1.png"}
    # an empty concept read is still a read; an empty error is none
    empty = store.perception_record("p", 0, 1, Perception(face=False, concept_read="", error=""))
    assert empty["concept_read"] == "" and "error" not in empty and "source" not in empty


def test_identity_drops_location_keys_at_any_depth():
    prov = {"weights": "a", "sha256": "x", "model": {"path": "/m", "dir": "d", "name": "n", "versions": 1},
            "folder": "f", "source": "s", "transformers": "5", "files": [{"path": "p"}]}
    assert store.identity(prov) == {"sha256": "x", "model": {"name": "n"}, "files": [{"path": "p"}]}
    assert store.identity(3) == 3


def test_first_difference_names_the_path_and_both_sides():
    fd = store.first_difference
    assert fd({"a": 1, "b": {"c": [1, 2]}}, {"a": 1, "b": {"c": [1, 2]}}, "") is None
    assert fd({"b": {"c": 1}, "a": 2}, {"b": {"c": 2}, "a": 3}, "") == "a (2 -> 3)"  # sorted keys: a first
    assert fd({"b": {"c": "x"}}, {"b": {"c": "y"}}, "") == "b.c ('x' -> 'y')"
    assert fd({"b": 1}, {"b": 1, "z": None}, "cfg") is None  # a missing key and None are alike
    assert fd({"b": 1}, {"b": 1, "z": 0}, "cfg") == "cfg.z (None -> 0)"
    assert fd({1: "a"}, {1: "b"}, "") == "1 ('a' -> 'b')"
    assert fd({1: "a", "b": 2}, {1: "a", "b": 3}, "") == "b (2 -> 3)"  # keys of mixed types sort as text
    assert fd({"a": {"b": 1}}, {"a": "x"}, "") == "a ({'b': 1} -> 'x')"  # a mapping against a value
    assert fd("x", {"a": 1}, "k") == "k ('x' -> {'a': 1})"
    assert fd(math.nan, None, "x") is None  # NaN is written as null
    assert fd([1, 2], (1, 3), "") == "value ([1, 2] -> [1, 3])"
    assert fd({"k": "s" * 60}, {"k": "t"}, "w") == "w.k ('" + "s" * 44 + "... -> 't')"


def test_brief_is_cut_at_its_limit():
    assert store._brief("x" * 46) == repr("x" * 46)  # 48 characters with quotes: kept
    assert store._brief("x" * 47) == "'" + "x" * 44 + "..."
    assert len(store._brief(list(range(40)))) == 48
    assert store._brief([math.nan, 1]) == "[null, 1]"
    assert store._brief("abcdef", limit=5) == "'a..."


def test_now_is_utc_to_the_second():
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", store.now())


def test_record_lines_that_are_not_records_name_file_and_line(tmp_path):
    path = tmp_path / "perception.jsonl"
    assert store._record(b'{"prompt_id": "a", "sample": "3"}', path, 1)["sample"] == "3"
    for bad in [b"not json", b'{"sample": 1}', b'{"prompt_id": "a"}', b'{"prompt_id": "a", "sample": "x"}',
                b"[1]", b"\xff\xfe", b'{"prompt_id": "a", "sample": null}']:
        with pytest.raises(FairgenError) as e:
            store._record(bad, path, 7)
        assert str(e.value) == (f"{path} line 7 is not a perception record (was the file edited?); "
                                "delete the line or use another --out")


# --- RunStore.open ---------------------------------------------------------------------------------


def manifest(root):
    return json.loads((root / "manifest.json").read_text())


def test_open_a_new_run_writes_its_manifest(tmp_path):
    root = tmp_path / "deep" / "run"
    RunStore.open(root, CONFIG, {"world": {"sha256": "a"}})
    m = manifest(root)
    assert m["config"] == CONFIG and m["world"] == {"sha256": "a"} and m["versions"] == store.versions()
    assert re.fullmatch(r"\d{4}-.*\+00:00", m["started"]) and "resumed" not in m
    # an empty directory, or one holding only .gitkeep, is a new run
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / ".gitkeep").write_text("")
    assert RunStore.open(tmp_path / "keep", CONFIG, {}).images == tmp_path / "keep" / "images"


def test_open_refuses_what_is_not_a_run_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FairgenError, match=r"exists and is not a directory"):
        RunStore.open(tmp_path / "file", CONFIG, {})
    with pytest.raises(FairgenError, match=r"cannot create output directory .*file/run: "):
        RunStore.open(tmp_path / "file" / "run", CONFIG, {})
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FairgenError, match=r"is not empty and holds no fairgen run"):
        RunStore.open(other, CONFIG, {})
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    try:
        json.loads("{oops")
    except json.JSONDecodeError as e:
        reason = re.escape(f"manifest.json is not valid JSON ({e.msg})")  # the reason without its position
    for text, needle in [("{oops", reason + "$"), ("[1]", "is not a fairgen manifest"),
                         (b"\xff", "manifest.json is not valid JSON \\('utf-8' codec can't decode")]:
        bad = tmp_path / f"bad{len(str(text))}"
        bad.mkdir()
        (bad / "manifest.json").write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(FairgenError, match=needle):
            RunStore.open(bad, CONFIG, {})


def test_reopen_resumes_the_same_run_and_lets_images_per_prompt_grow(tmp_path):
    run = RunStore.open(tmp_path, CONFIG, {"world": {"sha256": "a", "path": "/x"}})
    run.finish()
    assert "finished" in manifest(tmp_path)
    started = manifest(tmp_path)["started"]
    RunStore.open(tmp_path, {**CONFIG, "images_per_prompt": 9}, {"world": {"sha256": "a", "path": "/moved"}})
    m = manifest(tmp_path)
    assert m["config"]["images_per_prompt"] == 9 and m["started"] == started and "finished" not in m
    assert len(m["resumed"]) == 1 and m["world"]["path"] == "/moved"  # the new location is recorded
    RunStore.open(tmp_path, CONFIG, {"world": None})  # a provenance not made yet: nothing to compare
    assert len(manifest(tmp_path)["resumed"]) == 2 and manifest(tmp_path)["world"] is None


def test_reopen_refuses_another_config_or_provenance_and_writes_nothing(tmp_path):
    RunStore.open(tmp_path, CONFIG, {"world": {"sha256": "a", "dir": "/x"}, "late": None})
    before = (tmp_path / "manifest.json").read_bytes()
    cases = [
        ({**CONFIG, "seed": 1}, {}, "a different seed (0 -> 1); use another --out, or the same inputs to resume "
                                    "(only --images-per-prompt may change)"),
        ({**CONFIG, "prompts": {"nurse": "a CEO"}}, {}, "a different prompts.nurse ('a nurse' -> 'a CEO')"),
        ({k: v for k, v in CONFIG.items() if k != "seed"}, {}, "a different seed (0 -> None)"),
        (CONFIG, {"world": {"sha256": "b", "dir": "/x"}},
         "a different world.sha256 ('a' -> 'b'); use another --out, or the same inputs to resume"),
    ]
    for config, prov, message in cases:
        with pytest.raises(FairgenError) as e:
            RunStore.open(tmp_path, config, prov)
        assert str(e.value).startswith(f"{tmp_path} holds a run made with ")
        assert message in str(e.value)
        assert (tmp_path / "manifest.json").read_bytes() == before
    # a provenance absent then may be recorded later; the recorded one is then compared
    RunStore.open(tmp_path, CONFIG, {"late": {"sha256": "z"}})
    with pytest.raises(FairgenError, match=r"late.sha256 \('z' -> 'y'\)"):
        RunStore.open(tmp_path, CONFIG, {"late": {"sha256": "y"}})


def test_a_calibration_may_be_added_to_a_run_but_not_changed_or_dropped(tmp_path):
    RunStore.open(tmp_path, CONFIG, {})
    with_cal = {**CONFIG, "calibration_sha256": "c1"}
    RunStore.open(tmp_path, with_cal, {})
    assert manifest(tmp_path)["config"]["calibration_sha256"] == "c1"
    RunStore.open(tmp_path, with_cal, {})
    with pytest.raises(FairgenError, match=r"calibration_sha256 \('c1' -> 'c2'\)"):
        RunStore.open(tmp_path, {**CONFIG, "calibration_sha256": "c2"}, {})
    with pytest.raises(FairgenError, match=r"calibration_sha256 \('c1' -> None\)"):
        RunStore.open(tmp_path, CONFIG, {})
    # added but with another key changed too: the other key is still refused
    fresh = tmp_path / "fresh"
    RunStore.open(fresh, CONFIG, {})
    with pytest.raises(FairgenError, match=r"seed \(0 -> 5\)"):
        RunStore.open(fresh, {**with_cal, "seed": 5}, {})


def test_reopen_refuses_an_edited_records_file_before_any_write(tmp_path):
    run = RunStore.open(tmp_path, CONFIG, {})
    run.append_records([rec("nurse", 0)])
    (tmp_path / "perception.jsonl").write_bytes(b'{"prompt_id": "nurse", "sample": 0}\n\ngarbage\n{"partial')
    before = (tmp_path / "manifest.json").read_bytes()
    with pytest.raises(FairgenError, match=r"perception.jsonl line 3 is not a perception record"):
        RunStore.open(tmp_path, CONFIG, {})
    (tmp_path / "perception.jsonl").write_bytes(b'{"prompt_id": "nurse", "sample": 0}\n{"partial')
    (tmp_path / "perception-1.jsonl").write_bytes(b'{"prompt_id": "nurse", "sample": 1}\n{"sample": 2}\n')
    with pytest.raises(FairgenError, match=r"perception-1.jsonl line 2 is not"):
        RunStore.open(tmp_path, CONFIG, {})
    assert (tmp_path / "manifest.json").read_bytes() == before
    (tmp_path / "perception-1.jsonl").unlink()
    RunStore.open(tmp_path, CONFIG, {})  # a partial last line is a crash, not an edit


# --- images -------------------------------------------------------------------------------------------


def test_images_round_trip_and_a_broken_one_reads_as_missing(tmp_path):
    run = RunStore.open(tmp_path, CONFIG, {})
    assert run.image_path("nurse", 7) == tmp_path / "images" / "nurse" / "00007.png"
    img = Image.new("L", (5, 4), 200)
    run.save_image(img, "nurse", 7)
    back = run.load_image("nurse", 7)
    assert back.mode == "RGB" and back.size == (5, 4) and back.getpixel((2, 2)) == (200, 200, 200)
    assert (tmp_path / "images" / "nurse" / "00007.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run.load_image("nurse", 8) is None
    (tmp_path / "images" / "nurse" / "00009.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert run.load_image("nurse", 9) is None


# --- records -------------------------------------------------------------------------------------------


def test_records_append_in_one_line_each_and_reload_first_copy_wins(tmp_path):
    run = RunStore.open(tmp_path, CONFIG, {})
    assert run.load_records() == {}
    run.append_records([])
    assert not (tmp_path / "perception.jsonl").exists()
    run.append_records([rec("nurse", 0, v=1), rec("nurse", 1, p=math.nan)])
    run.append_records([rec("nurse", 0, v=2)])
    raw = (tmp_path / "perception.jsonl").read_text()
    assert raw.splitlines()[1] == '{"prompt_id":"nurse","sample":1,"face":true,"p":null}'
    with_blank = raw.encode() + b"\n   \n" + b'{"prompt_id": "ceo", "sample": "2"}\n'
    (tmp_path / "perception.jsonl").write_bytes(with_blank + b'{"prompt_id": "ceo", "sa')
    got = run.load_records()
    assert list(got) == [("nurse", 0), ("nurse", 1), ("ceo", 2)]
    assert got[("nurse", 0)]["v"] == 1 and got[("ceo", 2)]["sample"] == "2"
    assert (tmp_path / "perception.jsonl").read_bytes() == with_blank  # the partial line is cut off
    (tmp_path / "perception.jsonl").write_bytes(with_blank + b"oops\n")
    with pytest.raises(FairgenError) as e:
        run.load_records()
    assert str(e.value).startswith(f"{tmp_path / 'perception.jsonl'} line 7 is not a perception record")


def test_shards_are_ranked_by_number(tmp_path):
    run = RunStore.open(tmp_path, CONFIG, {})
    assert run.shard_path(3) == tmp_path / "perception-3.jsonl"
    for r in (10, 2, 0):
        run.append_records([rec("nurse", r), rec("ceo", r)], shard=r)
    (tmp_path / "perception-x.jsonl").write_text("{}\n")
    assert [p.name for p in run.shards()] == ["perception-0.jsonl", "perception-2.jsonl", "perception-10.jsonl"]
    assert not (tmp_path / "perception.jsonl").exists()
    assert lines(tmp_path / "perception-10.jsonl") == [rec("nurse", 10), rec("ceo", 10)]
    (tmp_path / "perception-2.jsonl").write_bytes(b'{"prompt_id": "a", "sample": 1}\n{"prom')
    assert run.shard_record_count() == 2 + 1 + 2


def test_settle_records_folds_shards_in_plan_order(tmp_path):
    run = RunStore.open(tmp_path, CONFIG, {})
    run.append_records([rec("b", 0, src="file"), rec("z", 9)])
    run.append_records([rec("a", 1), rec("b", 0, src="shard1")], shard=1)
    run.append_records([rec("a", 0), rec("y", 5), rec("a", 1, src="shard0")], shard=0)
    run.settle_records([("a", 0), ("a", 1), ("b", 0), ("c", 0)])
    got = lines(tmp_path / "perception.jsonl")
    # planned keys in plan order, then the others as found (the file's, then rank 0's ...)
    assert [(r["prompt_id"], r["sample"]) for r in got] == [("a", 0), ("a", 1), ("b", 0), ("z", 9), ("y", 5)]
    assert got[1]["src"] == "shard0" and got[2]["src"] == "file"  # the file first, then the lowest rank
    assert run.shards() == [] and leftovers(tmp_path) == []


def test_settle_records_leaves_a_canonical_file_untouched_and_fixes_any_other(tmp_path):
    run = RunStore.open(tmp_path, CONFIG, {})
    path = tmp_path / "perception.jsonl"
    run.append_records([rec("a", 0), rec("a", 1)])
    inode = path.stat().st_ino
    run.settle_records([("a", 0), ("a", 1)])
    assert path.stat().st_ino == inode  # not rewritten
    run.settle_records([("a", 1), ("a", 0)])  # another order: rewritten
    assert [r["sample"] for r in lines(path)] == [1, 0] and path.stat().st_ino != inode
    run.append_records([rec("a", 1, dup=True)])  # a duplicate: dropped
    run.settle_records([("a", 1), ("a", 0)])
    assert lines(path) == [rec("a", 1), rec("a", 0)]
    partial = path.read_bytes() + b'{"prompt_id": "a", "sam'  # a crash's partial line
    path.write_bytes(partial)
    run.settle_records([("a", 1), ("a", 0)])  # canonical records: untouched, partial line and all
    assert path.read_bytes() == partial
    path.write_bytes(b"\n" + partial)
    run.settle_records([("a", 0), ("a", 1)])  # rewritten: blank and partial lines dropped
    assert path.read_bytes() == b'{"prompt_id":"a","sample":0,"face":true}\n{"prompt_id":"a","sample":1,"face":true}\n'
    path.write_bytes(path.read_bytes() + b"bad\n")
    with pytest.raises(FairgenError) as e:
        run.settle_records([])
    assert str(e.value).startswith(f"{path} line 3 is not a perception record")


def test_settle_records_with_only_shards(tmp_path):
    run = RunStore.open(tmp_path, CONFIG, {})
    run.append_records([rec("a", 0)], shard=4)
    run.settle_records([])
    assert lines(tmp_path / "perception.jsonl") == [rec("a", 0)] and run.shards() == []
    run2 = RunStore.open(tmp_path / "empty", CONFIG, {})
    run2.settle_records([("a", 0)])  # nothing anywhere: nothing written
    assert not (tmp_path / "empty" / "perception.jsonl").exists()


# --- other files ------------------------------------------------------------------------------------------


def test_text_json_record_and_finish(tmp_path):
    run = RunStore.open(tmp_path, CONFIG, {})
    run.write_text("report.html", "<p>é</p>")
    assert (tmp_path / "report.html").read_bytes() == "<p>é</p>".encode()
    run.write_json("results.json", {"rd": math.nan})
    assert (tmp_path / "results.json").read_text() == '{\n "rd": null\n}\n'
    run.record(world={"sha256": "w"}, note=1)
    run.finish()
    m = manifest(tmp_path)
    assert m["world"] == {"sha256": "w"} and m["note"] == 1 and m["config"] == CONFIG
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", m["finished"])
    assert leftovers(tmp_path) == [] and os.access(tmp_path / "manifest.json", os.R_OK)
