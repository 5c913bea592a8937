"""Runs model-written Python in a contained child process (the code grader's executor).

Each program runs in its own child with, in layers (:func:`isolation` says which ones
this machine allows; the grader prints once what it lacks, :func:`missing`):

* **kernel-enforced, applied before the program's interpreter starts**
  (:mod:`t3d_jax.tasks.confine`): Landlock file-system rules (read and execute only this
  Python's installation and its libraries, read-write only the program's directory,
  TCP bind/connect refused with ABI >= 4, signals scoped with ABI >= 6), a seccomp
  filter refusing new processes (holds for root), its own PID namespace (it is PID 1;
  whatever it leaves dies with it) and network namespace (no interfaces up). Without
  Landlock, :func:`require_file_system_layer` makes ``task.name=code`` refuse unless
  ``eval.allow_unsandboxed``;
* OS limits (``resource``): CPU seconds, address space, file size, and a wall-clock
  limit after which the whole process group (its own session) is killed;
* a fresh temporary directory as cwd and HOME (removed afterwards), an empty environment,
  stdin closed, Python in isolated mode (no user site, no PYTHON* variables);
* when the grader runs as root, the program runs as ``nobody`` where nobody can run this
  Python (file permissions and signals are then those of nobody, RLIMIT_NPROC applies);
* inside the program, an audit hook (PEP 578) installed before the code runs, an inner
  layer that also gives clear messages, refuses: reading or listing anything but its
  directory and this Python's standard library, writing, creating, renaming or removing
  files outside the temporary directory, creating processes (fork, exec, spawn,
  subprocess, os.system), signalling processes, sockets, loading native code (ctypes)
  and adding or removing audit hooks.

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

from t3d_jax.errors import InputError
from t3d_jax.tasks import confine

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
    if writes and not _inside(path) and _real(path) != "/dev/null":
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


_CONFINE = str(Path(__file__).with_name("confine.py"))


def _launch(limits: Limits, layers: dict, cwd, argv=("guard.py",), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE) -> subprocess.Popen:
  """The launcher (:mod:`t3d_jax.tasks.confine`, a fresh single-threaded Python, so
  nothing of the parent's threads is forked) applies the limits and ``layers``, then
  execs the program's interpreter."""
  cfg = dict(dataclasses.asdict(limits), **layers, argv=list(argv))
  return subprocess.Popen([sys.executable, "-I", "-S", _CONFINE, json.dumps(cfg)],
                          cwd=cwd, env={"HOME": str(cwd), "PATH": "/usr/bin:/bin"},
                          stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                          close_fds=True, start_new_session=True)


def _probe(layers: dict, user=None) -> str:
  """'' when a child launched with ``layers`` runs Python, else why not."""
  tmp = tempfile.mkdtemp(prefix="t3d_sandbox_")
  try:
    if user is not None:
      os.chown(tmp, *user)
    proc = _launch(Limits(), dict(layers, user=user), tmp, argv=("-c", "pass"))
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
  """What this machine allows, checked once by launching Python with each layer:
  ``landlock`` (the ABI the programs get, 0 = none, ``landlock_note`` why), ``seccomp``,
  ``pidns`` and ``net`` ('' = applied, else why not), ``user`` (the uid/gid programs
  run as, None = this process's user, ``user_note`` why), ``audit_hook`` (always)."""
  abi = confine.landlock_abi()
  landlock_note = "" if abi else "the kernel has no Landlock (or it is disabled)"
  if abi:
    landlock_note = _probe(dict(landlock=abi))
    abi = 0 if landlock_note else abi
  out = dict(landlock=abi, landlock_note=landlock_note,
             seccomp=_probe(dict(seccomp=True)), pidns=_probe(dict(pidns=True)),
             net=_probe(dict(net=True)), audit_hook=True)
  user, note = None, "not root"
  if os.geteuid() == 0:
    try:
      p = pwd.getpwnam("nobody")
      user = (p.pw_uid, p.pw_gid)
      note = _probe({}, user)
      if note:
        user, note = None, f"nobody cannot run {sys.executable} ({note})"
    except KeyError:
      note = "no user nobody"
  return dict(out, user=user, user_note=note)


def layers() -> dict:
  """The layers every program gets on this machine (what :func:`isolation` found)."""
  iso = isolation()
  return dict(landlock=iso["landlock"], seccomp=not iso["seccomp"], pidns=not iso["pidns"],
              net=not iso["net"], user=iso["user"])


def missing() -> list[str]:
  """One phrase per layer this machine lacks (the grader prints them once)."""
  iso = isolation()
  out = []
  if not iso["landlock"]:
    out.append(f"no Landlock file-system rules ({iso['landlock_note']})")
  elif iso["landlock"] < 4:
    out.append(f"Landlock ABI {iso['landlock']} < 4: TCP is not refused by Landlock")
  for key, what in (("seccomp", "no seccomp process limit"), ("pidns", "no PID namespace"),
                    ("net", "no network namespace")):
    if iso[key]:
      out.append(f"{what} ({iso[key]})")
  if iso["user"] is None and iso["user_note"] != "not root":
    out.append(f"programs run as this user, not nobody ({iso['user_note']})")
  return out


def describe() -> str:
  """The layers as one line (the bench and README's table)."""
  iso = isolation()
  yes = lambda key: "yes" if not iso[key] else "no"  # noqa: E731
  return (f"Landlock ABI {iso['landlock'] or 'none'}; seccomp no-new-processes "
          f"{yes('seccomp')}; PID namespace {yes('pidns')}; network namespace {yes('net')}; "
          f"user {'nobody' if iso['user'] else 'this one'}; audit hook yes")


def require_file_system_layer(allow_unsandboxed: bool) -> None:
  """Refuses to run model-written code where the kernel enforces no file-system rules
  (unless ``eval.allow_unsandboxed``): the audit hook alone is not a boundary."""
  iso = isolation()
  if not iso["landlock"] and not allow_unsandboxed:
    raise InputError(f"task.name=code: this kernel enforces no file-system rules for graded "
                     f"programs ({iso['landlock_note']}); only the in-process audit hook would "
                     "stand between model-written code and this machine's files. Run on a "
                     "kernel with Landlock (Linux >= 5.13, enabled), or pass "
                     "--config.eval.allow_unsandboxed=True to accept that")


def run_program(source: str, limits: Limits = Limits(), *, with_layers: dict | None = None,
                audit_hook: bool = True) -> Outcome:
  """Runs ``source`` contained (see the module docstring); never raises for anything
  the program does. ``with_layers`` (default: every layer this machine allows,
  :func:`layers`) and ``audit_hook=False`` take layers away, for the hostile-program
  table (``python -m t3d_jax.bench hostile``) and its tests."""
  tmp = Path(tempfile.mkdtemp(prefix="t3d_sandbox_"))
  chosen = layers() if with_layers is None else dict(with_layers)
  user = chosen.get("user")
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
        proc = _launch(limits, chosen, tmp, stdout=subprocess.DEVNULL, stderr=err_file,
                       argv=("guard.py",) if audit_hook else ("program.py",))
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
