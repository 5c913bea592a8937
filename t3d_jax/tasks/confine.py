"""Kernel-enforced confinement of a graded program, applied before its interpreter starts.

Run as a script by :mod:`t3d_jax.tasks.sandbox` (``python -I -S confine.py <json>``: a
fresh single-threaded interpreter that imports nothing but the standard library), it
sets the resource limits, enters new network and PID namespaces, drops to ``nobody``
where that user can run this Python, restricts itself with Landlock and a seccomp
filter, and only then ``execv``s the program's interpreter, which inherits every layer:

* **Landlock** (Linux >= 5.13; the three system calls through ctypes, no dependency):
  read and execute only this Python's installation (its prefixes) and the directories
  its shared libraries were loaded from, read ``/etc/ld.so.cache`` and ``/etc/localtime``,
  read and write ``/dev/null`` and read ``/dev/urandom`` / ``/dev/zero``, read and write
  only the program's own directory; nothing else on the file system (no other
  directory can be listed, no file created, linked, renamed, truncated or removed
  outside it, however the program names the path: directory file descriptors, symlinks,
  ``/proc/self/root``). ABI >= 4 also refuses TCP bind and connect; ABI >= 6 scopes
  signals and abstract unix sockets to the program's own domain.
* **seccomp**: no new processes. fork, vfork and clone without CLONE_THREAD fail with
  EPERM (threads still work), clone3 with ENOSYS (glibc then uses clone); execve stays,
  but Landlock lets it run nothing but this Python, under the same rules. Holds for
  root, unlike RLIMIT_NPROC.
* **PID namespace**: the program is PID 1 of its own namespace (the launcher waits
  outside); it sees and signals no other process, and when it exits the kernel kills
  anything it left.

Each layer is optional in the JSON (``landlock``, ``seccomp``, ``pidns``, ``net``) so
the sandbox can probe what this kernel allows (``sandbox.isolation``). A layer that was
asked for and fails stops the launcher with ``confine: <layer>: <why>`` on stderr and
exit status 97, before the program runs.
"""
from __future__ import annotations

import ctypes
import json
import os
import struct
import sys

EXIT_CONFINE = 97

# Landlock (include/uapi/linux/landlock.h)
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446   # the same on every arch
_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = (1 << k for k in range(8, 13))
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1,
              5: (1 << 16) - 1}
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_CLONE_NEWNET, _CLONE_NEWPID, _CLONE_THREAD = 0x40000000, 0x20000000, 0x00010000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class ConfineError(OSError):
  """A layer that was asked for could not be applied."""


def _check(ret: int, what: str) -> int:
  if ret < 0:
    err = ctypes.get_errno()
    raise ConfineError(err, f"{what}: {os.strerror(err)}")
  return ret


def landlock_abi() -> int:
  """The kernel's Landlock ABI version (0 when it has none or it is disabled)."""
  ret = _libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0),
                      ctypes.c_uint32(_RULESET_VERSION))
  return max(0, int(ret))


def fs_rights(abi: int) -> int:
  """Every file-system access right this ABI knows (all of them are handled: denied
  unless a rule allows them)."""
  return _FS_BY_ABI[min(abi, 5)]


def read_exec_dirs(prefixes) -> list[str]:
  """This Python's installation (its prefixes) and the directories of the shared
  libraries mapped into this process (the interpreter's: this is a fresh one)."""
  dirs = {os.path.realpath(p) for p in prefixes}
  try:
    with open("/proc/self/maps") as f:
      for line in f:
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
          dirs.add(os.path.dirname(os.path.realpath(parts[5].strip())))
  except OSError:
    pass
  return sorted(d for d in dirs if os.path.isdir(d))


def rules(workdir: str, prefixes) -> list[tuple[str, int]]:
  """(path, rights) the program gets: its directory read-write, the interpreter's files
  read and execute, a few files and devices."""
  rx = EXECUTE | READ_FILE | READ_DIR
  out = [(d, rx) for d in read_exec_dirs(prefixes)]
  out += [(p, READ_FILE) for p in ("/etc/ld.so.cache", "/etc/localtime", "/dev/urandom",
                                   "/dev/zero") if os.path.exists(p)]
  out += [("/dev/null", READ_FILE | WRITE_FILE)]
  out.append((os.path.realpath(workdir), -1))   # -1: every right the ABI handles
  return out


def apply_landlock(workdir: str, prefixes, abi: int) -> dict:
  """Restricts this process (and what it execs) to :func:`rules`; returns what was
  applied (for the isolation report)."""
  fs = fs_rights(abi)
  net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
  scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
  attr = struct.pack("=QQQ", fs, net, scoped)[: 8 if abi < 4 else (16 if abi < 6 else 24)]
  buf = ctypes.create_string_buffer(attr, len(attr))
  fd = _check(_libc.syscall(_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)),
                            ctypes.c_uint32(0)), "landlock_create_ruleset")
  applied = []
  try:
    for path, rights in rules(workdir, prefixes):
      rights = fs if rights == -1 else rights & fs
      try:
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
      except OSError:
        continue
      try:
        if not os.path.isdir(path):
          rights &= _FILE_RIGHTS
        rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, pfd), 12)
        _check(_libc.syscall(_ADD_RULE, ctypes.c_int(fd), ctypes.c_int(_RULE_PATH_BENEATH),
                             rule, ctypes.c_uint32(0)), f"landlock_add_rule {path}")
        applied.append(path)
      finally:
        os.close(pfd)
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    _check(_libc.syscall(_RESTRICT_SELF, ctypes.c_int(fd), ctypes.c_uint32(0)),
           "landlock_restrict_self")
  finally:
    os.close(fd)
  return dict(abi=abi, paths=applied, tcp=bool(net), scoped=bool(scoped))


# seccomp: struct sock_filter {u16 code; u8 jt, jf; u32 k}; seccomp_data {int nr; u32
# arch; u64 ip; u64 args[6]}
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_X32 = 0x40000000    # x86_64's x32 system calls: the same arch, numbers | this bit
_ALLOW, _ERRNO, _KILL = 0x7FFF0000, 0x00050000, 0x80000000
_ARCH = {"x86_64": (0xC000003E, dict(clone=56, fork=57, vfork=58, clone3=435)),
         "aarch64": (0xC00000B7, dict(clone=220, clone3=435))}


def _insn(code, jt, jf, k):
  return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)


def seccomp_program(machine: str) -> bytes:
  """The filter: no fork / vfork / non-thread clone (EPERM), clone3 -> ENOSYS, another
  architecture's (or x32's) system call -> kill."""
  arch, nr = _ARCH[machine]
  eperm, enosys = _ERRNO | 1, _ERRNO | 38
  prog = [_insn(_LD_W_ABS, 0, 0, 4), _insn(_JEQ, 1, 0, arch), _insn(_RET, 0, 0, _KILL),
          _insn(_LD_W_ABS, 0, 0, 0), _insn(_JGE, 0, 1, _X32), _insn(_RET, 0, 0, _KILL)]
  denied = [n for k, n in nr.items() if k in ("fork", "vfork")]
  # layout after the loads: [clone3?] [fork/vfork?] [clone?] allow | flags check
  prog.append(_insn(_JEQ, 0, 1, nr["clone3"]))
  prog.append(_insn(_RET, 0, 0, enosys))
  for n in denied:
    prog.append(_insn(_JEQ, 0, 1, n))
    prog.append(_insn(_RET, 0, 0, eperm))
  prog.append(_insn(_JEQ, 1, 0, nr["clone"]))
  prog.append(_insn(_RET, 0, 0, _ALLOW))
  prog.append(_insn(_LD_W_ABS, 0, 0, 16))                 # args[0], low 32 bits: flags
  prog.append(_insn(_JSET, 0, 1, _CLONE_THREAD))
  prog.append(_insn(_RET, 0, 0, _ALLOW))
  prog.append(_insn(_RET, 0, 0, eperm))
  return b"".join(prog)


def apply_seccomp() -> None:
  machine = os.uname().machine
  if machine not in _ARCH:
    raise ConfineError(0, f"seccomp: no filter for {machine}")
  code = seccomp_program(machine)
  filt = ctypes.create_string_buffer(code, len(code))

  class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

  prog = SockFprog(len(code) // 8, ctypes.cast(filt, ctypes.c_void_p))
  _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
  _check(_libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0),
         "prctl(SECCOMP)")


def unshare(flags: int, what: str) -> None:
  _check(_libc.unshare(flags), f"unshare({what})")


def _limits(cfg: dict) -> None:
  import resource
  mb = 1024 * 1024
  resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_s"], cfg["cpu_s"] + 1))
  resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_mb"] * mb,) * 2)
  resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["file_mb"] * mb,) * 2)
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _wait_and_mirror(pid: int) -> None:
  """The launcher outside the PID namespace ends as its child did: the same exit status,
  or killed by the same signal (the sandbox reads limits from it)."""
  import signal
  _, status = os.waitpid(pid, 0)
  code = os.waitstatus_to_exitcode(status)
  if code < 0:
    if -code not in (signal.SIGKILL, signal.SIGSTOP):   # those keep their default
      signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
  os._exit(code if code >= 0 else 128 - code)


def main(cfg: dict) -> None:
  """The launcher: layers in order, then exec the program's interpreter."""
  layer = "limits"
  try:
    _limits(cfg)
    if cfg.get("net"):
      layer = "network namespace"
      unshare(_CLONE_NEWNET, "CLONE_NEWNET")
    if cfg.get("pidns"):
      layer = "PID namespace"
      unshare(_CLONE_NEWPID, "CLONE_NEWPID")
      pid = os.fork()   # the child is PID 1 of the new namespace; this one waits
      if pid:
        _wait_and_mirror(pid)
    if cfg.get("user"):
      layer = "user"
      os.setgroups([])
      os.setgid(cfg["user"][1])
      os.setuid(cfg["user"][0])
      import resource
      resource.setrlimit(resource.RLIMIT_NPROC, (cfg["processes"],) * 2)
    if cfg.get("landlock"):
      layer = "Landlock"
      apply_landlock(os.getcwd(), (sys.base_prefix, sys.prefix, sys.exec_prefix),
                     int(cfg["landlock"]))
    if cfg.get("seccomp"):
      layer = "seccomp"
      apply_seccomp()
  except (OSError, ValueError) as e:
    sys.stderr.write(f"confine: {layer}: {e}\n")
    sys.stderr.flush()
    os._exit(EXIT_CONFINE)
  os.execv(sys.executable, [sys.executable, "-I", "-S", "-B"] + cfg["argv"])


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))
