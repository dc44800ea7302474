"""Score fusion, the model-zoo table and plots (``msg3d fuse`` / ``table`` / ``plot``).

``parse_named_paths`` reads the ``NAME=PATH`` options that fuse and plot share; it lives here, not
in ``msg3d.cli``, so that these stages' code digests do not change when a command is added.
"""

from pathlib import Path


def parse_named_paths(items, option):
    """``["j=a.pkl", "b=b.pkl"]`` -> ``{"j": Path("a.pkl"), "b": Path("b.pkl")}`` for a NAME=PATH option."""
    named = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{option} expects NAME=PATH, got {item!r}")
        if name in named:
            raise ValueError(f"{name!r} is given twice in {option}")
        named[name] = Path(path)
    return named
