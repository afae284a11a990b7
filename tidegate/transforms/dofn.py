"""The base of tidegate's DoFns: Beam's method inspection answered from a per-class cache.

Every time a runner builds a bundle processor it inspects every method of every DoFn
(`inspect.signature`, through `apache_beam.transforms.core.get_function_arguments`, for
`get_dofn_specs` and the stateful-DoFn checks): ~40 methods per DoFn, most of them Beam's own.
The local driver builds the bundle processors of its graph for every micro-batch, and that
inspection was a fifth of a small batch's cost. Beam asks an object for `_inspect_<method>()`
before inspecting it itself (its documented hook in `get_function_arguments`); this base
answers from a cache per class and method, so each is inspected once per process.
"""

from __future__ import annotations

import functools
from typing import Any

import apache_beam as beam
from apache_beam.transforms.core import get_function_args_defaults

_PREFIX = "_inspect_"


class TidegateDoFn(beam.DoFn):  # type: ignore[misc]
    def __getattr__(self, name: str) -> Any:
        if name.startswith(_PREFIX):
            method = name[len(_PREFIX) :]
            if not callable(getattr(type(self), method, None)):
                raise AttributeError(name)
            return functools.partial(_inspected, self, method)
        raise AttributeError(name)


def _inspected(dofn: TidegateDoFn, method: str) -> tuple[list[str], list[Any]]:
    cls = type(dofn)
    key = (cls, method)
    found = _CACHE.get(key)
    if found is None:
        args, defaults = get_function_args_defaults(getattr(dofn, method))
        found = _CACHE.setdefault(key, (tuple(args), tuple(defaults)))
    return list(found[0]), list(found[1])


_CACHE: dict[tuple[type, str], tuple[tuple[str, ...], tuple[Any, ...]]] = {}
