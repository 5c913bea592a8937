"""Atomic writes: every file or directory the project writes appears whole or not at all.

One helper per shape of output, all built on the same rule: write into a temporary path
in the target's own directory (same filesystem), then ``os.replace`` it into place. A
crash leaves at most a hidden ``.<name>.<host>-<pid>-*.tmp`` sibling, never a
half-written target; the next write of the same target removes such leftovers of
processes of this host that are gone.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pathlib
import shutil
import socket
import tempfile
from typing import Callable, Iterator, Union

from t3d_jax.errors import InputError

PathLike = Union[str, os.PathLike]
_UMASK = os.umask(0o022)  # read once (mkstemp / mkdtemp create 0600 / 0700: widen to it)
os.umask(_UMASK)


def _tmp_prefix(target: pathlib.Path) -> str:
  return f".{target.name}.{socket.gethostname()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's live process
    return True
  return True


def remove_leftovers(target: PathLike) -> list[pathlib.Path]:
  """Remove the temp siblings of ``target`` that a killed write of this host left (their
  process is gone); returns what was removed."""
  target = pathlib.Path(target)
  host, removed = socket.gethostname(), []
  if not target.parent.is_dir():
    return removed
  for p in target.parent.glob(f".{glob.escape(target.name)}.*"):
    owner = p.name[len(target.name) + 2:].split("-")
    if (p.name.endswith(".tmp") and len(owner) >= 3 and "-".join(owner[:-2]) == host
        and owner[-2].isdigit() and not _alive(int(owner[-2]))):
      if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
      else:
        p.unlink(missing_ok=True)
      removed.append(p)
  return removed


def atomic_write_bytes(path: PathLike, data: bytes) -> pathlib.Path:
  """Write ``data`` to ``path`` through a temp file + fsync + rename."""
  return atomic_write_with(path, lambda tmp: _write_fsync(tmp, data))


def _write_fsync(tmp: pathlib.Path, data: bytes) -> None:
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def atomic_write_with(path: PathLike, write: Callable[[pathlib.Path], None]) -> pathlib.Path:
  """``write(tmp)`` fills a temp file next to ``path``, which is then renamed onto it
  (e.g. ``lambda tmp: fig.savefig(tmp, format="png")``)."""
  p = pathlib.Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  remove_leftovers(p)
  fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(p), suffix=".tmp", dir=p.parent)
  os.close(fd)
  try:
    write(pathlib.Path(tmp))
    os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would have made it
    os.replace(tmp, p)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return p


def commit_dir(tmp: PathLike, out_dir: PathLike) -> None:
  """Atomically put directory ``tmp`` at ``out_dir``; an existing ``out_dir`` is moved
  aside first and removed only after the swap."""
  tmp, out_dir = pathlib.Path(tmp), pathlib.Path(out_dir)
  old = None
  if out_dir.exists():
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    os.replace(out_dir, old)
  os.replace(tmp, out_dir)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out_dir: PathLike) -> Iterator[pathlib.Path]:
  """``with atomic_dir(target) as tmp:`` fill ``tmp``; on success it replaces ``target``
  (:func:`commit_dir`), on any error it is removed and ``target`` is left as it was."""
  out_dir = pathlib.Path(out_dir).absolute()
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  remove_leftovers(out_dir)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=_tmp_prefix(out_dir), suffix=".tmp",
                                      dir=out_dir.parent))
  try:
    yield tmp
    os.chmod(tmp, 0o777 & ~_UMASK)  # as mkdir would have made it
    commit_dir(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


@contextlib.contextmanager
def exclusive_lock(path: PathLike, what: str) -> Iterator[None]:
  """Hold an exclusive ``fcntl`` lock on ``path`` (created if needed) for the block; the
  OS releases it when the process dies, so a crash never leaves a stale lock. Raises
  :class:`LockedError` at once, naming the holder's pid, if another process holds it."""
  import fcntl
  p = pathlib.Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
      raise LockedError(f"{what} is in use by another run (pid {holder}, lock {p}); wait "
                        "for it to finish or use another workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # closing the descriptor releases the lock


class LockedError(InputError):
  """Another process holds the lock."""
