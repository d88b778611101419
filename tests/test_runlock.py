"""SAVE/run.lock: who may take it over, who is refused, and what is left behind (the CLI cases are in
test_signals.py)."""
import json
import os
import subprocess
import sys

import pytest

import runlock
from runlock import RunLock, RunLockError, identity


@pytest.fixture
def live_process():
    process = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
    yield process
    process.kill()
    process.wait()


def write_lock(folder, **record):
    (folder / runlock.LOCK_FILE).write_text(json.dumps(record))
    return record


def dead_pid():
    process = subprocess.Popen(['true'])
    process.wait()
    return process.pid


def test_a_free_folder_is_taken_and_released(tmp_path):
    with RunLock(str(tmp_path)) as lock:
        held = json.loads((tmp_path / runlock.LOCK_FILE).read_text())
        assert held['pid'] == os.getpid() and held['host'] == identity()['host'] and lock.note is None
    assert not (tmp_path / runlock.LOCK_FILE).exists()


def test_a_live_holder_is_refused_by_name_and_its_lock_kept(tmp_path, live_process):
    record = write_lock(tmp_path, **identity(live_process.pid))
    with pytest.raises(RunLockError, match=rf"in use by another training run \(pid {live_process.pid} on host "
                                           rf"{record['host']} since {record['since']}"):
        RunLock(str(tmp_path)).acquire()
    assert json.loads((tmp_path / runlock.LOCK_FILE).read_text()) == record


@pytest.mark.parametrize('gone_by', ['killed', 'machine restarted', 'pid reused'])
def test_the_lock_of_a_gone_run_is_taken_over_with_a_note(tmp_path, live_process, gone_by):
    change = {'killed': {'pid': dead_pid()}, 'machine restarted': {'boot_id': 'another-boot'},
              'pid reused': {'pid_start': '1'}}[gone_by]
    gone = write_lock(tmp_path, **dict(identity(live_process.pid), **change))
    with RunLock(str(tmp_path)) as lock:
        assert f"pid {gone['pid']} on host {gone['host']}" in lock.note and 'is gone' in lock.note
        assert json.loads((tmp_path / runlock.LOCK_FILE).read_text())['pid'] == os.getpid()
    assert not (tmp_path / runlock.LOCK_FILE).exists()


def test_a_lock_of_another_host_is_refused_with_how_to_release_it(tmp_path):
    write_lock(tmp_path, **dict(identity(dead_pid()), host='node7'))
    with pytest.raises(RunLockError, match=r'on host node7 .* if that run is no longer running, delete .*run\.lock'):
        RunLock(str(tmp_path)).acquire()


def test_a_process_finds_the_lock_its_launcher_holds_and_leaves_it(tmp_path):
    record = write_lock(tmp_path, **identity(os.getppid()))
    with RunLock(str(tmp_path)) as lock:
        assert not lock.owned
    assert json.loads((tmp_path / runlock.LOCK_FILE).read_text()) == record


def test_a_lock_taken_over_by_another_run_meanwhile_is_not_removed(tmp_path, live_process):
    lock = RunLock(str(tmp_path))
    lock.acquire()
    other = write_lock(tmp_path, **identity(live_process.pid))
    lock.release()
    assert json.loads((tmp_path / runlock.LOCK_FILE).read_text()) == other
