"""Hostile graded programs judged by effect (t3d_jax/bench/hostile.py's programs): each
has its effect when nothing contains it (the control), and none under every layer, nor
under the kernel layers alone (no audit hook); a good program passes after each. The
kernel layers themselves: Landlock rules, the seccomp filter, the PID namespace."""
import os
import struct

import pytest

from t3d_jax.bench import hostile
from t3d_jax.errors import InputError
from t3d_jax.tasks import confine, sandbox

ISO = sandbox.isolation()
needs_kernel = pytest.mark.skipif(
    not ISO["landlock"] or bool(ISO["seccomp"]) or bool(ISO["pidns"]),
    reason=f"this kernel lacks a layer: {sandbox.missing()}")


@pytest.fixture(scope="module")
def scene():
  s = hostile.Scene.make()
  yield s
  s.close()


@needs_kernel
@pytest.mark.parametrize("name", list(hostile.PROGRAMS))
def test_hostile_program_has_no_effect_under_the_kernel_layers(scene, name):
  ways = hostile.ways()
  effects, _ = hostile.run_one(scene, hostile.PROGRAMS[name], ways["none"])
  if name == "device node outside" and os.geteuid() != 0:
    pytest.skip("only root makes device nodes: the control has no effect to show")
  assert effects, f"the control: {name} must have an effect when nothing contains it"
  for how in ("all", "kernel"):
    effects, good = hostile.run_one(scene, hostile.PROGRAMS[name], ways[how])
    assert effects == [], (how, effects)
    assert good, f"a good program fails after {name} ({how})"


@needs_kernel
def test_what_the_program_still_may_do():
  """Its own directory, threads, the standard library, /dev/null; not TCP, not exec of
  anything but this Python."""
  ok = ("import os, threading, json, hashlib, tempfile\n"
        "open('f', 'w').write('x'); os.mkdir('d'); os.rename('f', 'd/g'); os.remove('d/g')\n"
        "t = threading.Thread(target=print); t.start(); t.join()\n"
        "open('/dev/null', 'w').write('x'); assert len(os.urandom(4)) == 4\n")
  for kw in (dict(), dict(audit_hook=False)):
    out = sandbox.run_program(ok, **kw)
    assert out.passed, (kw, out.reason)
  tcp = ("import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\n")
  out = sandbox.run_program(tcp, with_layers=dict(landlock=ISO["landlock"]), audit_hook=False)
  assert not out.passed and "Permission denied" in out.reason   # Landlock ABI >= 4
  sh = "import os\nos.execv('/bin/sh', ['sh', '-c', 'exit 0'])\n"
  out = sandbox.run_program(sh, audit_hook=False)
  assert not out.passed and "Permission denied" in out.reason


def test_the_seccomp_program_is_the_documented_filter():
  """Decoded instruction by instruction (x86_64): arch check, x32 kill, clone3 ENOSYS,
  fork/vfork EPERM, clone allowed only with CLONE_THREAD."""
  prog = confine.seccomp_program("x86_64")
  insns = [struct.unpack("=HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]
  assert insns[0] == (0x20, 0, 0, 4) and insns[1] == (0x15, 1, 0, 0xC000003E)
  assert insns[2] == (0x06, 0, 0, 0x80000000)
  assert insns[3] == (0x20, 0, 0, 0) and insns[4] == (0x35, 0, 1, 0x40000000)
  assert insns[6][3] == 435 and insns[7] == (0x06, 0, 0, 0x00050000 | 38)
  assert [i[3] for i in insns[8:12:2]] == [57, 58]
  assert insns[9][3] == insns[11][3] == 0x00050000 | 1
  assert insns[12][3] == 56 and insns[14] == (0x20, 0, 0, 16)
  assert insns[15] == (0x45, 0, 1, 0x00010000) and insns[-1][3] == 0x00050000 | 1
  assert len(confine.seccomp_program("aarch64")) == len(prog) - 4 * 8   # no fork/vfork


def test_isolation_reports_every_layer_and_code_refuses_without_landlock(monkeypatch):
  iso = sandbox.isolation()
  assert set(iso) >= {"landlock", "landlock_note", "seccomp", "pidns", "net", "user",
                      "user_note", "audit_hook"}
  assert iso["landlock"] == confine.landlock_abi() or iso["landlock_note"]
  assert sandbox.describe().startswith("Landlock ABI ")
  no_landlock = dict(iso, landlock=0, landlock_note="the kernel has no Landlock")
  monkeypatch.setattr(sandbox, "isolation", lambda: no_landlock)
  with pytest.raises(InputError, match="task.name=code: this kernel enforces no file-system "
                     r"rules .*--config.eval.allow_unsandboxed=True"):
    sandbox.require_file_system_layer(False)
  sandbox.require_file_system_layer(True)
  assert any(m.startswith("no Landlock file-system rules") for m in sandbox.missing())
