"""Each module's `__all__` is exactly its names that other code uses; internals carry a leading underscore.

"Used" is read from the source with `ast` (no import): `from mmrag_jax.m import name`, `module.name` on an
imported module, `getattr(module, "name")` / `monkeypatch.setattr(module, "name", ...)`, the dotted string
"mmrag_jax.m.name", code run in a subprocess (`python -c` strings), the python blocks of the READMEs and
pyproject's console scripts, by any module of the package, test or config other than the module itself.
A package `__init__` importing a name to re-export it does not count as a use. A type named in the
signature of a public function, method, dataclass field or type alias is public with it.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import re
import textwrap
import tomllib
from collections import defaultdict

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = "mmrag_jax"
DOCS = ("README.md", "BUILD.md", "BENCHMARKS.md", "tpu/README.md", "mmrag_jax/data/README.md")
DOTTED = re.compile(r"mmrag_jax(?:\.[A-Za-z_]\w*)+")
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)

# Public although nothing imports them, with the reason.
ALLOWED_UNUSED = {
    "main": "a command-line entry point (`python -m`, absl.app.run)",
    "DROP_REASONS": "data.batching: the vocabulary of `drop_reason`, named by other modules' docs",
}


def _top_level(body):
  """The statements at module level, including those under a top-level `if` / `try`."""
  for node in body:
    yield node
    if isinstance(node, (ast.If, ast.Try)):
      yield from _top_level(node.body + node.orelse + [s for h in getattr(node, "handlers", ()) for s in h.body])


class Source:
  """The package's modules, what each defines and exports, and every use of a module's name elsewhere."""

  def __init__(self, root: pathlib.Path):
    self.root = root
    self.paths = {self._name(p): p for p in sorted((root / PKG).rglob("*.py"))}
    self.packages = {m for m, p in self.paths.items() if p.name == "__init__.py"}
    self.trees = {m: ast.parse(p.read_text(), str(p)) for m, p in self.paths.items()}
    self.imported, self.defined, self.all = {}, {}, {}
    for m, tree in self.trees.items():
      nodes = list(_top_level(tree.body))
      self.imported[m] = {(a.asname or a.name): (n.module, a.name) for n in nodes if isinstance(n, ast.ImportFrom)
                          and (n.module or "").split(".")[0] == PKG for a in n.names}
      bound = {(a.asname or a.name).split(".")[0] for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom))
               for a in n.names}
      self.defined[m] = {k: v for k, v in self._definitions(nodes).items()
                         if k not in bound and not (k.startswith("__") and k.endswith("__"))}
      self.all[m] = next((list(ast.literal_eval(n.value)) for n in tree.body
                          if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None
                          and "__all__" in [t.id for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                                            if isinstance(t, ast.Name)]), None)
    self.uses = []  # (user, module named, name)
    for m, tree in self.trees.items():
      self._scan(m, tree)
    for path in sorted((root / "tests").rglob("*.py")) + sorted((root / "configs").glob("*.py")):
      self._scan(str(path.relative_to(root)), ast.parse(path.read_text(), str(path)))
    for doc in DOCS:
      if (root / doc).exists():
        for block in PYTHON_BLOCK.findall((root / doc).read_text()):
          self._scan(doc, ast.parse(textwrap.dedent(block)))
    scripts = tomllib.loads((root / "pyproject.toml").read_text()).get("project", {}).get("scripts", {})
    for target in scripts.values():
      module, _, name = target.partition(":")
      self.uses.append(("pyproject.toml", module, name.split(".")[0]))

  def _name(self, path: pathlib.Path) -> str:
    parts = path.relative_to(self.root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

  @staticmethod
  def _definitions(nodes):
    out = {}
    for node in nodes:
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        out[node.name] = node
      elif isinstance(node, ast.Assign):
        out.update({n.id: node for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)})
      elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        out[node.target.id] = node
    return out

  def _use(self, user: str, module: str, name: str) -> None:
    if module in self.paths and f"{module}.{name}" not in self.paths:
      self.uses.append((user, module, name))

  def _scan(self, user: str, tree: ast.AST) -> None:
    modules = {}  # local name -> the mmrag_jax module it is bound to
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PKG:
        for a in node.names:
          if f"{node.module}.{a.name}" in self.paths:
            modules[a.asname or a.name] = f"{node.module}.{a.name}"
          else:
            self._use(user, node.module, a.name)
      elif isinstance(node, ast.Import):
        modules.update({a.asname: a.name for a in node.names if a.asname and a.name.split(".")[0] == PKG})
    for node in ast.walk(tree):
      if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
        self._use(user, modules[node.value.id], node.attr)
      elif (isinstance(node, ast.Call) and len(node.args) >= 2 and isinstance(node.args[0], ast.Name)
            and node.args[0].id in modules and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)):
        self._use(user, modules[node.args[0].id], node.args[1].value)
      elif isinstance(node, ast.Constant) and isinstance(node.value, str) and PKG in node.value:
        if DOTTED.fullmatch(node.value):
          module, _, name = node.value.rpartition(".")
          self._use(user, module, name)
        elif "import" in node.value:
          try:
            self._scan(user, ast.parse(textwrap.dedent(node.value)))
          except SyntaxError:
            pass

  def origin(self, module: str, name: str, depth: int = 0) -> tuple[str, str] | None:
    """The module that defines `name` as seen from `module` (following imports), and its name there."""
    if name in self.defined.get(module, {}):
      return module, name
    if name in self.imported.get(module, {}) and depth < 10:
      return self.origin(*self.imported[module][name], depth + 1)
    return None

  def used_outside(self) -> dict[tuple[str, str], set[str]]:
    """(defining module, name) -> the other files that use it; a package's re-export is not a use."""
    out = defaultdict(set)
    for user, module, name in self.uses:
      found = self.origin(module, name)
      if found and user != found[0] and not (user in self.packages and name in self.imported[user]):
        out[found].add(user)
    return out

  def public(self, module: str, used: dict[tuple[str, str], set[str]]) -> set[str]:
    """What `module` should export: its names used elsewhere or allowed, and the types their signatures name."""
    defined = self.defined[module]
    names = {n for n in defined if (module, n) in used or n in ALLOWED_UNUSED}
    pending = list(names)
    while pending:
      for ref in _signature_names(defined[pending.pop()]):
        if ref in defined and ref not in names and not ref.startswith("_") and not _is_typevar(defined[ref]):
          names.add(ref)
          pending.append(ref)
    return names


def _annotation_names(expr: ast.AST | None) -> set[str]:
  names = set()
  for node in ast.walk(expr) if expr is not None else ():
    if isinstance(node, ast.Name):
      names.add(node.id)
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted forward reference
      try:
        names |= _annotation_names(ast.parse(node.value, mode="eval"))
      except SyntaxError:
        pass
  return names


def _function_signature(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
  a = fn.args
  params = a.posonlyargs + a.args + a.kwonlyargs + [p for p in (a.vararg, a.kwarg) if p]
  return _annotation_names(fn.returns).union(*(_annotation_names(p.annotation) for p in params))


def _signature_names(node: ast.AST) -> set[str]:
  """Names in the public signature of a top-level function, class (fields, public methods) or type alias."""
  if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
    return _function_signature(node)
  if isinstance(node, ast.ClassDef):
    names = set()
    for item in node.body:
      if isinstance(item, ast.AnnAssign):
        names |= _annotation_names(item.annotation)
      elif isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
          not item.name.startswith("_") or item.name in ("__init__", "__call__")):
        names |= _function_signature(item)
    return names
  type_expression = (ast.Subscript, ast.BinOp, ast.Attribute, ast.Name)
  if isinstance(node, ast.AnnAssign):
    return _annotation_names(node.annotation) | (
        _annotation_names(node.value) if isinstance(node.value, type_expression) else set())
  if isinstance(node, ast.Assign) and isinstance(node.value, type_expression):
    return _annotation_names(node.value)
  return set()


def _is_typevar(node: ast.AST) -> bool:
  return (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
          and getattr(node.value.func, "id", getattr(node.value.func, "attr", None)) in ("TypeVar", "ParamSpec"))


@pytest.fixture(scope="module")
def source() -> Source:
  return Source(ROOT)


def test_no_module_imports_a_private_name_of_another_module(source):
  private = sorted(f"{user}: {module}.{name}" for user, module, name in source.uses
                   if name.startswith("_") and not name.startswith("__") and user != module)
  assert not private, "make these public (and list them in __all__) or keep their use inside the module:\n" + \
      "\n".join(private)


def test_every_module_declares_all(source):
  assert not [m for m, names in source.all.items() if names is None]


def test_all_names_only_what_the_module_defines_or_a_package_reexports(source):
  wrong = []
  for module, names in source.all.items():
    for name in names or ():
      ok = source.origin(module, name) is not None if module in source.packages else name in source.defined[module]
      if not ok:
        wrong.append(f"{module}: {name}")
  assert not wrong, "in __all__ but not defined there (import it from where it is defined):\n" + "\n".join(wrong)


def test_all_lists_every_name_used_outside_the_module(source):
  missing = sorted({f"{module}.{name} (used by {user})" for user, module, name in source.uses
                    if user != module and source.all.get(module) is not None and name not in source.all[module]
                    and not name.startswith("__")})
  assert not missing, "imported from a module whose __all__ lacks it:\n" + "\n".join(missing)


def test_no_all_name_is_unused_outside_its_module(source):
  used = source.used_outside()
  unused = []
  for module, names in source.all.items():
    if module in source.packages:
      unused += [f"{module}: {n}" for n in names if (source.origin(module, n) not in used
                                                      and n not in ALLOWED_UNUSED)]
    else:
      unused += [f"{module}: {n}" for n in names or () if n not in source.public(module, used)]
  assert not unused, "exported but used by nothing else (give it a leading underscore):\n" + "\n".join(unused)


def test_public_top_level_names_are_exported(source):
  unexported = [f"{module}: {name}" for module, defined in source.defined.items() if module not in source.packages
                for name in defined if not name.startswith("_") and name not in (source.all[module] or ())]
  assert not unexported, "public names missing from __all__ (used only inside: add a leading underscore):\n" + \
      "\n".join(unexported)


@pytest.mark.parametrize("package", sorted(".".join(p.relative_to(ROOT).parts[:-1])
                                            for p in (ROOT / PKG).rglob("__init__.py")))
def test_package_all_resolves(package):
  module = importlib.import_module(package)
  missing = [name for name in module.__all__ if not hasattr(module, name)]
  assert not missing, f"{package}.__all__ names what it does not have: {missing}"
