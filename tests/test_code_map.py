"""The code map of README ("Code map") holds: every module imports only from its own
layer or a lower one, and never a private name of another module."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "t3d_jax"

# Lowest first; a module may import from its own layer or a lower one.
LAYERS = [
    ("errors", "fileio", "dtypes", "masks"),
    ("config_keys", "digests", "workdir"),
    ("models",),
    ("sharding", "distributed"),
    ("data",),
    ("checkpoint",),
    ("convert",),
    ("sampling",),
    ("train",),
    ("distill",),
    ("evaluation", "tasks"),
    ("config_base",),
    ("modes", "main", "api"),
    ("bench",),
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _room(module: str) -> str:
  """'t3d_jax.train.loop' -> 'train'."""
  return module.split(".")[1]


def _is_module(dotted: str) -> bool:
  path = ROOT.parent.joinpath(*dotted.split("."))
  return path.with_suffix(".py").is_file() or path.is_dir()


def _modules():
  for path in sorted(ROOT.rglob("*.py")):
    rel = path.relative_to(ROOT.parent).with_suffix("")
    name = ".".join(p for p in rel.parts if p != "__init__")
    yield name, ast.parse(path.read_text())


def _imports(tree):
  """(imported module, imported name or None) for every t3d_jax import, anywhere."""
  aliases = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("t3d_jax"):
      for a in node.names:
        yield node.module, a.name
        sub = f"{node.module}.{a.name}"
        aliases[a.asname or a.name] = sub if _is_module(sub) else node.module
    elif isinstance(node, ast.Import):
      for a in node.names:
        if a.name.startswith("t3d_jax"):
          yield a.name, None
  for node in ast.walk(tree):  # module._private through an imported t3d_jax module
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in aliases and node.attr.startswith("_")
        and not node.attr.startswith("__")):
      yield aliases[node.value.id], node.attr


def test_every_room_is_on_the_map():
  rooms = {_room(name) for name, _ in _modules() if name != "t3d_jax"}
  assert rooms <= set(LAYER), sorted(rooms - set(LAYER))


def test_imports_go_down_and_take_no_private_names():
  upward, private = [], []
  for name, tree in _modules():
    if name == "t3d_jax":
      continue
    here = _room(name)
    for module, imported in _imports(tree):
      target = module if imported is None or module != "t3d_jax" else f"t3d_jax.{imported}"
      if target == "t3d_jax":
        continue
      there = _room(target)
      if LAYER[there] > LAYER[here]:
        upward.append(f"{name} -> {target}")
      if imported and imported.startswith("_") and module != name:
        private.append(f"{name} -> {module}.{imported}")
  assert not upward, upward
  assert not private, private


# the modules that hold each registry: the only ones that may compare a choice's name
REGISTRIES = {"t3d_jax.modes.registry", "t3d_jax.distill.methods", "t3d_jax.tasks",
              "t3d_jax.models.family"}


def _choice_names() -> set[str]:
  from t3d_jax.distill.methods import METHODS
  from t3d_jax.models.family import FAMILIES
  from t3d_jax.modes.registry import STAGES
  from t3d_jax.tasks import TASKS
  return set(STAGES) | set(METHODS) | set(TASKS) | set(FAMILIES)


def test_only_the_registries_dispatch_on_a_choice_name():
  """No module outside the registries compares a value with a mode, method, task or model
  family name (``x == "sft"``, ``x in ("t3d", "ddo")``): each choice is made in its
  registry, by looking the entry up."""
  names = _choice_names()
  found = []
  for name, tree in _modules():
    if name in REGISTRIES:
      continue
    for node in ast.walk(tree):
      if not isinstance(node, ast.Compare):
        continue
      for side in [node.left, *node.comparators]:
        consts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
        hits = [c.value for c in consts if isinstance(c, ast.Constant) and c.value in names]
        if hits:
          found.append(f"{name}:{node.lineno} compares with {hits}")
  assert not found, found
