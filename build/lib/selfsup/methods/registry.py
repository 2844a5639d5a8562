"""Methods by name: the one place a method's name is looked up.

    @register_method("mine", config=MineConfig)
    class Mine(Method):
        ...

makes `method: mine` (and a `mine:` config section typed by MineConfig) work in recipes, on the command line and
in selfsup.fit. A method defined outside selfsup registers when its module is imported: in Python, or through the
run config's `imports: [my_module]` (or a path to its .py file) for the command line and torchrun.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from selfsup.errors import SelfSupError

if TYPE_CHECKING:
    from selfsup.config import Config
    from selfsup.methods.base import DataInfo, Method
    from selfsup.nets import Backbone

METHODS: dict[str, type[Method]] = {}


def register_method(name: str, config: type | None = None):
    """Class decorator: register a Method subclass under `name`, with `config` (a dataclass) as its config section."""

    def add(cls: type[Method]) -> type[Method]:
        from selfsup.config import Config
        from selfsup.methods.base import Method, NoConfig

        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"register_method({name!r}) decorates a Method subclass, not {cls!r}")
        if not name.isidentifier():
            raise ValueError(f"method name {name!r} must be an identifier (it names a config section)")
        if name in {f.name for f in dataclasses.fields(Config)}:
            raise ValueError(f"method name {name!r} is taken by the run config's own key {name!r}")
        old = METHODS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"method {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        section = config or cls.__dict__.get("config_class") or NoConfig
        if not dataclasses.is_dataclass(section):
            raise TypeError(f"the config of method {name!r} must be a dataclass, got {section!r}")
        cls.name, cls.config_class = name, section
        METHODS[name] = cls
        return cls

    return add


def find_method(name: str) -> type[Method] | None:
    """The method class registered as `name`, or None."""
    return METHODS.get(name)


def get_method(name: str) -> type[Method]:
    """The method class registered as `name`; an unknown name is a one-line error listing the known ones."""
    cls = METHODS.get(name)
    if cls is None:
        raise SelfSupError(f"unknown method {name!r}; available: {', '.join(METHODS)} (a method of your own registers "
                           "with @register_method when its module is imported: config key `imports`)")
    return cls


def build_method(cfg: Config, data: DataInfo | None = None, backbone: Backbone | None = None) -> Method:
    """The run's method (cfg.method, with its config section and the run's augmentation) around `backbone`, or around
    the backbone cfg.model describes, freshly initialised."""
    from selfsup.methods.base import DataInfo
    from selfsup.nets import backbone_from

    cls = get_method(cfg.method)
    data = data or DataInfo()
    if data.input_size is None:
        data = DataInfo(data.num_samples, cfg.model.input_size, data.targets)
    return cls(backbone if backbone is not None else backbone_from(cfg.model), cfg.section(), cfg.augment, data)


__all__ = ["METHODS", "register_method", "find_method", "get_method", "build_method"]
