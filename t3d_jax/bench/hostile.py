"""The hostile-program table: what graded programs manage to do, judged by effect.

    python -m t3d_jax.bench hostile

Each program of :data:`PROGRAMS` tries one way out of the sandbox; after it, the effect
is looked for on disk and in the parent, not in its message: a file, FIFO, device node
or link that appears in a directory outside, a new file inside this Python's
installation, the parent's file changed, a secret that comes back in the grader's
reason, a process left running. Four ways of running it:

* ``none``: limits only, no layer (the control: every program has its effect there);
* ``hook``: the audit hook, limits and the network namespace (the sandbox before the
  kernel layers: Landlock, seccomp, PID namespace);
* ``all``: every layer this machine allows (what the code grader uses);
* ``kernel``: the kernel layers without the audit hook (the boundary alone).

After every program a good one must still pass. ``tests/test_sandbox_hostile.py`` runs
the same programs and requires no effect under ``all`` and ``kernel``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from pathlib import Path

from t3d_jax.tasks import sandbox

# {outside}: a world-writable directory of the parent's; {secret}: a file there whose
# text must never come back; a file "canary" there must not change; {stdlib}: this
# Python's standard library; {marker}: unique to the run (processes, probe files);
# {parent}: the grading process's pid
PROGRAMS: dict[str, str] = {
    "create outside (open)": "open('{outside}/plain', 'w').write('x')",
    "create outside through a directory fd": (
        "import os\nfd = os.open('{outside}', os.O_PATH)\n"
        "os.close(os.open('via_dirfd', os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))"),
    "read a secret through a directory fd": (
        "import os\nfd = os.open('{outside}', os.O_PATH)\n"
        "raise SystemExit(os.read(os.open('secret.txt', os.O_RDONLY, dir_fd=fd), 99).decode())"),
    "FIFO outside": "import os\nos.mkfifo('{outside}/fifo')",
    "device node outside": ("import os, stat\nos.mknod('{outside}/null', stat.S_IFCHR | 0o666,"
                            " os.makedev(1, 3))"),
    "symlink inside pointing out, written through": (
        "import os\nos.symlink('{outside}/via_symlink', 'link')\nopen('link', 'w').write('x')"),
    "hard link to the parent's file, written through": (
        "import os\nfd = os.open('{outside}', os.O_PATH)\n"
        "os.link('canary', 'hard', src_dir_fd=fd)\nopen('hard', 'w').write('changed')"),
    "rename a file out": (
        "import os\nopen('a', 'w').write('x')\nfd = os.open('{outside}', os.O_PATH)\n"
        "os.rename('a', 'renamed', dst_dir_fd=fd)"),
    "/proc/self/root path": "open('/proc/self/root{outside}/via_proc', 'w').write('x')",
    "/proc/self/fd of a directory fd": (
        "import os\nfd = os.open('{outside}', os.O_PATH)\n"
        "open(f'/proc/self/fd/{{fd}}/via_procfd', 'w').write('x')"),
    "the parent's environment in /proc": (
        "raise SystemExit(open('/proc/{parent}/environ').read())"),
    "into the interpreter's files": (
        "import os\nfd = os.open('{stdlib}', os.O_RDONLY)\n"
        "os.close(os.open('t3d_probe_{marker}.py', os.O_CREAT | os.O_WRONLY, 0o644, "
        "dir_fd=fd))"),
    "a process left running": (
        "import os, sys\nif os.fork() == 0:\n  os.setsid()\n"
        "  os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', "
        "'{marker}'])"),
}
GOOD = "assert sum(range(4)) == 6\n"


@dataclasses.dataclass
class Scene:
  """The parent's side: an outside directory with a secret and a canary."""
  root: Path
  marker: str
  secret: str

  @classmethod
  def make(cls) -> "Scene":
    root = Path(tempfile.mkdtemp(prefix="t3d_outside_"))
    os.chmod(root, 0o777)
    marker = uuid.uuid4().hex[:12]
    secret = f"secret-{marker}"
    (root / "secret.txt").write_text(secret)
    (root / "canary").write_text("canary")
    return cls(root, marker, secret)

  def source(self, template: str) -> str:
    return template.format(outside=self.root, stdlib=sysconfig.get_paths()["stdlib"],
                           marker=self.marker, parent=os.getpid())

  def effects(self, reason: str) -> list[str]:
    """What the program left behind (and cleans it up for the next one)."""
    out = []
    extra = sorted(p.name for p in self.root.iterdir() if p.name not in ("secret.txt", "canary"))
    if extra:
      out.append("created outside: " + ", ".join(extra))
    if (self.root / "canary").read_text() != "canary":
      out.append("changed the parent's file")
    probe = Path(sysconfig.get_paths()["stdlib"]) / f"t3d_probe_{self.marker}.py"
    if probe.exists():
      out.append("wrote into Python's installation")
      probe.unlink()
    if self.secret in reason:
      out.append("a secret came back in the reason")
    if any(f"{k}={v}"[:40] in reason for k, v in os.environ.items()
           if k not in ("HOME", "PATH")):
      out.append("the parent's environment came back in the reason")
    left = subprocess.run(["pgrep", "-f", self.marker], capture_output=True, text=True)
    if left.stdout.strip():
      out.append("a process left running")
      subprocess.run(["pkill", "-9", "-f", self.marker], capture_output=True)
    for p in self.root.iterdir():
      if p.name not in ("secret.txt", "canary"):
        p.unlink() if not p.is_dir() or p.is_symlink() else shutil.rmtree(p)
    (self.root / "canary").write_text("canary")
    return out

  def close(self) -> None:
    shutil.rmtree(self.root, ignore_errors=True)


def ways() -> dict[str, dict]:
  """name -> run_program keywords of the three ways of running a program."""
  all_layers = sandbox.layers()
  hook_only = dict(net=all_layers["net"], user=all_layers["user"])
  return {"none": dict(with_layers={}, audit_hook=False), "hook": dict(with_layers=hook_only),
          "all": dict(with_layers=all_layers),
          "kernel": dict(with_layers=all_layers, audit_hook=False)}


def run_one(scene: Scene, template: str, how: dict) -> tuple[list[str], bool]:
  """(effects, whether a good program passes right after)."""
  limits = sandbox.Limits(wall_s=5.0, cpu_s=3)
  outcome = sandbox.run_program(scene.source(template), limits, **how)
  effects = scene.effects(outcome.reason)
  good = sandbox.run_program(GOOD, limits, **how).passed
  return effects, good


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m t3d_jax.bench hostile",
                                   description=__doc__.split("\n\n")[0])
  parser.parse_args(argv)
  print(f"isolation: {sandbox.describe()}")
  modes = ways()
  scene = Scene.make()
  try:
    print("| program | " + " | ".join(modes) + " |")
    print("| --- |" + " --- |" * len(modes))
    for name, template in PROGRAMS.items():
      cells = []
      for how in modes.values():
        effects, good = run_one(scene, template, how)
        cells.append(("; ".join(effects) if effects else "contained")
                     + ("" if good else " (a good program then FAILED)"))
      print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
  finally:
    scene.close()
  return 0


if __name__ == "__main__":
  sys.exit(main())
