"""Typed plugin parameters: declared once, validated in one place (DESIGN §2; MTEB's ``ModelMeta``).

Every task, backbone and dataset declares ``params = {name: Param(default, ...)}``. A config
entry ``{name: <plugin>, key: value, ...}`` is resolved by :func:`resolve_params`: unknown keys
are rejected with a "did you mean", each value is checked against its :class:`Param` (type,
range, choices, list items), missing keys take their default, and any problem is one line::

    task decoding: lr must be a number > 0, got 'x'

Rules that tie several parameters together (``alpha_min ≤ alpha_max``) live in the plugin's
:meth:`Configurable.check`; per-field checks never do. ``brainharness list`` prints each
parameter's default, type and doc from the same declarations (nothing heavy is imported).

Numbers are kept as written: an int given for a ``float`` parameter stays an int, so the
resolved parameters a record stores are exactly what the config said (and numbers cannot move).
"""
from __future__ import annotations

import copy
import difflib
import json
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from .errors import ConfigError

PATH = (str, os.PathLike)  # the type of a path parameter: a string (YAML) or a path object (Python)

_TEXT = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
         str: ("a string", "strings"), list: ("a list", "lists"), dict: ("a mapping", "mappings"),
         os.PathLike: ("a path", "paths")}


def _is(value, t) -> bool:
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if t is list:
        return isinstance(value, (list, tuple))
    if t is dict:
        return isinstance(value, Mapping)
    return isinstance(value, t)


def _category(value) -> str:
    """What a choice is compared with: a number is only checked against numeric choices, etc."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, numbers.Real):
        return "number"
    return type(value).__name__


def _category_of_type(t) -> str:
    return {bool: "bool", int: "number", float: "number"}.get(t, getattr(t, "__name__", str(t)))


def _fmt(x) -> str:
    return format(x, "g") if isinstance(x, float) else str(x)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


@dataclass(frozen=True)
class Param:
    """One parameter: its default, what values it takes, and a line of documentation.

    ``type`` is a type or a tuple of them (``bool``, ``int``, ``float``, ``str``, ``list``,
    ``dict``, or :data:`PATH`); left out, it follows the default (any value if that is None).
    ``float`` takes any real number, ``int`` only integers; neither takes ``true``/``false``.
    ``gt``/``ge``/``lt``/``le`` bound numbers (open or closed); ``choices`` restricts values of
    its own kind (in ``type=(str, int), choices=("all",), ge=1`` strings must be ``"all"`` and
    integers ≥ 1). ``items`` checks each element of a list, ``nonempty`` rejects ``[]``/``""``.
    ``None`` is accepted where the default is None (``nullable`` says otherwise). ``required``:
    no default. ``check`` is a predicate for shapes the fields cannot say (word them in
    ``expect``); ``convert`` normalises a value before it is checked (a ValueError, TypeError or
    ConfigError from it reads as a bad value).
    """

    default: Any = None
    type: Any = None
    choices: tuple | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    nullable: bool | None = None
    items: Param | None = None
    nonempty: bool = False
    required: bool = False
    doc: str = ""
    expect: str = ""
    check: Callable[[Any], bool] | None = None
    convert: Callable[[Any], Any] | None = None

    # -- what it accepts -------------------------------------------------------------------
    @property
    def types(self) -> tuple:
        if self.type is not None:
            return self.type if isinstance(self.type, tuple) else (self.type,)
        d = self.default
        for t in (bool, int, float, str, list, dict):
            if _is(d, t):
                return (t,)
        return ()

    @property
    def allows_none(self) -> bool:
        return self.nullable if self.nullable is not None else (self.default is None and not self.required)

    def accepts(self, value, none_ok: bool | None = None) -> bool:
        if value is None:
            return self.allows_none if none_ok is None else none_ok
        if self.types and not any(_is(value, t) for t in self.types):
            return False
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if not math.isfinite(value):
                return False
            for bound, ok in ((self.gt, lambda b: value > b), (self.ge, lambda b: value >= b),
                              (self.lt, lambda b: value < b), (self.le, lambda b: value <= b)):
                if bound is not None and not ok(bound):
                    return False
        if self.choices is not None and _category(value) in {_category(c) for c in self.choices} \
                and not any(_category(c) == _category(value) and c == value for c in self.choices):
            return False
        if self.nonempty and isinstance(value, (str, list, tuple, Mapping)) and len(value) == 0:
            return False
        if self.items is not None and isinstance(value, (list, tuple)) \
                and not all(self.items.accepts(x, none_ok=self.items.nullable is True) for x in value):
            return False
        return self.check is None or bool(self.check(value))

    # -- how it reads ----------------------------------------------------------------------
    def _bounds(self) -> str:
        lo = (f"({_fmt(self.gt)}", f"> {_fmt(self.gt)}") if self.gt is not None else \
            (f"[{_fmt(self.ge)}", f"≥ {_fmt(self.ge)}") if self.ge is not None else None
        hi = (f"{_fmt(self.lt)})", f"< {_fmt(self.lt)}") if self.lt is not None else \
            (f"{_fmt(self.le)}]", f"≤ {_fmt(self.le)}") if self.le is not None else None
        if lo and hi:
            return f" in {lo[0]}, {hi[0]}"
        return f" {(lo or hi)[1]}" if lo or hi else ""

    def _parts(self, plural: bool) -> list[str]:
        types = [t for t in self.types if not (t is str and os.PathLike in self.types)]
        cats = {_category(c) for c in self.choices or ()}
        parts = []
        for t in types or ([None] if self.choices else []):
            if self.choices and (t is None or _category_of_type(t) in cats):
                options = [repr(c) for c in self.choices if t is None or _category(c) == _category_of_type(t)]
                lead = "values among " if plural else "one of " if len(options) > 1 and len(types) <= 1 else ""
                parts.append(lead + ", ".join(options))
                continue
            text = _TEXT.get(t, (f"a {getattr(t, '__name__', t)}", f"{getattr(t, '__name__', t)} values"))
            text = text[1] if plural else text[0]
            if self.nonempty and t in (str, list):
                text = f"non-empty {text}" if plural else f"a non-empty {text[2:]}"
            if t in (int, float):
                text += self._bounds()
            if t is list and self.items is not None:
                text += " of " + self.items.describe(plural=True)
            parts.append(text)
        return parts

    def describe(self, plural: bool = False) -> str:
        """What a valid value is, in words: ``a number > 0``, ``null or an integer ≥ 1``."""
        if self.expect:
            return self.expect
        parts = self._parts(plural) or ["anything"]
        none_ok = self.nullable is True if plural else self.allows_none  # list items: only if declared
        if none_ok and len(parts) == 1 and parts[0].startswith("one of "):
            return parts[0] + " or null"
        return _join((["null"] if none_ok else []) + parts)

    def default_text(self) -> str:
        if self.required:
            return "(required)"
        return json.dumps(self.default, ensure_ascii=False, default=str)


def _error(owner: str, name: str, param: Param, value) -> ConfigError:
    shown = repr(value)
    shown = shown if len(shown) <= 120 else shown[:117] + "..."
    hint = ""
    if isinstance(value, str) and any(t in (int, float) for t in param.types):
        try:
            float(value)
            hint = f" (YAML reads {value} as text: write numbers such as 1.0e-3 with a decimal point)"
        except ValueError:
            pass
    return ConfigError(f"{owner}: {name} must be {param.describe()}, got {shown}{hint}")


def _plain(value):
    """numpy scalars → Python numbers (what Python and JSON know); everything else unchanged."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (int, bool)):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (int, float, bool)):
        return float(value)
    return value


def check_value(owner: str, name: str, param: Param, value):
    """``value`` checked against ``param`` (after its ``convert``), or one-line ConfigError."""
    converted = value
    if param.convert is not None and value is not None:
        try:
            converted = param.convert(value)
        except (TypeError, ValueError, ConfigError):
            raise _error(owner, name, param, value) from None
    if not param.accepts(converted):
        raise _error(owner, name, param, value)
    return _plain(converted)


def unknown_key_error(owner: str, key, known) -> ConfigError:
    known = list(known)
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (parameters: {', '.join(map(str, known)) or 'none'})"
    return ConfigError(f"{owner}: unknown parameter {str(key)!r}{hint}")


def resolve_params(owner: str, spec: Mapping[str, Param], given: Mapping) -> dict:
    """The full parameter dict of ``owner`` (e.g. ``"task decoding"``): ``given`` checked against
    ``spec``, defaults (copies) for the rest, in declaration order."""
    unknown = sorted(str(k) for k in given if k not in spec)
    if unknown:
        raise unknown_key_error(owner, unknown[0], spec)
    out = {}
    for name, param in spec.items():
        if name in given:
            out[name] = check_value(owner, name, param, given[name])
        elif param.required:
            doc = f": {param.doc}" if param.doc else ""
            raise ConfigError(f"{owner}: {name} is required ({param.describe()}{doc})")
        else:
            value = copy.deepcopy(param.default)
            out[name] = param.convert(value) if param.convert is not None and value is not None else value
    return out


def defaults(spec: Mapping[str, Param]) -> dict:
    """``{name: default}`` of a spec (copies; required parameters left out)."""
    return {k: copy.deepcopy(p.default) for k, p in spec.items() if not p.required}


def param_lines(spec: Mapping[str, Param], indent: str = "    ") -> list[str]:
    """One aligned line per parameter: ``name = default   type   doc`` (for ``brainharness list``)."""
    rows = [(name, p.default_text(), p.describe(), p.doc) for name, p in spec.items()]
    if not rows:
        return []
    w1 = max(len(f"{n} = {d}") for n, d, _, _ in rows)
    w1 = min(w1, 48)
    w2 = min(max(len(t) for _, _, t, _ in rows), 44)
    return [f"{indent}{f'{n} = {d}':<{w1}}  {t:<{w2}}  {doc}".rstrip() for n, d, t, doc in rows]


class Configurable:
    """Base of a plugin configured by a mapping: tasks, backbones, datasets.

    Subclasses set ``kind`` (``task``, ``backbone``, ``dataset``) and ``params``, and call
    :meth:`resolve` with the keyword arguments they were given; override :meth:`check` for
    rules across parameters.
    """

    kind: ClassVar[str] = "plugin"
    params: ClassVar[dict[str, Param]] = {}
    registry_name: ClassVar[str] = ""
    # Parameters that change how or where the plugin runs, never its numbers (device, batch size,
    # cache folders): left out of a result's identity (brainharness.identity). Everything else is in it.
    runtime_params: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def owner(cls) -> str:
        """How messages name this plugin: ``task decoding``, ``backbone clip``."""
        return f"{cls.kind} {cls.registry_name or cls.__name__}"

    def resolve(self, given: Mapping) -> dict:
        """``given`` resolved against ``type(self).params``, then :meth:`check` ed."""
        p = resolve_params(self.owner(), type(self).params, given)
        self.check(p)
        return p

    def check(self, p: dict) -> None:
        """Rules that tie several parameters together; raise ConfigError (prefixed with
        :meth:`owner`). Types, ranges and choices of single parameters belong in ``params``."""
