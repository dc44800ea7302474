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

Per-modality precision: the bone and motion operators are modules of their own; a ``derive`` job
for one modality leaves out the operator modules its modality does not run
(``MODALITY_OPERATOR_MODULES``), so an edit to the bone code reruns the b and bm stores only.

Standard library only: the Snakefile imports this module in Snakemake's own interpreter.
"""

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "msg3d"
PACKAGE_DIR = Path(__file__).resolve().parent

# Operator module -> the modalities whose derivation runs it (msg3d.data.modality.derive_modality;
# tests/test_provenance.py checks this table against what derive_modality really calls).
MODALITY_OPERATOR_MODULES = {
    "msg3d.data.bone": ("b", "bm"),
    "msg3d.data.motion": ("jm", "bm"),
}


def module_file(name):
    """Source file of the msg3d module ``name`` (``a/b.py`` or ``a/b/__init__.py``), or None."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=None)
def _module_references(name, path, mtime_ns, size):
    """``(msg3d modules imported, data files named)`` by module ``name`` at ``path``; cached per
    file version (mtime and size), since the workflow asks for many digests of the same files."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    return frozenset(_imported_modules(name, path, tree)), frozenset(_data_files(path, tree))


def _imported_modules(name, path, tree):
    """msg3d modules that the parsed module ``name`` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{node.module}" if node.module else anchor
            else:
                base = node.module
            found.add(base)
            # `from package import module` imports the module; `from module import name` a name
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] == PACKAGE and module_file(m) is not None}


def _data_files(path, tree):
    """Non-Python files beside ``path`` that the module names in a string literal."""
    beside = {p.name: p for p in path.parent.iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")}
    return {beside[n.value] for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in beside}


def _with_packages(name):
    """``name`` and the packages above it, whose ``__init__.py`` files run when it is imported."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def code_files(module, modality=None):
    """Sorted files (absolute paths) that the stage module ``module`` (e.g. ``msg3d.engine.train``)
    can run: see the module docstring.

    ``modality`` (derive only: j, b, jm, bm) drops the operator modules that modality does not
    run. Raises ValueError for a name that is no msg3d module, SyntaxError for unparsable source.
    """
    if module_file(module) is None:
        raise ValueError(f"{module!r} is not a module of the {PACKAGE} package in {PACKAGE_DIR}")
    skipped = {m for m, runs in MODALITY_OPERATOR_MODULES.items() if modality is not None and modality not in runs}
    todo = sorted(_with_packages(module))
    seen, files = set(todo), set()
    while todo:
        name = todo.pop()
        path = module_file(name)
        stat = path.stat()
        imported_modules, data_files = _module_references(name, path, stat.st_mtime_ns, stat.st_size)
        files.add(path)
        files |= data_files
        for imported in imported_modules:
            for module in _with_packages(imported) - seen - skipped:
                seen.add(module)
                todo.append(module)
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
