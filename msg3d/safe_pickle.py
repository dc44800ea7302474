"""Restricted unpickling of the pickles msg3d reads: PYSKL annotation pickles and scores pickles.

A plain ``pickle.load`` calls whatever a file names (``os.system``, ``eval``, ...) before any check
can look at the result, so a pickle from elsewhere runs its code. ``load`` rebuilds only what those
formats hold and refuses every other global with a ``ValueError`` naming the file and the global:

* builtin containers and scalars: what pickle spells with its own opcodes (dict, list, tuple, str,
  int, float, bool, None) plus ``set``, ``frozenset``, ``bytes``, ``bytearray``, ``complex`` and
  ``collections.OrderedDict``;
* protocol 0-2 bytes, spelt ``_codecs.encode(text, 'latin1')`` (mmcv's ``dump``, which PYSKL's tools
  use, writes protocol 2): only the latin-1 codec is accepted;
* numpy arrays, dtypes and scalars: ``NUMPY_GLOBALS``, under numpy 1.x (``numpy.core.*``) and 2.x
  (``numpy._core.*``) names alike, so a file loads whichever numpy wrote it.

``numpy.ndarray`` itself resolves to a stand-in that only numpy's ``_reconstruct`` accepts: called
with pickled arguments, the class builds an object array over raw bytes, i.e. forged object
pointers (a crash at best). A pickled dtype's state can forge the same thing: a structured dtype
with an object field whose flags deny holding objects lets numpy rebuild that field from raw
bytes. ``check_numpy_values`` therefore refuses, after loading and before anything reads an
element, every structured or sub-array dtype (none of these formats holds one); freeing such an
array is harmless, numpy trusts the same flags there. What is written is unchanged: msg3d still
writes plain pickles that PYSKL's tools read. Stdlib + numpy only.
"""

import _compat_pickle
import codecs
import collections
import pickle

import numpy as np

try:
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # a numpy 1.x without the numpy._core names
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


class _Refused(pickle.UnpicklingError):
    def __init__(self, name):
        super().__init__(name)
        self.name = name


class _NdarrayClass:
    """What the name ``numpy.ndarray`` gives in a pickle: a token, not the class."""

    def __call__(self, *args, **kwargs):
        raise _Refused("numpy.ndarray called on pickled arguments")

    def __repr__(self):
        return "<numpy.ndarray, accepted only by numpy's _reconstruct>"


_NDARRAY = _NdarrayClass()


def _reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct`` for plain arrays only: the first step of unpickling an ndarray."""
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError(f"numpy's _reconstruct called with {subtype!r}; only numpy.ndarray is rebuilt")
    return _multiarray._reconstruct(np.ndarray, shape, dtype)


def _latin1_encode(text, encoding):
    """``_codecs.encode`` as protocol 0-2 pickles use it: ``bytes`` from their latin-1 text."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r}; pickled bytes use latin1")
    return codecs.encode(text, "latin1")


def _numpy_globals():
    table = {"numpy.dtype": np.dtype, "numpy.ndarray": _NDARRAY}
    for module in ("numpy.core", "numpy._core"):
        table[f"{module}.multiarray._reconstruct"] = _reconstruct
        table[f"{module}.multiarray.scalar"] = _multiarray.scalar
        table[f"{module}.numeric._frombuffer"] = _numeric._frombuffer  # arrays under protocol 5
    # the dtype classes appear when a dtype's own class is pickled (numpy >= 1.25 names them
    # numpy.dtypes.*, aliases included); checkpoint loading lists them for torch's BUILD as well
    dtypes = getattr(np, "dtypes", None)
    for name in getattr(dtypes, "__all__", ()):
        cls = getattr(dtypes, name)
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            table[f"numpy.dtypes.{name}"] = cls
    for code in np.typecodes["All"]:
        cls = type(np.dtype(code))
        table.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
    return table


# qualified name in a pickle -> the object it rebuilds to
NUMPY_GLOBALS = _numpy_globals()

_BUILTINS = {"set": set, "frozenset": frozenset, "bytes": bytes, "bytearray": bytearray, "complex": complex}

_ALLOWED = {
    **{f"builtins.{name}": obj for name, obj in _BUILTINS.items()},
    "_codecs.encode": _latin1_encode,
    "collections.OrderedDict": collections.OrderedDict,
    **NUMPY_GLOBALS,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        # every global a pickle uses (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT*) is looked up here,
        # before anything is called, so a refused one never runs. Protocols 0-2 use Python 2's
        # names (__builtin__, ...): translated as pickle itself does, so messages name what would run.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualified = f"{module}.{name}"
        try:
            return _ALLOWED[qualified]
        except KeyError:
            raise _Refused(qualified) from None


def load(path, what):
    """Unpickle the file ``path``, rebuilding only the globals listed in the module docstring.

    ``what`` names the format with its article for messages, e.g. ``"an annotation pickle"``.
    Raises ``ValueError`` naming ``path`` for a refused global ("refused to load: it asks for
    builtins.eval, which an annotation pickle never holds ...") and for a file that is not a
    readable pickle; ``OSError`` (``FileNotFoundError``, ...) from opening ``path`` propagates.
    """
    with open(path, "rb") as f:
        try:
            obj = _RestrictedUnpickler(f).load()
        except _Refused as refused:
            raise ValueError(f"{path}: refused to load: it asks for {refused.name}, which {what} never holds "
                             "(a pickle from elsewhere can run code)") from None
        except Exception as exc:  # a corrupt pickle can raise almost anything
            raise ValueError(f"{path}: not {what} ({type(exc).__name__}: {exc})") from None
    check_numpy_values(obj, path, what)
    return obj


def check_numpy_values(obj, source, what):
    """ValueError naming ``source`` if ``obj`` (containers walked, cycles allowed) holds a numpy
    array, scalar or dtype whose dtype is structured or has a sub-array: the only dtypes whose
    pickled state can forge object pointers (see the module docstring). Reads no element data."""
    seen, todo = set(), [obj]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, (np.ndarray, np.generic, np.dtype)):
            dtype = item if isinstance(item, np.dtype) else item.dtype
            if dtype.fields is not None or dtype.subdtype is not None:
                raise ValueError(f"{source}: refused to load: it holds a numpy array or value of a structured "
                                 f"dtype, which {what} never holds (its state could forge object pointers)")
            if isinstance(item, np.ndarray) and dtype.kind == "O":
                todo.extend(item.flat)
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            todo.extend(item)
