"""The method registry: every method inca trains, and what the rest of inca needs to know of it.

Each method registers itself in its own package (``inca.methods.<name>``): its name, a
one-line summary, its frozen config dataclass (its own fields only, with the help text the CLI
prints), its input, the learning rates a comparison sweeps, its default plan, its task kind, its
memory-benchmark modes and, for methods trained from pixels, the object holding its behaviour.
Every table of methods elsewhere (``inca compare``'s methods and plans, the report's one-pass
methods, ``inca bench-memory``'s modes) is a view of this one.

    >>> [m.name for m in inca.list_methods()]
    ['linear', 'inca', 'open-inca', 'vqt', 'full', 'partial', 'lora', 'stochca']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from inca.errors import IncaError, UnknownNameError

INPUTS = ("tokens", "pixels")  # frozen taps' tokens (trainable from the cache), or pixels


@dataclass(frozen=True)
class Method:
    """A registered method.

    name: how users call it (``inca compare --methods``, a plan's first word).
    summary: one line for listings.
    input: "tokens" (adapters on frozen taps: one-to-many from one pass or the activation
        cache, their whole grid in one run) or "pixels" (runs the backbone itself every step).
    config: its config dataclass; the docstring says what each field means.
    default_lrs: what a comparison sweeps ("tokens" methods: their plan carries its grid).
    default_plan: "tokens" methods: the plan a comparison trains.
    task_kind: "adapters" (a ``Task`` of adapters on taps) or "finetuned" (its own pass).
    memory_modes: ``inca bench-memory`` modes it adds, each {mode: config options}.
    shares_sweep: "pixels" methods whose learning-rate sweep trains from one backbone pass.
    behaviour: "pixels" methods: what the method does, beside its config's data (a
        ``inca.methods.pixel_method.PixelMethod``: builds its model, says how its runs train).
    """

    name: str
    summary: str
    input: str
    config: type
    default_lrs: tuple[float, ...] = ()
    default_plan: str | None = None
    task_kind: str = "adapters"
    memory_modes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    shares_sweep: bool = False
    behaviour: Any = None

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise IncaError(f"method {self.name!r}: input must be one of {INPUTS}")
        if self.input == "tokens" and not self.default_plan:
            raise IncaError(f"method {self.name!r} reads tokens: give it a default plan")
        if self.input == "pixels" and self.behaviour is None:
            raise IncaError(f"method {self.name!r} trains from pixels: give it a behaviour")

    @property
    def from_tokens(self) -> bool:
        return self.input == "tokens"

    @property
    def one_pass(self) -> bool:
        """Whether its whole sweep is one training run (one-to-many)."""
        return self.from_tokens or self.shares_sweep

    def options_help(self) -> list[tuple[str, str]]:
        """(field, default) of its config, for listings."""
        return [(f.name, repr(f.default)) for f in fields(self.config)]


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in _METHODS and _METHODS[method.name] != method:
        raise IncaError(f"a method named {method.name!r} is registered already")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise UnknownNameError("method", name, _METHODS)
    return _METHODS[name]


def list_methods(input: str | None = None) -> list[Method]:
    """Registered methods (of one ``input``), frozen-token methods first, in registration
    order."""
    methods = [m for m in _METHODS.values() if input is None or m.input == input]
    return sorted(methods, key=lambda m: not m.from_tokens)
