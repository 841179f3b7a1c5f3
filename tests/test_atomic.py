"""sdm.atomic: the target holds the old or the new complete folder, whenever the writer is killed.

Each fault test SIGKILLs a real child process at a chosen point of a replace
(inside the ``atomic_dir`` body, right after the exchange, between the two
renames of the portable path) and checks what the target holds, then that the
next writer (or ``recover``) finishes the job and leaves nothing behind.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from _process_helpers import kill9, start_child, tree_digest, wait_for

from sdm.atomic import EXCHANGE_ENV, atomic_dir, exchange, recover
from sdm.train.checkpoint import CheckpointStore


def _fill(folder: Path, tag: str, n: int = 3) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"f{i}.bin").write_bytes(f"{tag}-{i}".encode() * 1000)
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "deep.txt").write_text(tag)
    return tree_digest(folder)


def _leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def _exchange_works(tmp_path: Path) -> bool:
    a, b = tmp_path / "probe-a", tmp_path / "probe-b"
    a.mkdir()
    b.mkdir()
    (a / "x").touch()
    ok = exchange(a, b)
    if ok:
        assert (b / "x").exists() and not (a / "x").exists()
    return ok


# The child writes the new folder through atomic_dir; the hook stops it at one point of the swap.
WRITER = """
    import sys, time
    from pathlib import Path
    import sdm.atomic as atomic

    target, stop_at = Path(sys.argv[1]), sys.argv[2]

    def pause(point):
        if point == stop_at:
            print("at " + point, flush=True)
            time.sleep(600)

    atomic._crash_point = pause
    with atomic.atomic_dir(target) as tmp:
        for i in range(3):
            (tmp / f"f{i}.bin").write_bytes(f"new-{i}".encode() * 1000)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "deep.txt").write_text("new")
        if stop_at == "body":
            print("at body", flush=True)
            time.sleep(600)
    print("done", flush=True)
"""


def _writer(target: Path, stop_at: str, **env: str) -> subprocess.Popen:
    script = WRITER.replace("sys.argv[1]", repr(str(target))).replace("sys.argv[2]", repr(stop_at))
    return start_child(script, env=env)


def test_killed_inside_the_body_leaves_the_old_folder_and_the_next_run_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "out"
    old = _fill(target, "old")
    child = _writer(target, "body")
    wait_for(child, "at body")
    kill9(child)
    assert tree_digest(target) == old
    assert len(_leftovers(target)) == 1 and ".tmp-" in _leftovers(target)[0]  # the dead writer's half folder
    with atomic_dir(target) as tmp:
        new = _fill(tmp, "next")
    assert tree_digest(target) == new
    assert _leftovers(target) == []


def test_killed_right_after_the_exchange_leaves_the_new_folder(tmp_path: Path) -> None:
    if not _exchange_works(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here; the portable path is tested below")
    target = tmp_path / "out"
    old = _fill(target, "old")
    new = _fill(tmp_path / "expected", "new")
    child = _writer(target, "exchanged")
    wait_for(child, "at exchanged")
    kill9(child)
    assert tree_digest(target) == new
    (left,) = _leftovers(target)
    assert tree_digest(target.parent / left) == old  # the old folder, under the dead writer's temp name
    assert recover(target) == [target.parent / left]
    assert _leftovers(target) == [] and tree_digest(target) == new


def test_portable_path_killed_between_the_renames_is_restored(tmp_path: Path) -> None:
    target = tmp_path / "out"
    old = _fill(target, "old")
    child = _writer(target, "aside", **{EXCHANGE_ENV: "0"})
    wait_for(child, "at aside")
    kill9(child)
    # The crash window of rename-aside + rename-in: no target, the old folder aside, the new one in temp.
    assert not target.exists()
    names = _leftovers(target)
    assert len(names) == 2 and any(".old-" in n for n in names) and any(".tmp-" in n for n in names)
    recover(target)
    assert tree_digest(target) == old and _leftovers(target) == []


def test_portable_path_completes_a_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EXCHANGE_ENV, "0")
    target = tmp_path / "out"
    _fill(target, "old")
    with atomic_dir(target) as tmp:
        new = _fill(tmp, "new")
    assert tree_digest(target) == new and _leftovers(target) == []


def test_a_live_writers_temp_folder_is_never_removed(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _fill(target, "old")
    child = _writer(target, "body")
    try:
        wait_for(child, "at body")
        (live,) = _leftovers(target)
        # Another writer of the same target runs to the end meanwhile: the live one's temp stays.
        with atomic_dir(target) as tmp:
            mine = _fill(tmp, "mine")
        assert _leftovers(target) == [live] and tree_digest(target) == mine
        assert recover(target) == [] and (target.parent / live).is_dir()
    finally:
        kill9(child)
    assert recover(target) == [target.parent / live]
    assert _leftovers(target) == []


def test_a_failed_body_removes_its_temp_and_keeps_the_old(tmp_path: Path) -> None:
    target = tmp_path / "out"
    old = _fill(target, "old")
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(target) as tmp:
        _fill(tmp, "new")
        raise RuntimeError("boom")
    assert tree_digest(target) == old and _leftovers(target) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_folders_and_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        target = tmp_path / "out"
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((target / "a.txt").stat().st_mode) == 0o666 & ~umask


def test_checkpoint_prune_removes_only_dead_writers_leftovers(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        from sdm.atomic import _host

        live_tmp = tmp_path / f".checkpoint-pretrain-0000004.tmp-{_host()}-{sleeper.pid}-{'1' * 16}abcd"
        dead_tmp = tmp_path / f".checkpoint-pretrain-0000002.tmp-{_host()}-{dead.pid}-{'1' * 16}abcd"
        other_host = tmp_path / f".checkpoint-pretrain-0000006.tmp-elsewhere-{dead.pid}-{'1' * 16}abcd"
        for d in (live_tmp, dead_tmp, other_host):
            d.mkdir()
        CheckpointStore(tmp_path, keep=2).prune()
        assert live_tmp.is_dir() and other_host.is_dir()  # alive, or on a host whose processes we cannot see
        assert not dead_tmp.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_write_file_replaces_a_file_whole_with_the_users_permissions(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from sdm.atomic import write_file

    target = tmp_path / "resumes.json"
    target.write_text("old")
    old_umask = os.umask(0o022)
    try:
        write_file(target, b"new")
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resumes.json"]

    def full_disk(fd: int) -> None:  # the data cannot reach the disk
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_file(target, b"newer")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["resumes.json"]
