"""One training run per SAVE folder: the lock file SAVE/run.lock, held while a run trains into the folder.

Two runs writing checkpoints into one folder would overwrite each other's epochs and prune each other's files. The
lock is created atomically (O_EXCL) and holds its holder as JSON: pid, host, boot id, the process's start time and
the wall-clock time it was taken (`since`). It is removed when the run ends, however it ends short of SIGKILL.

A lock left behind by a run that was killed (SIGKILL, out-of-memory killer) or by a machine that rebooted is stale:
- same host and boot: no process with that pid, or one that started at another time (the pid was reused);
- same host name, another boot id: the machine restarted since.
A stale lock is taken over, with one log line naming the run that left it. A live lock refuses the new run with one
line naming the holder. A lock taken on another host cannot be checked from here (its pid means nothing on this
machine): it is treated as live and the message says to delete the file if that run is gone.

Who holds it: a single-process run itself; for `main_multi_gpu.py -ngpus N`, the launcher, before it spawns the
training processes (they find their parent holding it); under `paddle.distributed.launch`, the process of global
rank 0. A multi-node run uses one shared SAVE (every node resumes from it), so its one lock sits there, held on
rank 0's node; the other nodes never take it. -eval takes no lock: it writes no checkpoint.
"""
import contextlib
import errno
import json
import os
import socket
import time

from errors import UserError

LOCK_FILE = 'run.lock'


class RunLockError(UserError):
    """SAVE is in use by another run (or the lock cannot be created); the message names the holder and the file."""


def _boot_id():
    try:
        with open('/proc/sys/kernel/random/boot_id') as f:
            return f.read().strip()
    except OSError:
        return ''


def _start_time(pid):
    """The start time of process pid (clock ticks since boot, from /proc), '' where /proc cannot tell, None when
    there is no such process."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[19]
    except FileNotFoundError:
        return None
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ''


def identity(pid=None):
    """The lock record of process pid (this process by default) on this machine."""
    pid = os.getpid() if pid is None else pid
    return {'pid': pid, 'host': socket.gethostname(), 'boot_id': _boot_id(), 'pid_start': _start_time(pid) or '',
            'since': time.strftime('%Y-%m-%d %H:%M:%S')}


def _same_process(record, pid):
    """record describes the live process pid of this machine (same host, boot and start time)."""
    mine = identity(pid)
    return (record.get('pid') == pid and record.get('host') == mine['host']
            and record.get('boot_id') == mine['boot_id'] and record.get('pid_start') == mine['pid_start'])


def is_stale(record):
    """True when the run that wrote record is certainly gone (see the module docstring)."""
    here = identity()
    if record.get('host') != here['host']:
        return False
    if record.get('boot_id') != here['boot_id']:
        return True
    pid = record.get('pid')
    if not isinstance(pid, int) or pid <= 0:
        return True
    start = _start_time(pid)
    return start is None or bool(start and record.get('pid_start') and start != record['pid_start'])


def describe(record):
    return (f"pid {record.get('pid')} on host {record.get('host')} since {record.get('since')}"
            if record else 'a holder whose lock file cannot be read')


def read(path):
    """The record of the lock file at path; None when there is none; {} when it cannot be parsed (a holder that
    died while writing it, or another file)."""
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


class RunLock:
    """SAVE/run.lock of one run: `with RunLock(save_dir) as lock:` takes it (RunLockError when another run holds
    it) and removes it at the end; `lock.note` is the log line of a taken-over stale lock (None otherwise)."""

    def __init__(self, save_dir):
        self.path = os.path.join(save_dir, LOCK_FILE)
        self.owned = False
        self.note = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def acquire(self):
        """Take the lock, or find it held for this process by its parent (the launcher that spawned it)."""
        mine = identity()
        with _folder_guard(os.path.dirname(self.path)):
            while not self._create(mine):
                holder = read(self.path)
                if holder is None:  # released in between: try again
                    continue
                if _same_process(holder, os.getppid()):
                    return
                if holder and _same_process(holder, os.getpid()):
                    self.owned = True
                    return
                if not self._stale(holder):
                    raise RunLockError(self._refusal(holder))
                self._take_over(mine, holder)
                return

    def _create(self, record):
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise RunLockError(f"cannot create the lock file '{self.path}': {e.strerror or e}") from e
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(json.dumps(record) + '\n')
            f.flush()
            os.fsync(f.fileno())
        self.owned = True
        return True

    def _stale(self, holder):
        if holder:
            return is_stale(holder)
        try:  # unparsable: stale unless it is being written right now
            return time.time() - os.path.getmtime(self.path) > 10
        except OSError:
            return True

    def _take_over(self, mine, holder):
        tmp = f'{self.path}.tmp{os.getpid()}'
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(json.dumps(mine) + '\n')
        os.replace(tmp, self.path)
        if not _same_process(read(self.path) or {}, os.getpid()):  # another run took it over at the same moment
            raise RunLockError(self._refusal(read(self.path)))
        self.owned = True
        self.note = (f"{self.path}: the run that held it ({describe(holder)}) is gone (killed, or the machine "
                     'restarted); this run takes the folder over')

    def _refusal(self, holder):
        text = (f"save folder '{os.path.dirname(self.path)}' is in use by another training run ({describe(holder)}; "
                f"lock file {self.path}): wait for it to end or choose another -save_path")
        if holder and holder.get('host') != identity()['host']:
            text += f"; if that run is no longer running, delete {self.path}"
        return text

    def release(self):
        """Remove the lock if this process holds it (a lock taken over by another run meanwhile is left alone)."""
        if not self.owned:
            return
        self.owned = False
        holder = read(self.path)
        if holder and _same_process(holder, os.getpid()):
            with contextlib.suppress(OSError):
                os.remove(self.path)


@contextlib.contextmanager
def _folder_guard(folder):
    """An exclusive flock on the folder while a lock is checked and taken, so two runs starting together on this
    machine cannot both take over one stale lock (best effort: file systems without flock go unguarded)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        import fcntl
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
                raise
        yield
    finally:
        os.close(fd)
