"""Field specs: what each YAML key of the configuration may hold beyond its Python type.

A :class:`Spec` sits in a config dataclass field's metadata (``field(metadata=Spec(...).meta)``);
the helpers here read it: which fields are YAML keys, which are required (per team mode), which
have a default. ``workspace_proxy.config`` declares the fields; the validation and
``workspace_proxy.schema`` read their specs through this module, so both say the same.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

TEAM_MODES: Final = ("managed", "passthrough")
"""How a team gets its Looker sessions. ``managed`` (the default): the proxy logs in with the
team's Looker API credentials, pins one session and forwards its callers' calls under it; callers
log in to the proxy with the credentials listed in ``callers``. ``passthrough``: callers log in
with their own Looker API credentials (their client ids listed in ``looker_client_ids``) and the
proxy pins each of their sessions; it holds no Looker credentials of the team."""
MANAGED: Final = ("managed",)
PASSTHROUGH: Final = ("passthrough",)
SPEC: Final = "workspace_proxy.fieldspec.Spec"
"""The key of a field's :class:`Spec` in its metadata."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Spec:
    """What a YAML key may hold beyond its Python type. Attached to a dataclass field as
    ``field(metadata=Spec(...).meta)``; read by the validation and by
    ``workspace_proxy.schema``, so that the JSON Schema says what check-config checks."""

    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    """The value, or each item of a list, is one of these."""
    pattern: str | None = None
    """The whole string (or each mapping key, for ``teams``) matches this regular expression."""
    non_empty: bool = False
    """A string of at least one character; a list or mapping of at least one item."""
    non_blank: bool = False
    """A string (or each string of a list) with at least one character that is not whitespace."""
    nullable: bool = False
    """``null`` is accepted and means the default."""
    plain: bool = False
    """A secret that may also be written as a plain string."""
    modes: tuple[str, ...] = TEAM_MODES
    """For a team's keys: the team modes that use the key (any other mode refuses it)."""
    required: bool = False
    """Required (in its ``modes``) although the field has a default; fields without a default
    are always required."""
    yaml: bool = True
    """False for fields the code fills in, which are not YAML keys."""

    @property
    def meta(self) -> dict[str, Spec]:
        """The ``metadata`` of a dataclass field with this spec."""
        return {SPEC: self}


_NO_SPEC: Final = Spec()


def spec_of(f: dataclasses.Field[Any]) -> Spec:
    """The :class:`Spec` of a config dataclass field (an empty one if it has none)."""
    spec = f.metadata.get(SPEC, _NO_SPEC)
    return spec if isinstance(spec, Spec) else _NO_SPEC


def yaml_fields(cls: type[Any], mode: str | None = None) -> tuple[dataclasses.Field[Any], ...]:
    """The fields of a config dataclass that are YAML keys, in order (for a team, with
    ``mode``: the keys that mode uses)."""
    return tuple(
        f
        for f in dataclasses.fields(cls)
        if spec_of(f).yaml and (mode is None or mode in spec_of(f).modes)
    )


def has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def required_keys(cls: type[Any], mode: str | None = None) -> frozenset[str]:
    """The YAML keys of a config dataclass that must be present (for a team: in ``mode``)."""
    return frozenset(
        f.name for f in yaml_fields(cls, mode) if spec_of(f).required or not has_default(f)
    )


def yaml_keys(cls: type[Any]) -> frozenset[str]:
    """The YAML keys of a config dataclass."""
    return frozenset(f.name for f in yaml_fields(cls))


def key_spec(cls: type[Any], key: str) -> Spec:
    """The :class:`Spec` of the field ``key`` of a config dataclass."""
    return spec_of(next(f for f in dataclasses.fields(cls) if f.name == key))
