"""Load single modules of an upstream wheel without installing it, with the rest of its package stubbed.

`Wheel(path)` reads files out of a downloaded wheel (a zip). `load(wheel, name, real=...)` executes the source of
module `name` (and of the modules named in `real`) from the wheel; every other module of the same top-level
package that they import is a stub whose attributes are `MagicMock`s, unless `overrides` gives it explicit
attributes. Nothing is written to site-packages and no dependency of the wheel (torch, CUDA, ...) is needed.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock


class Wheel:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip = zipfile.ZipFile(path)

    def source(self, module: str) -> str:
        base = module.replace(".", "/")
        for candidate in (f"{base}.py", f"{base}/__init__.py"):
            try:
                return self._zip.read(candidate).decode("utf-8")
            except KeyError:
                continue
        raise KeyError(f"{module} is not in {self.path.name}")


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = mock.MagicMock(name=f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, wheel: Wheel, top: str, real: Sequence[str], overrides: Mapping[str, Mapping[str, Any]]):
        self.wheel = wheel
        self.top = top
        self.real = set(real)
        self.overrides = overrides

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.top and not fullname.startswith(self.top + "."):
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if spec.name in self.real:
            return types.ModuleType(spec.name)
        return _StubModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__path__ = []  # every module may be a package: its submodules are found here too
        for name, value in self.overrides.get(module.__name__, {}).items():
            setattr(module, name, value)
        if module.__name__ in self.real:
            code = compile(self.wheel.source(module.__name__), f"{self.wheel.path.name}/{module.__name__}", "exec")
            exec(code, module.__dict__)


def load(
    wheel: Wheel,
    name: str,
    *,
    real: Sequence[str] = (),
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> types.ModuleType:
    """Module `name` executed from the wheel's source, its own package's other modules stubbed."""
    top = name.split(".", maxsplit=1)[0]
    for loaded in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
        del sys.modules[loaded]
    finder = _Finder(wheel, top, [name, *real], overrides or {})
    sys.meta_path.insert(0, finder)
    try:
        __import__(name)
        return sys.modules[name]
    finally:
        sys.meta_path.remove(finder)
