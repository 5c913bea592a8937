"""Atomic writes: a write killed with -9 leaves only a hidden temp sibling, which the next
write of the same target removes; a live writer's temp is left alone."""
import signal
import subprocess
import sys
from pathlib import Path

from t3d_jax.fileio import atomic_dir, atomic_write_bytes, remove_leftovers

REPO = Path(__file__).resolve().parents[1]
CHILD = """
import sys, time
from pathlib import Path
from t3d_jax.fileio import atomic_dir, atomic_write_with
target = Path(sys.argv[1])
def slow(tmp):
  tmp.write_bytes(b"half")
  print("writing", flush=True)
  time.sleep(120)
if sys.argv[2] == "dir":
  with atomic_dir(target) as tmp:
    (tmp / "part").write_text("half")
    print("writing", flush=True)
    time.sleep(120)
else:
  atomic_write_with(target, slow)
"""


def _start_writer(target: Path, kind: str) -> subprocess.Popen:
  p = subprocess.Popen([sys.executable, "-c", CHILD, str(target), kind], cwd=REPO,
                       stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "writing"
  return p


def _hidden(parent: Path) -> list[str]:
  return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_a_killed_write_leaves_a_temp_that_the_next_write_removes(tmp_path):
  for kind, target in (("dir", tmp_path / "student"), ("file", tmp_path / "summary.json")):
    live = _start_writer(target, kind)
    dead = _start_writer(target, kind)
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    temps = _hidden(tmp_path)
    assert not target.exists()
    assert any(f"-{dead.pid}-" in t for t in temps) and any(f"-{live.pid}-" in t for t in temps)
    if kind == "dir":
      with atomic_dir(target) as tmp:
        (tmp / "whole").write_text("ok")
      assert (target / "whole").read_text() == "ok"
    else:
      atomic_write_bytes(target, b"ok")
      assert target.read_bytes() == b"ok"
    left = _hidden(tmp_path)
    assert not any(f"-{dead.pid}-" in t for t in left), left   # the dead one's: removed
    assert any(f"-{live.pid}-" in t for t in left), left       # the live one's: kept
    live.send_signal(signal.SIGKILL)
    live.wait()
    assert [p.name for p in remove_leftovers(target)] == [t for t in left
                                                            if f"-{live.pid}-" in t]
    assert _hidden(tmp_path) == []


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
  """Files and dirs written through a temp path get open()'s / mkdir's modes under the
  umask (mkstemp / mkdtemp alone would leave them private to the owner)."""
  import os
  umask = os.umask(0o022)
  os.umask(umask)
  f = atomic_write_bytes(tmp_path / "a.json", b"{}")
  with atomic_dir(tmp_path / "d") as tmp:
    (tmp / "x").write_text("1")
  assert f.stat().st_mode & 0o777 == 0o666 & ~umask
  assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask
