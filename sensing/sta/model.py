"""The SensorThings data model mapped on the ``sta_*`` tables (migration 0014). Pure data.

Every entity set is an :class:`Entity`: its table, its properties (each a SQL expression over the
entity's table alias, written ``{a}``) and its navigation properties (each a SQL condition relating
a child row, alias ``{c}``, to its parent row, alias ``{p}``: ``Things(1)/Datastreams`` is
``SELECT … FROM sta_datastreams c WHERE <cond with {p}.id = 1>``; the same condition serves
``$expand`` and path navigation in ``$filter``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

API_VERSION = "v1.1"

#: Property kinds (for typing in $filter and for (de)serialisation).
ID, TEXT, JSON, TIME, INTERVAL, GEOMETRY, NUMBER, ANY, TEXT_ARRAY = (
    "id", "text", "json", "time", "interval", "geometry", "number", "any", "text[]")


@dataclass(frozen=True)
class Prop:
    name: str            # the STA name (camelCase)
    sql: str             # an expression over ``{a}``; for INTERVAL kinds "start_expr|end_expr"
    kind: str
    required: bool = False   # must be given on create
    writable: bool = True    # False: computed by the server (e.g. a Datastream's phenomenonTime)
    column: str | None = None  # the column written (None: same as sql without the alias)


@dataclass(frozen=True)
class Nav:
    name: str            # e.g. "Datastreams", "Thing"
    target: str          # the entity set, e.g. "Datastreams"
    many: bool
    cond: str            # SQL over {c} (child = target row) and {p} (parent row)
    #: for a to-one link held in a column of the parent: that column (deep insert sets it)
    fk: str | None = None
    #: for a link held in the child's column (a to-many whose child points back): the child column
    back_fk: str | None = None
    #: for a link held in a link table: (table, parent column, child column)
    link: tuple[str, str, str] | None = None
    required: bool = False   # the parent cannot be created without it


@dataclass(frozen=True)
class Entity:
    set_name: str        # "Things"
    singular: str        # "Thing"
    table: str
    props: tuple[Prop, ...]
    navs: tuple[Nav, ...] = field(default_factory=tuple)

    def prop(self, name: str) -> Prop | None:
        return next((p for p in self.props if p.name == name), None)

    def nav(self, name: str) -> Nav | None:
        return next((n for n in self.navs if n.name == name), None)


def _p(name, sql, kind, required=False, writable=True, column=None):
    return Prop(name, sql, kind, required, writable, column)


_ID = _p("id", "{a}.id", ID, writable=False)
_NAME = _p("name", "{a}.name", TEXT, required=True)
_DESC = _p("description", "{a}.description", TEXT, required=False)
_PROPS = _p("properties", "{a}.properties", JSON)
_STATS = "(SELECT {col} FROM sta_stream_stats s WHERE s.stream_id = {{a}}.id)"

THINGS = Entity("Things", "Thing", "sta_things", (_ID, _NAME, _DESC, _PROPS), (
    Nav("Locations", "Locations", True,
        "{c}.id IN (SELECT location_id FROM sta_thing_locations WHERE thing_id = {p}.id)",
        link=("sta_thing_locations", "thing_id", "location_id")),
    Nav("HistoricalLocations", "HistoricalLocations", True, "{c}.thing_id = {p}.id", back_fk="thing_id"),
    Nav("Datastreams", "Datastreams", True, "{c}.thing_id = {p}.id", back_fk="thing_id"),
    Nav("MultiDatastreams", "MultiDatastreams", True, "{c}.thing_id = {p}.id", back_fk="thing_id"),
))

LOCATIONS = Entity("Locations", "Location", "sta_locations", (
    _ID, _NAME, _DESC, _p("encodingType", "{a}.encoding_type", TEXT, True),
    _p("location", "{a}.location", GEOMETRY, True), _PROPS,
), (
    Nav("Things", "Things", True,
        "{c}.id IN (SELECT thing_id FROM sta_thing_locations WHERE location_id = {p}.id)",
        link=("sta_thing_locations", "location_id", "thing_id")),
    Nav("HistoricalLocations", "HistoricalLocations", True,
        "{c}.id IN (SELECT historical_location_id FROM sta_location_history WHERE location_id = {p}.id)",
        link=("sta_location_history", "location_id", "historical_location_id")),
))

HISTORICAL_LOCATIONS = Entity("HistoricalLocations", "HistoricalLocation", "sta_historical_locations", (
    _ID, _p("time", "{a}.time", TIME, True),
), (
    Nav("Thing", "Things", False, "{c}.id = {p}.thing_id", fk="thing_id", required=True),
    Nav("Locations", "Locations", True,
        "{c}.id IN (SELECT location_id FROM sta_location_history WHERE historical_location_id = {p}.id)",
        link=("sta_location_history", "historical_location_id", "location_id")),
))

SENSORS = Entity("Sensors", "Sensor", "sta_sensors", (
    _ID, _NAME, _DESC, _p("encodingType", "{a}.encoding_type", TEXT, True),
    _p("metadata", "{a}.metadata", TEXT, True), _PROPS,
), (
    Nav("Datastreams", "Datastreams", True, "{c}.sensor_id = {p}.id", back_fk="sensor_id"),
    Nav("MultiDatastreams", "MultiDatastreams", True, "{c}.sensor_id = {p}.id", back_fk="sensor_id"),
))

OBSERVED_PROPERTIES = Entity("ObservedProperties", "ObservedProperty", "sta_observed_properties", (
    _ID, _NAME, _p("definition", "{a}.definition", TEXT, True), _DESC, _PROPS,
), (
    Nav("Datastreams", "Datastreams", True, "{c}.observed_property_id = {p}.id", back_fk="observed_property_id"),
    Nav("MultiDatastreams", "MultiDatastreams", True,
        "{c}.id IN (SELECT multi_datastream_id FROM sta_multi_datastream_properties WHERE observed_property_id = {p}.id)",
        link=("sta_multi_datastream_properties", "observed_property_id", "multi_datastream_id")),
))

_STREAM_TIMES = (
    _p("observedArea", "{a}.observed_area", GEOMETRY, writable=False),
    _p("phenomenonTime", _STATS.format(col="s.phenomenon_time_start") + "|" + _STATS.format(col="s.phenomenon_time_end"),
       INTERVAL, writable=False),
    _p("resultTime", _STATS.format(col="s.result_time_start") + "|" + _STATS.format(col="s.result_time_end"),
       INTERVAL, writable=False),
)

DATASTREAMS = Entity("Datastreams", "Datastream", "sta_datastreams", (
    _ID, _NAME, _DESC, _p("observationType", "{a}.observation_type", TEXT, True),
    _p("unitOfMeasurement", "{a}.unit_of_measurement", JSON, True), *_STREAM_TIMES, _PROPS,
), (
    Nav("Thing", "Things", False, "{c}.id = {p}.thing_id", fk="thing_id", required=True),
    Nav("Sensor", "Sensors", False, "{c}.id = {p}.sensor_id", fk="sensor_id", required=True),
    Nav("ObservedProperty", "ObservedProperties", False, "{c}.id = {p}.observed_property_id",
        fk="observed_property_id", required=True),
    Nav("Observations", "Observations", True, "{c}.stream_id = {p}.id", back_fk="stream_id"),
))

MULTI_DATASTREAMS = Entity("MultiDatastreams", "MultiDatastream", "sta_multi_datastreams", (
    _ID, _NAME, _DESC, _p("observationType", "{a}.observation_type", TEXT),
    _p("multiObservationDataTypes", "{a}.multi_observation_data_types", TEXT_ARRAY, True),
    _p("unitOfMeasurements", "{a}.unit_of_measurements", JSON, True), *_STREAM_TIMES, _PROPS,
), (
    Nav("Thing", "Things", False, "{c}.id = {p}.thing_id", fk="thing_id", required=True),
    Nav("Sensor", "Sensors", False, "{c}.id = {p}.sensor_id", fk="sensor_id", required=True),
    Nav("ObservedProperties", "ObservedProperties", True,
        "{c}.id IN (SELECT observed_property_id FROM sta_multi_datastream_properties WHERE multi_datastream_id = {p}.id)",
        link=("sta_multi_datastream_properties", "multi_datastream_id", "observed_property_id"), required=True),
    Nav("Observations", "Observations", True, "{c}.stream_id = {p}.id", back_fk="stream_id"),
))

FEATURES_OF_INTEREST = Entity("FeaturesOfInterest", "FeatureOfInterest", "sta_features_of_interest", (
    _ID, _NAME, _DESC, _p("encodingType", "{a}.encoding_type", TEXT, True),
    _p("feature", "{a}.feature", GEOMETRY, True), _PROPS,
), (
    Nav("Observations", "Observations", True, "{c}.feature_of_interest_id = {p}.id", back_fk="feature_of_interest_id"),
))

#: An observation's result: the number when numeric, else the JSON value.
RESULT_SQL = "coalesce(to_jsonb({a}.result_number), {a}.result_json)"

OBSERVATIONS = Entity("Observations", "Observation", "sta_observations", (
    _ID,
    _p("phenomenonTime", "{a}.phenomenon_time_start|{a}.phenomenon_time_end", INTERVAL),
    _p("resultTime", "{a}.result_time", TIME),
    _p("result", RESULT_SQL, ANY, True),
    _p("resultQuality", "{a}.result_quality", JSON),
    _p("validTime", "{a}.valid_time_start|{a}.valid_time_end", INTERVAL),
    _p("parameters", "{a}.parameters", JSON),
), (
    Nav("Datastream", "Datastreams", False, "{c}.id = {p}.stream_id", fk="stream_id"),
    Nav("MultiDatastream", "MultiDatastreams", False, "{c}.id = {p}.stream_id", fk="stream_id"),
    Nav("FeatureOfInterest", "FeaturesOfInterest", False, "{c}.id = {p}.feature_of_interest_id",
        fk="feature_of_interest_id"),
))

ENTITIES: dict[str, Entity] = {e.set_name: e for e in (
    THINGS, LOCATIONS, HISTORICAL_LOCATIONS, DATASTREAMS, MULTI_DATASTREAMS, SENSORS,
    OBSERVED_PROPERTIES, OBSERVATIONS, FEATURES_OF_INTEREST)}
BY_SINGULAR: dict[str, Entity] = {e.singular: e for e in ENTITIES.values()}
