"""Runs model-written Python in a contained child process (the code grader's executor).

Each program runs in its own child with, in layers:

* OS limits (``resource``): CPU seconds, address space, file size, process count, and a
  wall-clock limit after which the whole process group (its own session) is killed;
* a fresh temporary directory as cwd and HOME (removed afterwards), an empty environment,
  stdin closed, Python in isolated mode (no user site, no PYTHON* variables);
* a new network namespace (no interfaces up: every connection fails) where the OS allows
  it (:func:`isolation`; where it does not, the grader says so once);
* when the grader runs as root, the program runs as ``nobody`` where nobody can run this
  Python (then the process-count limit applies to it, and file permissions and signals
  are those of nobody);
* inside the program, an audit hook (PEP 578) installed before the code runs refuses:
  reading or listing anything but its directory and this Python's standard library
  (credentials, checkpoints and data stay unread, so no error message can carry them),
  writing, creating, renaming or removing files outside the temporary directory,
  creating processes (fork, exec, spawn, subprocess, os.system), signalling processes,
  sockets, loading native code (ctypes) and adding or removing audit hooks.

A program passes when it exits 0 within the limits; otherwise ``reason`` names the
limit it hit or the last line of its stderr (the failing assertion or exception).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

@dataclasses.dataclass(frozen=True)
class Limits:
  wall_s: float = 10.0          # wall clock, then the process group is killed
  cpu_s: int = 10               # RLIMIT_CPU
  memory_mb: int = 1024         # RLIMIT_AS
  file_mb: int = 16             # RLIMIT_FSIZE
  processes: int = 16           # RLIMIT_NPROC (enforced for the nobody user when root)
  output_kb: int = 64           # the end of stderr read for the reason (stdout: discarded)


@dataclasses.dataclass(frozen=True)
class Outcome:
  passed: bool
  reason: str


# Installed first inside the child: the program text is exec'd after it.
_GUARD = r'''
import os, sys
_ROOT = os.path.realpath(os.getcwd())
# what a program may read besides its directory: this Python's own files (the standard
# library) and a few devices; nothing of the machine's (credentials, checkpoints, data)
_READ = tuple(sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix,
                                                    sys.exec_prefix)}))
_READ_FILES = ("/dev/null", "/dev/urandom", "/dev/zero", "/etc/localtime")
_DENY = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
         "os.startfile", "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill",
         "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
         "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
         "sys.addaudithook", "sys.remote_exec", "os.putenv", "os.unsetenv", "pty.spawn"}
_PATHS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link",
          "os.chmod", "os.chown", "os.truncate", "os.utime", "shutil.rmtree",
          "shutil.copyfile", "shutil.move"}
_NO_IMPORT = {"ctypes", "_ctypes", "_posixsubprocess", "_socket", "socket", "multiprocessing",
              "_multiprocessing", "subprocess", "pty", "resource"}

def _real(path):
  try:
    return os.path.realpath(os.fsdecode(path) if not isinstance(path, int) else "/")
  except Exception:
    return "/"

def _under(p, roots):
  return any(p == r or p.startswith(r + os.sep) for r in roots)

def _inside(path):
  return _under(_real(path), (_ROOT,))

def _readable(path):
  if isinstance(path, int):
    return True  # an fd it already holds (stdin/stdout/stderr, its own files)
  p = _real(path)
  return p in _READ_FILES or _under(p, (_ROOT,) + _READ)

def _hook(event, args):
  if event in _DENY:
    raise PermissionError(f"sandbox: {event} is not allowed")
  if event == "import" and args and str(args[0]).split(".")[0] in _NO_IMPORT:
    raise PermissionError(f"sandbox: import {args[0]} is not allowed")
  if event == "open" and len(args) > 2:
    path, mode, flags = args[0], args[1], args[2]
    writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
        isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT
                                            | os.O_APPEND | os.O_TRUNC))
    if writes and not _inside(path):
      raise PermissionError(f"sandbox: writing {path!r} outside the sandbox is not allowed")
    if not writes and not _readable(path):
      raise PermissionError(f"sandbox: reading {path!r} outside the sandbox is not allowed")
  if event in ("os.listdir", "os.scandir") and args and args[0] is not None \
      and not _readable(args[0]):
    raise PermissionError(f"sandbox: listing {args[0]!r} is not allowed")
  if event in _PATHS and args and not all(_inside(a) for a in args[:2]
                                          if isinstance(a, (str, bytes, os.PathLike))):
    raise PermissionError(f"sandbox: {event} outside the sandbox is not allowed")

sys.addaudithook(_hook)
del _hook
_src = open("program.py").read()
exec(compile(_src, "program.py", "exec"), {"__name__": "__main__"})
'''


# Runs first in the child (a fresh single-threaded Python, so nothing of the parent's
# threads is forked): limits, network namespace, user; then it becomes the guard.
_LAUNCHER = r'''
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
mb = 1024 * 1024
resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_s"], cfg["cpu_s"] + 1))
resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_mb"] * mb,) * 2)
resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["file_mb"] * mb,) * 2)
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
if cfg["net"]:
  import ctypes
  if ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0:  # CLONE_NEWNET
    sys.exit(f"unshare(CLONE_NEWNET): errno {ctypes.get_errno()}")
if cfg["user"]:
  os.setgroups([])
  os.setgid(cfg["user"][1])
  os.setuid(cfg["user"][0])
resource.setrlimit(resource.RLIMIT_NPROC, (cfg["processes"],) * 2)
os.execv(sys.executable, [sys.executable, "-I", "-S", "-B"] + cfg["argv"])
'''


def _launch(limits: Limits, net: bool, user, cwd, argv=("guard.py",), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE) -> subprocess.Popen:
  cfg = dict(dataclasses.asdict(limits), net=net, user=user, argv=list(argv))
  return subprocess.Popen([sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(cfg)],
                          cwd=cwd, env={"HOME": str(cwd), "PATH": "/usr/bin:/bin"},
                          stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                          close_fds=True, start_new_session=True)


def _probe(net: bool, user) -> str:
  """'' when a child launched so runs Python, else why not."""
  tmp = tempfile.mkdtemp(prefix="t3d_sandbox_")
  try:
    if user is not None:
      os.chown(tmp, *user)
    proc = _launch(Limits(), net, user, tmp, argv=("-c", "pass"))
    _, err = proc.communicate(timeout=60)
  except (OSError, subprocess.SubprocessError) as e:
    return f"{type(e).__name__}: {e}"
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  if not proc.returncode:
    return ""
  lines = err.decode(errors="replace").strip().splitlines()
  return lines[-1][-200:] if lines else f"exit status {proc.returncode}"


@functools.lru_cache(maxsize=None)
def isolation() -> dict:
  """What this machine allows, checked once: ``net`` ('' = every program gets a new
  network namespace, else why not) and ``user`` (the uid/gid programs run as, None =
  this process's user, with ``user_note`` saying why)."""
  net = _probe(True, None)
  user, note = None, "not root"
  if os.geteuid() == 0:
    try:
      p = pwd.getpwnam("nobody")
      user = (p.pw_uid, p.pw_gid)
      note = _probe(False, user)
      if note:
        user, note = None, f"nobody cannot run {sys.executable} ({note})"
    except KeyError:
      note = "no user nobody"
  return dict(net=net, user=user, user_note=note)


def run_program(source: str, limits: Limits = Limits()) -> Outcome:
  """Runs ``source`` contained (see the module docstring); never raises for anything
  the program does."""
  tmp = Path(tempfile.mkdtemp(prefix="t3d_sandbox_"))
  iso = isolation()
  user = iso["user"]
  try:
    (tmp / "program.py").write_text(source)
    (tmp / "guard.py").write_text(_GUARD)
    if user is not None:
      for p in (tmp, tmp / "program.py", tmp / "guard.py"):
        os.chown(p, *user)
    os.chmod(tmp, 0o700)
    err_path = tmp / ".stderr"  # a file, bounded by the file-size limit (not a pipe the
    try:                        # parent would have to drain into its own memory)
      with open(err_path, "wb") as err_file:
        proc = _launch(limits, not iso["net"], user, tmp, stdout=subprocess.DEVNULL,
                       stderr=err_file)
    except (OSError, subprocess.SubprocessError) as e:
      return Outcome(False, f"could not start the program ({type(e).__name__}: {e})")
    try:
      proc.wait(timeout=limits.wall_s)
    except subprocess.TimeoutExpired:
      return Outcome(False, f"wall-time limit ({limits.wall_s:g} s) hit")
    finally:
      _kill_group(proc)  # at the limit, or anything it left behind in its group
      proc.wait()
    size = err_path.stat().st_size
    if proc.returncode and size >= limits.file_mb * 1024 * 1024:  # Python ignores SIGXFSZ
      return Outcome(False, f"file-size limit ({limits.file_mb} MB) hit (stderr)")
    with open(err_path, "rb") as f:
      f.seek(max(0, size - limits.output_kb * 1024))
      err = f.read().decode(errors="replace")
    return _outcome(proc.returncode, err, limits)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _kill_group(proc) -> None:
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _outcome(code: int, err: str, limits: Limits) -> Outcome:
  """What a finished program's exit status and stderr say."""
  if code == 0:
    return Outcome(True, "passed")
  if code in (-signal.SIGXCPU, -signal.SIGKILL):  # RLIMIT_CPU: soft, then hard
    return Outcome(False, f"CPU-time limit ({limits.cpu_s} s) hit")
  if code == -signal.SIGXFSZ:
    return Outcome(False, f"file-size limit ({limits.file_mb} MB) hit")
  lines = [x.strip() for x in err.strip().splitlines() if x.strip()]
  last = lines[-1] if lines else ""
  if last.startswith("MemoryError"):
    return Outcome(False, f"memory limit ({limits.memory_mb} MB) hit: {last}"[:300])
  return Outcome(False, last[:300] or f"exited with {code}")
