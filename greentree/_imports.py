"""Objects named by import path (``"package.module:qualname"``).

Child specs that cross a process boundary carry their ``start`` as such a
path; a :class:`~greentree.ChildSpec` accepts one too.  Pure: no gevent.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["import_path", "resolve"]


def import_path(obj: Any) -> str:
    """``"module:qualname"`` of an importable class or function, or ValueError why not.

    >>> import_path(resolve)
    'greentree._imports:resolve'
    >>> import_path(lambda: 0)
    Traceback (most recent call last):
      ...
    ValueError: <lambda> is not importable by name: define it at module level
    """
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise ValueError(f"{obj!r} has no module and name: pass a class or function defined in a module")
    if "<" in qualname:
        raise ValueError(f"{qualname} is not importable by name: define it at module level")
    if module == "__main__":
        raise ValueError(f"{qualname} is defined in __main__, which other nodes cannot import: move it to a module")
    path = f"{module}:{qualname}"
    try:
        found = resolve(path)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{path} cannot be imported back ({e})") from None
    if found is not obj:
        raise ValueError(f"{path} imports a different object than {obj!r}")
    return path


def resolve(path: str) -> Any:
    """Import ``"module:qualname"`` (ImportError or AttributeError if it cannot be).

    >>> resolve("os.path:join") is __import__("os").path.join
    True
    """
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj
