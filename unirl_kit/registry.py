"""The one plugin registry: decorator or lazy "module:object" registration, entry points, did-you-mean.

Every plugin group (backbones, rewards, detectors, color_classifiers) is a `Registry`. Built-ins are
registered lazily in `unirl_kit.plugins` so that listing them never imports torch; third-party
packages add theirs through the entry-point group `unirl_kit.<group>`.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

ENTRY_POINT_PREFIX = "unirl_kit."


class UnknownPluginError(KeyError):
    """Raised for a name that no plugin of the group has; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class _Entry:
    target: Any  # the object, or a "module:object" string not yet imported
    description: str
    source: str  # "builtin" or the distribution that provided it


def load_target(target: str) -> Any:
    """Import "package.module:attr.sub" and return the object."""
    module_name, _, attr = target.partition(":")
    if not attr:
        raise ValueError(f"lazy target {target!r} must look like 'package.module:object'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def is_target(name: str) -> bool:
    """Whether a plugin name is a lazy "package.module:object" target (dotted identifiers either side)."""
    module, sep, attr = name.partition(":")
    return bool(sep) and all(p.isidentifier() for p in module.split(".")) and all(
        p.isidentifier() for p in attr.split("."))


def _load_named_target(group: str, target: str) -> Any:
    """A "module:object" given where a plugin name goes (`--reward my_pkg.rewards:fn`), imported now."""
    try:
        return load_target(target)
    except (ImportError, AttributeError) as exc:
        raise UnknownPluginError(f"{group}: cannot load {target!r} ({type(exc).__name__}: {exc}); the module must "
                                 "be importable (installed, or its folder on PYTHONPATH)") from None


def _first_doc_line(obj: Any) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry:
    """Named plugins of one group."""

    def __init__(self, group: str, description: str) -> None:
        self.group = group
        self.description = description
        self._entries: dict[str, _Entry] = {}
        self._entry_points_loaded = False

    def register(
        self, name: str, target: Any = None, *, description: str = "", source: str = "builtin"
    ) -> Callable[[Any], Any] | None:
        """`@reg.register("name")` as a decorator, or `reg.register("name", "mod:obj", description=...)`."""
        if target is None:
            def decorator(obj: Any) -> Any:
                self._add(name, obj, description or _first_doc_line(obj), source)
                return obj
            return decorator
        self._add(name, target, description or ("" if isinstance(target, str) else _first_doc_line(target)), source)
        return None

    def _add(self, name: str, target: Any, description: str, source: str) -> None:
        if name in self._entries and self._entries[name].target is not target:
            old = self._entries[name].source
            raise ValueError(f"{self.group}: {name!r} is already registered (by {old}); pick another name")
        self._entries[name] = _Entry(target, description, source)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=ENTRY_POINT_PREFIX + self.group):
            if ep.name in self._entries:
                continue  # built-ins win; a plugin cannot silently replace them
            dist = ep.dist.name if ep.dist is not None else "entry point"
            self._entries[ep.name] = _Entry(ep.value, "", dist)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries

    def get(self, name: str) -> Any:
        """The plugin object (class or factory), importing it on first use."""
        self._load_entry_points()
        if name not in self._entries and is_target(name):
            return _load_named_target(self.group, name)
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownPluginError(
                f"unknown {self.group[:-1] if self.group.endswith('s') else self.group} {name!r}{hint} "
                f"(known: {', '.join(sorted(self._entries)) or 'none'})"
            )
        entry = self._entries[name]
        if isinstance(entry.target, str):
            try:
                entry.target = load_target(entry.target)
            except (ImportError, AttributeError) as exc:  # a plugin package's entry point that does not load
                raise UnknownPluginError(f"{self.group[:-1] if self.group.endswith('s') else self.group} {name!r} "
                                         f"({entry.target}, from {entry.source}) failed to load: "
                                         f"{type(exc).__name__}: {exc}") from None
            entry.description = entry.description or _first_doc_line(entry.target)
        return entry.target

    def build(self, name: str, **options: Any) -> Any:
        """Instantiate a plugin, turning unknown options into one clear error."""
        from safetensors import SafetensorError

        from unirl_kit.config import check_call_options
        from unirl_kit.types import InputError, first_line

        factory = self.get(name)
        typed = check_call_options(factory, options, where=f"{self.group}.{name}")
        missing = required_options(factory, typed)
        if missing:
            prefix = _OPTION_PREFIX.get(self.group, f"{self.group}_options").format(name=name)
            raise InputError(f"{self.group}.{name}: needs option {missing[0]!r} (give {prefix}.{missing[0]}=...)")
        try:
            return factory(**typed)
        except SafetensorError as exc:  # garbage, truncated or empty weights, however deep the loader reads them
            source = f" {typed['model']}" if typed.get("model") else ""
            raise InputError(f"{self.group}.{name}: a weights file of{source or ' the model'} is not a readable "
                             f"safetensors file ({first_line(exc)}); download or save the model again") from None

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, one-line description, source); entry-point plugins are imported to read theirs."""
        rows = []
        for name in self.names():
            entry = self._entries[name]
            if not entry.description and entry.source != "builtin":
                try:
                    self.get(name)
                except Exception as exc:  # a broken third-party plugin must not hide the others
                    entry.description = f"(failed to load: {exc})"
            rows.append((name, entry.description, entry.source))
        return rows


REGISTRIES: dict[str, Registry] = {
    "backbones": Registry("backbones", "unified multimodal models (generate + understand)"),
    "rewards": Registry("rewards", "per-sample rewards for scoring and GRPO"),
    "detectors": Registry("detectors", "object detectors for GenEval"),
    "color_classifiers": Registry("color_classifiers", "colour classifiers for GenEval's colour checks"),
}


def registry(group: str) -> Registry:
    """The registry of a group, with built-ins registered."""
    import unirl_kit.plugins  # noqa: F401  (registers the built-ins)

    if group not in REGISTRIES:
        close = difflib.get_close_matches(group, list(REGISTRIES), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownPluginError(f"unknown plugin group {group!r}{hint}")
    return REGISTRIES[group]


def register(group: str, name: str, target: Any = None, *, description: str = "") -> Any:
    """Module-level shortcut: `@register("detectors", "mine")`."""
    return REGISTRIES[group].register(name, target, description=description)


_OPTION_PREFIX = {"detectors": "detector_options", "color_classifiers": "color_options",
                  "backbones": "backbone.options", "rewards": "reward_options.{name}"}  # as typed in overrides


def required_options(factory: Any, given: dict[str, Any]) -> list[str]:
    """The factory's parameters without a default that `given` lacks (a TypeError traceback otherwise)."""
    import inspect

    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty and p.name not in given]
