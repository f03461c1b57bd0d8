"""Unpickling untrusted CIFAR-10 batches: an unpickler that can rebuild numpy arrays and plain containers,
nothing else.

An ordinary unpickler imports and calls whatever a pickle names, which lets a crafted archive run
code; the official archive's batches only ever need numpy's array reconstruction.

Exactly the globals that CIFAR pickles name, from every pickler that wrote
them (Python 2 cPickle/pickle at protocols 0-2, Python 3 at 0-5, numpy 1 and 2):

* numpy.ndarray and numpy.core|_core.multiarray._reconstruct: every array at
  protocols 0-4, rebuilt as an empty array whose bytes a BUILD fills in;
* numpy.dtype: every array's element type;
* numpy.core|_core.multiarray.scalar: numpy scalars, e.g. in batches.meta;
* numpy.core|_core.numeric._frombuffer: every array at protocol 5;
* _codecs.encode: Python 3 at protocols 0-2 writes each bytes object (array
  data, dtype codes) as _codecs.encode(<str>, 'latin1').

Python 2 wrote bytes as plain strings, and numpy objects define __reduce__,
so copy_reg._reconstructor and the like never appear in a CIFAR pickle.
Where numpy's functions would do more than a pickle of numpy data needs,
they are wrapped to allow only what numpy itself writes.
"""

from __future__ import annotations

import io
import pickle
import reprlib

import numpy as np


class RefusedPickle(Exception):
    """The pickle names a global, or calls a permitted one in a way, that numpy's own pickles never do; the
    message says which ("tries to load os.system", "calls numpy.ndarray((10**12,))")."""


def _describe_call(function: str, args: tuple) -> str:
    return f"{function}{reprlib.repr(args)}"


class _NdarrayClassArgument:
    """What a pickle's reference to numpy.ndarray loads as.

    numpy's pickles only pass the class to _reconstruct; calling it, as a
    crafted pickle could, would allocate an array of whatever size it names.
    """

    def __call__(self, *args):
        raise RefusedPickle(f"calls {_describe_call('numpy.ndarray', args)}")

    def __repr__(self):
        return "numpy.ndarray"


_NDARRAY_CLASS_ARGUMENT = _NdarrayClassArgument()
_numpy_reconstruct = np.zeros(0).__reduce__()[0]


def _reconstruct_empty_array(subtype, shape, typecode):
    # numpy always writes _reconstruct(ndarray, (0,), b'b'): an empty array
    # that BUILD then fills from bytes in the pickle. Any other shape would
    # make numpy allocate memory that the pickle never paid for.
    if not (subtype is _NDARRAY_CLASS_ARGUMENT and _is_exactly(shape, (0,)) and _is_exactly(typecode, b"b")):
        call = _describe_call("numpy's _reconstruct", (subtype, shape, typecode))
        raise RefusedPickle(f"calls {call} instead of _reconstruct(numpy.ndarray, (0,), b'b')")
    return _numpy_reconstruct(np.ndarray, (0,), typecode)


def _is_exactly(value, expected) -> bool:
    # The type check first: == on an array from the pickle would not give a bool.
    return type(value) is type(expected) and value == expected


def _latin1_bytes(text, encoding):
    # Other codecs reach zlib, bz2, base64...; numpy's bytes only need latin1.
    if not (isinstance(text, str) and encoding == "latin1"):
        raise RefusedPickle(
            f"calls {_describe_call('_codecs.encode', (text, encoding))} instead of "
            "_codecs.encode(<str>, 'latin1')"
        )
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], object]:
    # numpy's functions are taken from its own reduce output rather than
    # imported by module path: the path moved (numpy.core -> numpy._core) in
    # numpy 2, and pickles from either numpy name either path.
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed = {
        ("numpy", "ndarray"): _NDARRAY_CLASS_ARGUMENT,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = _reconstruct_empty_array
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and plain containers, nothing else.

    An ordinary unpickler imports and calls whatever the pickle names, which
    lets a crafted archive run code; CIFAR batches only ever need numpy's
    array reconstruction, so everything else is refused.
    """

    def __init__(self, stream):
        # Official batches are Python 2 pickles; "bytes" keeps their str
        # fields (keys, raw pixel data) as bytes instead of guessing a codec.
        super().__init__(stream, encoding="bytes")

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise RefusedPickle(f"tries to load {module}.{name}")
        return allowed


def load_numpy_pickle(payload: bytes):
    """The object a CIFAR batch's pickle holds: numpy arrays, dicts, lists, strings and numbers.

    Raises RefusedPickle for anything else it names or calls; a damaged pickle raises what the
    unpickler meets (any exception).
    """
    return _CifarUnpickler(io.BytesIO(payload)).load()
