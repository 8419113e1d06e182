"""Loading the modules named in config.

Owns: turning a `[[modules]]` entry (`path = "package.module:Class"`) into a constructed
`Module`, with one typed error per way it can fail, and the module list a node runs (the
built-in policy module first, unless `[policy] enabled = false`). Must not: start or call a
module's hooks (`host` does).

Design: docs/design.md section 10.
"""

from __future__ import annotations

import enum
import importlib
import re
from dataclasses import dataclass

from s2s_node.config import Config, ModuleConfig
from s2s_node.modules.api import Module
from s2s_node.modules.policy import PolicyModule

# A module's user is `@<name>:<identifier>`: a lowercase localpart, never empty (an empty
# localpart is the server user).
_NAME = re.compile(r"[a-z0-9._=\-/]{1,64}")
POLICY_DEADLINE_S = 5.0


class LoadReason(enum.Enum):
    BAD_PATH = "bad_path"
    IMPORT_FAILED = "import_failed"
    NO_SUCH_CLASS = "no_such_class"
    NOT_A_MODULE = "not_a_module"
    BAD_NAME = "bad_name"
    DUPLICATE_NAME = "duplicate_name"
    CONSTRUCTOR_FAILED = "constructor_failed"


class ModuleLoadError(Exception):
    """A configured module could not be loaded; the node does not start."""

    def __init__(self, reason: LoadReason, path: str, detail: str) -> None:
        super().__init__(f"module {path!r}: {reason.value}: {detail}")
        self.reason = reason
        self.path = path


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedModule:
    module: Module
    path: str
    deadline_s: float


def load_module(spec: ModuleConfig) -> LoadedModule:
    """Import `spec.path`, check it is a `Module` subclass with a usable name, construct it."""
    module_name, _, class_name = spec.path.partition(":")
    if not module_name or not class_name:
        raise ModuleLoadError(LoadReason.BAD_PATH, spec.path, 'expected "package.module:Class"')
    try:
        imported = importlib.import_module(module_name)
    except Exception as exc:  # any error of the imported code is the module's
        raise ModuleLoadError(LoadReason.IMPORT_FAILED, spec.path, repr(exc)) from exc
    cls = getattr(imported, class_name, None)
    if cls is None:
        raise ModuleLoadError(LoadReason.NO_SUCH_CLASS, spec.path, f"no {class_name}")
    if not isinstance(cls, type) or not issubclass(cls, Module):
        raise ModuleLoadError(LoadReason.NOT_A_MODULE, spec.path, "not a Module subclass")
    if not _NAME.fullmatch(cls.name):
        raise ModuleLoadError(
            LoadReason.BAD_NAME, spec.path, f"name {cls.name!r} is not a lowercase localpart"
        )
    try:
        module = cls(dict(spec.config))
    except Exception as exc:
        raise ModuleLoadError(LoadReason.CONSTRUCTOR_FAILED, spec.path, repr(exc)) from exc
    return LoadedModule(module=module, path=spec.path, deadline_s=spec.deadline_s)


def load_modules(config: Config) -> list[LoadedModule]:
    """The built-in policy module (if enabled), then every `[[modules]]` entry, in order."""
    loaded = []
    if config.policy.enabled:
        loaded.append(
            LoadedModule(
                module=PolicyModule({}),
                path="s2s_node.modules.policy:PolicyModule",
                deadline_s=POLICY_DEADLINE_S,
            )
        )
    names = {item.module.name for item in loaded}
    for spec in config.modules:
        item = load_module(spec)
        if item.module.name in names:
            raise ModuleLoadError(
                LoadReason.DUPLICATE_NAME, spec.path, f"another module is named {item.module.name}"
            )
        names.add(item.module.name)
        loaded.append(item)
    return loaded


__all__ = ["LoadReason", "LoadedModule", "ModuleLoadError", "load_module", "load_modules"]
