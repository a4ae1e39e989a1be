"""One registry mechanism for architectures and tasks, three ways in.

1. A decorator for built-ins: ``@register_architecture("lstm")``.
2. An installed entry point in the group ``mnemoscope.architectures`` (or ``mnemoscope.tasks``):
   ``[project.entry-points."mnemoscope.architectures"] mygru = "mypkg.model:MyGRU"``.
3. A path given where a name is expected: ``package.module:Class`` or ``path/to/file.py:Class``.

A prefix stands for a family of classes made on demand: ``hf:llama`` asks the resolver registered
for ``hf`` (``Registry.add_prefix``) for the class of ``llama``.

A duplicate name fails; an unknown name fails with the known names and the close matches.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import RegistryError


class Registry:
    def __init__(self, kind: str, group: str, builtin_module: str):
        self.kind = kind  # "architecture" or "task", for messages
        self.group = group  # entry-point group
        self.builtin_module = builtin_module  # imported once to run the built-ins' decorators
        self._entries: dict[str, Any] = {}
        self._origins: dict[str, str] = {}
        self._prefixes: dict[str, tuple[Callable[[str], Any], Callable[[], list[tuple[str, str]]]]] = {}
        self._loaded = False

    # -- the three ways in -------------------------------------------------------------
    def register(self, name: str | None = None) -> Callable[[Any], Any]:
        """Decorator: ``@registry.register("name")`` on a class."""

        def decorate(obj):
            self.add(name or obj.__name__.lower(), obj, origin=f"{obj.__module__}:{obj.__qualname__}")
            return obj

        return decorate

    def add(self, name: str, obj: Any, origin: str = "") -> None:
        if name in self._entries and self._entries[name] is not obj:
            raise RegistryError(
                f"duplicate {self.kind} name {name!r}: already registered by {self._origins[name]}, "
                f"refused from {origin or obj!r}"
            )
        self._entries[name] = obj
        self._origins[name] = origin
        try:
            obj.registered_name = name
        except (AttributeError, TypeError):
            pass

    def add_prefix(self, prefix: str, resolve: Callable[[str], Any], listing: Callable[[], list[tuple[str, str]]]) -> None:
        """``prefix:NAME`` resolves to ``resolve(NAME)`` (which raises RegistryError for an unknown
        NAME); ``listing()`` gives (spec, one line) for `study.py list`."""
        if prefix in self._entries or (prefix in self._prefixes and self._prefixes[prefix][0] is not resolve):
            raise RegistryError(f"duplicate {self.kind} prefix {prefix!r}")
        self._prefixes[prefix] = (resolve, listing)

    def prefixes(self) -> list[str]:
        self._load()
        return sorted(self._prefixes)

    def listing(self, prefix: str) -> list[tuple[str, str]]:
        self._load()
        return self._prefixes[prefix][1]()

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        importlib.import_module(self.builtin_module)
        for ep in importlib.metadata.entry_points(group=self.group):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken installed plugin must not hide the others
                raise RegistryError(
                    f"installed {self.kind} plugin {ep.name!r} ({ep.value}) failed to import: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self.add(ep.name, obj, origin=f"entry point {ep.value}")

    # -- lookup ------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def origin(self, name: str) -> str:
        self._load()
        return self._origins.get(name, "")

    def get(self, spec: str) -> Any:
        """A registered name, ``prefix:NAME``, ``module:Class`` or ``path/to/file.py:Class``."""
        self._load()
        if spec in self._entries:
            return self._entries[spec]
        head, sep, rest = spec.partition(":")
        if sep and head in self._prefixes:
            return self._prefixes[head][0](rest)
        if ":" in spec:
            return load_object(spec, self.kind)
        known = ", ".join(sorted(self._entries))
        close = difflib.get_close_matches(spec, self._entries, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise RegistryError(f"unknown {self.kind} {spec!r}{hint} (known: {known}; or give module:Class or file.py:Class)")


def load_object(spec: str, kind: str = "object") -> Any:
    """Import ``package.module:Attr`` or ``path/to/file.py:Attr``."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise RegistryError(f"cannot read {kind} {spec!r}: expected module:Class or path/to/file.py:Class")
    try:
        if target.endswith(".py"):
            path = Path(target).expanduser().resolve()
            if not path.is_file():
                raise RegistryError(f"{kind} file not found: {target}")
            mod_name = f"mnemoscope_plugin_{path.stem}_{abs(hash(str(path))) % 10**8}"
            module = sys.modules.get(mod_name)
            if module is None:
                spec_ = importlib.util.spec_from_file_location(mod_name, path)
                module = importlib.util.module_from_spec(spec_)
                sys.modules[mod_name] = module
                try:
                    spec_.loader.exec_module(module)
                except BaseException:
                    del sys.modules[mod_name]
                    raise
        else:
            module = importlib.import_module(target)
    except RegistryError:
        raise
    except Exception as exc:
        raise RegistryError(f"{kind} {spec!r} failed to import: {type(exc).__name__}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise RegistryError(f"{kind} {spec!r}: {target} has no attribute {attr!r}") from None


# the built-ins: the packages mnemoscope.architectures and mnemoscope.tasks (top-level folders of the repository)
ARCHITECTURES = Registry("architecture", "mnemoscope.architectures", "mnemoscope.architectures")
TASKS = Registry("task", "mnemoscope.tasks", "mnemoscope.tasks")

register_architecture = ARCHITECTURES.register
register_task = TASKS.register
