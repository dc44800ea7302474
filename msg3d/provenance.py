"""Code identity of a pipeline stage: a digest of the msg3d source the stage can run.

One answer to "which code does this stage depend on", used by both sides that need it: the
Snakemake workflow puts ``code_digest(module)`` into each rule's ``params: code=``, so that an
edit reruns exactly the stages whose code changed, and ``msg3d train`` records the same value in
``config.json``, so that ``--auto-resume`` continues a run only with the code that started it.

A stage is named by the module that runs its command (``msg3d.cli.COMMANDS``). The digest covers
that module's *static import closure*: every ``msg3d`` module imported anywhere in it, at module
level or inside a function, recursively, plus the packages containing them (their ``__init__.py``
runs on import) and the package data files a module names in a string literal
(``ntu120_missing.txt``). The dispatch through ``python -m msg3d`` (``__main__.py``, ``cli.main``)
is a dynamic import and not part of a stage's code, so adding a command reruns nothing.

Not stage code (``NOT_STAGE_CODE``): the package's ``__init__.py`` (its version string and
docstring) and this module (the digest's own tool), so a version bump or an edit here reruns
nothing and does not stop a training from resuming.

Per-modality precision: the bone and motion operators are modules of their own; for one modality
the walk does not follow ``msg3d.data.modality``'s imports of the operator modules its modality
does not run (``MODALITY_OPERATOR_MODULES``), so an edit to the bone code reruns the b and bm
stores only.

Standard library only: the Snakefile imports this module in Snakemake's own interpreter.
"""

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "msg3d"
PACKAGE_DIR = Path(__file__).resolve().parent

NOT_STAGE_CODE = frozenset({PACKAGE, __name__})

# The module that dispatches a modality to its operators (derive_modality), and operator module ->
# the modalities that run it (tests/test_provenance.py checks this table against the calls).
MODALITY_DISPATCH = "msg3d.data.modality"
MODALITY_OPERATOR_MODULES = {
    "msg3d.data.bone": ("b", "bm"),
    "msg3d.data.motion": ("jm", "bm"),
}


def module_file(name):
    """Source file of the msg3d module ``name`` (``a/b.py`` or ``a/b/__init__.py``), or None
    (not a module of the package, or a folder without ``__init__.py``)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=None)
def _parse(name, is_package, source):
    """``(absolute names imported, short string literals)`` of module ``name``'s ``source``; cached
    by content, since the workflow asks for many digests of the same files."""
    package = name if is_package else name.rpartition(".")[0]
    imported, literals = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{node.module}" if node.module else anchor
            else:
                base = node.module
            imported.add(base)
            # `from package import module` imports the module; `from module import name` a name
            imported.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "\n" not in node.value:
            literals.add(node.value)
    return frozenset(imported), frozenset(literals)


def _references(name, path):
    """msg3d modules that module ``name`` imports anywhere in its body (module level or inside
    functions), and the non-Python files beside it that it names in a string literal."""
    imported, literals = _parse(name, path.name == "__init__.py", path.read_bytes())
    modules = {m for m in imported if m.split(".")[0] == PACKAGE and module_file(m) is not None}
    beside = {p.name: p for p in path.parent.iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")}
    return modules, {beside[n] for n in literals if n in beside}


def _with_packages(name):
    """``name`` and the packages above it, whose ``__init__.py`` files run when it is imported."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def code_files(module, modality=None):
    """Sorted files (absolute paths) that the stage module ``module`` (e.g. ``msg3d.engine.train``)
    can run: see the module docstring.

    ``modality`` (derive only: j, b, jm, bm) leaves out the operator modules that modality does not
    run. Raises ValueError for a name that is no msg3d module, SyntaxError for unparsable source.
    """
    if module_file(module) is None:
        raise ValueError(f"{module!r} is not a module of the {PACKAGE} package in {PACKAGE_DIR}")
    not_run = {m for m, runs in MODALITY_OPERATOR_MODULES.items() if modality is not None and modality not in runs}
    todo = sorted(_with_packages(module))
    seen, files = set(todo), set()
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or name in NOT_STAGE_CODE:
            continue
        imported, data_files = _references(name, path)
        files.add(path)
        files |= data_files
        if name == MODALITY_DISPATCH:
            imported -= not_run
        for module_name in imported:
            for new in _with_packages(module_name) - seen:
                seen.add(new)
                todo.append(new)
    return tuple(sorted(files))


def code_digest(module, modality=None):
    """First 16 hex digits of the sha256 over ``code_files(module, modality)``.

    Each file is hashed as its path relative to the package folder, its length and its bytes, in
    order of that path: the digest does not depend on where the checkout lives.
    """
    digest = hashlib.sha256()
    for path in code_files(module, modality):
        data = path.read_bytes()
        rel = path.relative_to(PACKAGE_DIR).as_posix()
        digest.update(b"%s\0%d\0%s" % (rel.encode(), len(data), data))
    return digest.hexdigest()[:16]
