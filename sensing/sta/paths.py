"""SensorThings resource paths (OGC 18-088 §9.2): what a URL below ``/sta/v1.1/`` names.

``Things`` · ``Things(1)`` · ``Things(1)/Datastreams`` · ``Datastreams(1)/Thing`` ·
``Things(1)/Datastreams(2)/Observations`` · ``Things(1)/name`` · ``Things(1)/name/$value`` ·
``Things(1)/Locations/$ref`` · ``Datastreams(1)/Thing/$ref``.

A path is a chain of :class:`Step` (an entity set or a navigation property, with an optional id),
then optionally one property (and ``$value``) or ``$ref``. Ids are integers: ``Things('a')`` or
``Things(x)`` is refused (:class:`PathError`, HTTP 400) with a message naming the segment. Only the
last step may be a collection: ``Things(1)/Datastreams/Observations`` names nothing (400).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sensing.sta import model
from sensing.sta.model import Entity, Nav


class PathError(ValueError):
    """A malformed or unknown resource path (HTTP 400, or 404 for an unknown first segment)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Step:
    entity: Entity            # the entity set this step lands in
    nav: Nav | None           # None for the first step (an entity set); else the navigation taken
    id: int | None            # the id given in parentheses, if any

    @property
    def single(self) -> bool:
        """This step names one entity (an id was given, or a to-one navigation)."""
        return self.id is not None or (self.nav is not None and not self.nav.many)


@dataclass(frozen=True)
class ResourcePath:
    steps: tuple[Step, ...]
    prop: str | None = None       # a property of the last (single) entity
    value: bool = False           # ``…/name/$value``: the raw value
    ref: bool = False             # ``…/$ref``: references (selfLinks) only
    segments: tuple[str, ...] = field(default_factory=tuple)

    @property
    def last(self) -> Step:
        return self.steps[-1]

    @property
    def entity(self) -> Entity:
        return self.last.entity

    @property
    def collection(self) -> bool:
        return self.prop is None and not self.last.single

    def text(self) -> str:
        return "/".join(self.segments)


_SEGMENT = re.compile(r"^([A-Za-z][A-Za-z0-9]*)(?:\((.*)\))?$", re.DOTALL)
_INT = re.compile(r"^[0-9]{1,18}$")


def _id(segment: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    raw = raw.strip()
    if _INT.match(raw):
        return int(raw)
    if raw.startswith(("'", '"')):
        raise PathError(f"path segment {segment!r}: ids on this server are integers, not strings; "
                        f"write e.g. {segment.split('(')[0]}(1)")
    raise PathError(f"path segment {segment!r}: {raw!r} is not an entity id; ids are positive integers, "
                    f"e.g. {segment.split('(')[0]}(1)")


def parse(path: str) -> ResourcePath:
    """Parse the part of a URL after ``/sta/v1.1/`` (no query string)."""
    segments = tuple(s for s in path.strip("/").split("/"))
    if not segments or segments == ("",):
        raise PathError("empty resource path; the entity sets are listed at /sta/v1.1")
    if any(s == "" for s in segments):
        raise PathError(f"resource path {path!r} has an empty segment (two slashes in a row)")
    steps: list[Step] = []
    prop: str | None = None
    value = ref = False
    for i, seg in enumerate(segments):
        where = f"path segment {seg!r}"
        if seg == "$ref":
            if i != len(segments) - 1:
                raise PathError(f"{where}: $ref must be the last segment")
            if prop is not None or not steps:
                raise PathError(f"{where}: $ref follows an entity or a collection, not a property")
            ref = True
            continue
        if seg == "$value":
            if i != len(segments) - 1 or prop is None:
                raise PathError(f"{where}: $value must come last, right after a property "
                                "(e.g. Things(1)/name/$value)")
            value = True
            continue
        if prop is not None:
            raise PathError(f"{where}: nothing can follow the property {prop!r} except $value")
        m = _SEGMENT.match(seg)
        if not m:
            raise PathError(f"{where}: not an entity set, navigation property or property name")
        name, raw_id = m.group(1), m.group(2)
        if not steps:
            entity = model.ENTITIES.get(name)
            if entity is None:
                raise PathError(f"{where}: no entity set {name!r}; the sets are "
                                + ", ".join(model.ENTITIES), status=404)
            steps.append(Step(entity, None, _id(seg, raw_id)))
            continue
        last = steps[-1]
        if not last.single:
            raise PathError(f"{where}: {segments[i - 1]!r} is a collection; name one entity of it by id "
                            f"first (e.g. {segments[i - 1]}(1)/{name})")
        nav = last.entity.nav(name)
        if nav is not None:
            ident = _id(seg, raw_id)
            if ident is not None and not nav.many:
                raise PathError(f"{where}: {name} is a single entity of {last.entity.singular}; "
                                "it takes no id")
            steps.append(Step(model.ENTITIES[nav.target], nav, ident))
            continue
        p = last.entity.prop(name)
        if p is not None and raw_id is None:
            prop = name
            continue
        raise PathError(f"{where}: {last.entity.singular} has no property or navigation property {name!r}; "
                        "it has " + ", ".join([q.name for q in last.entity.props] + [n.name for n in last.entity.navs]))
    return ResourcePath(tuple(steps), prop, value, ref, segments)
