"""``geotwin sensing simulate``: live readings of the registered devices over MQTT, so that a demo
shows data — and alerts — arriving.

Every active device of the chosen types gets its readings at its type's interval (water meters:
the volume of each half-hour slot, published when the slot ends, with the slot as the
phenomenonTime interval; battery daily; manhole covers, hydrants hourly; traffic counters every
5 minutes), published with QoS 1 to ``v1.1/Datastreams(<id>)/Observations`` as STA JSON
``{"phenomenonTime", "result"}`` — exactly what a device sends; the ingestion worker
(``geotwin mqtt worker``) stores them and the alert rules run on each batch.

Values continue each device: a household's meter follows its habit (the demo's, kept in the
device's ``properties.habit``; any other meter gets one derived from its id — see
``data.sensing_demo``), other devices go on from their latest stored value (or the demo's
parameters) with noise and the daily rhythm of their kind.

Time: first the last ``--backfill`` hours are published as fast as ``--rate`` allows (the rules
look back 12–24 hours: without a backfill a demo would start with every household "silent"), then
readings follow the clock — or a faster one with ``--speed`` (simulated seconds per second; the
phenomenon times then run ahead of the wall clock). ``--rate`` caps the messages per second
throughout.

``--plant`` makes something happen to one device (``--device``, default the first of its type):
``inactivity`` — its meter shows no use from 13 h before the start (the backfill carries the
silence, the rules alert on the first batches); ``leak`` — use in every slot from 26 h before the
start; ``manhole-open`` — the cover is reported open (and tilted) right after the backfill.

Credentials: the broker URL / user of the settings (``GEOTWIN_MQTT_URL``; the local broker's
service user — :func:`sensing.mqtt.broker.endpoint`).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import threading
import time as _time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from enum import Enum

import typer

CST = timezone(timedelta(hours=8))
EPOCH = datetime(2000, 1, 1, tzinfo=CST)  # reading times are multiples of their interval from here
TOPIC = "v1.1/Datastreams({})/Observations"


class Plant(str, Enum):
    inactivity = "inactivity"
    leak = "leak"
    manhole_open = "manhole-open"


PLANT_TYPE = {Plant.inactivity: "water-meter", Plant.leak: "water-meter", Plant.manhole_open: "manhole-cover"}


class SimulatorError(RuntimeError):
    """Bad options or nothing to simulate; the message says what to do."""


@dataclass
class Stream:
    device_id: str
    type: str
    key: str
    datastream_id: int
    step: timedelta
    properties: dict
    last: float | bool | None      # the latest stored value (continuity), if any
    rng: object = None


@dataclass
class Stats:
    published: int = 0
    acked: int = 0
    backfilled: int = 0
    by_type: dict = field(default_factory=dict)
    first_time: datetime | None = None
    last_time: datetime | None = None
    planted: dict | None = None
    seconds: float = 0.0


def _seed_of(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def streams_of(conn, types: list[str] | None = None) -> list[Stream]:
    """The Datastreams of the active registered devices (of ``types``), with their latest values."""
    import numpy as np

    from sensing.devices import TYPES

    rows = conn.execute(
        """SELECT d.device_id, d.type, ds.properties ->> 'key', ds.id, d.properties,
                  st.last_result_number, st.last_result_json
           FROM sensing_devices d
           JOIN sta_datastreams ds ON ds.thing_id = d.thing_id
           LEFT JOIN sta_stream_stats st ON st.stream_id = ds.id
           WHERE d.retired_at IS NULL AND (%(types)s::text[] IS NULL OR d.type = ANY(%(types)s))
           ORDER BY d.device_id, ds.id""", {"types": types}).fetchall()
    out = []
    for device_id, dtype, key, ds_id, props, num, js in rows:
        t = TYPES.get(dtype)
        if t is None or key is None:
            continue
        step = t.expected_interval if key != "battery" else timedelta(days=1)
        last = num if num is not None else (js if isinstance(js, bool) else None)
        out.append(Stream(device_id, dtype, key, ds_id, step, props or {}, last,
                          np.random.default_rng(_seed_of(device_id, key))))
    return out


def _aligned_after(t: datetime, step: timedelta) -> datetime:
    """The first multiple of ``step`` (from EPOCH) at or after ``t``."""
    k = math.ceil((t - EPOCH) / step)
    return EPOCH + k * step


class Simulator:
    """Generates the readings; :meth:`run` publishes them."""

    def __init__(self, streams: list[Stream], *, start: datetime, plant: Plant | None = None,
                 plant_device: str | None = None, seed: int = 2024):
        if not streams:
            raise SimulatorError("no devices to simulate: register some (geotwin sensing devices add|import, "
                                 "or geotwin demo build) or widen --devices")
        self.streams = streams
        self.start = start
        self.seed = seed
        self._days: dict[tuple[str, date], object] = {}
        self.plant = plant
        self.plant_device = None
        self.plant_at = None
        if plant is not None:
            want = PLANT_TYPE[plant]
            candidates = sorted({s.device_id for s in streams if s.type == want})
            if plant_device is not None:
                if plant_device not in {s.device_id for s in streams}:
                    raise SimulatorError(f"--device {plant_device!r} is not among the simulated devices "
                                         f"(check the id and --devices)")
                if plant_device not in candidates:
                    raise SimulatorError(f"--plant {plant.value} needs a {want}; {plant_device!r} is not one")
                self.plant_device = plant_device
            elif candidates:
                self.plant_device = candidates[0]
            else:
                raise SimulatorError(f"--plant {plant.value} needs a {want} among the simulated devices "
                                     f"(add {want} to --devices)")
            self.plant_at = {Plant.inactivity: start - timedelta(hours=13), Plant.leak: start - timedelta(hours=26),
                             Plant.manhole_open: None}[plant]

    # -- values ---------------------------------------------------------------------------------
    def _meter_day(self, s: Stream, day: date):
        from data import sensing_demo

        key = (s.device_id, day)
        if key not in self._days:
            import numpy as np

            h = s.properties.get("habit") or sensing_demo.habit_of(s.device_id)
            rng = np.random.default_rng(_seed_of(self.seed, s.device_id, day.toordinal()))
            self._days[key] = sensing_demo.day_volumes(h, [day], rng)[0]
            if len(self._days) > 4096:
                self._days.pop(next(iter(self._days)))
        return self._days[key]

    def value(self, s: Stream, t: datetime, *, opened: bool = False):
        """The reading of stream ``s`` for time ``t`` (a meter: the slot starting at ``t``)."""
        rng = s.rng
        local = t.astimezone(CST)
        hour = local.hour + local.minute / 60
        planted = self.plant_device == s.device_id
        if s.key == "volume":
            v = float(self._meter_day(s, local.date())[local.hour * 2 + local.minute // 30])
            if planted and self.plant == Plant.inactivity and t >= self.plant_at:
                v = 0.0
            elif planted and self.plant == Plant.leak and t >= self.plant_at:
                v += float(rng.uniform(0.004, 0.009))
            return round(v, 3)
        if s.key == "battery":
            base = s.last if isinstance(s.last, (int, float)) else s.properties.get("battery0", 90.0)
            s.last = max(0.0, round(base - 0.05 + float(rng.normal(0, 0.2)), 1))
            return s.last
        if s.key == "tilt":
            if opened:
                return round(35 + float(rng.normal(0, 1.0)), 1)
            base = s.properties.get("tilt0", s.last if isinstance(s.last, (int, float)) and s.last < 10 else 1.0)
            return round(abs(base + float(rng.normal(0, 0.15))), 1)
        if s.key == "open":
            return bool(opened)
        if s.key == "water-level":
            base = s.properties.get("level0", 0.3)
            return round(max(0.0, base + float(rng.normal(0, 0.02))), 2)
        if s.key == "pressure":
            base = s.properties.get("pressure0", 0.35)
            dip = 0.04 * (math.exp(-((hour - 7.5) ** 2) / 2) + math.exp(-((hour - 19) ** 2) / 2))
            return round(base - dip + float(rng.normal(0, 0.008)), 3)
        if s.key == "count":
            peak = s.properties.get("peak_per_5min", 60)
            profile = (0.15 + math.exp(-((hour - 8.5) ** 2) / 1.5) + 0.9 * math.exp(-((hour - 18.5) ** 2) / 2.0)
                       + 0.5 * math.exp(-((hour - 13) ** 2) / 8))
            return int(rng.poisson(peak * profile / 1.15))
        v = s.last if isinstance(s.last, (int, float)) else 0.0
        return round(v + float(rng.normal(0, 0.01)), 3)

    def message(self, s: Stream, t: datetime, *, opened: bool = False) -> tuple[str, dict]:
        """(topic, payload) of the reading of ``s`` at ``t``."""
        if s.key == "volume":
            when = f"{t.astimezone(CST).isoformat()}/{(t + s.step).astimezone(CST).isoformat()}"
        else:
            when = t.astimezone(CST).isoformat()
        return TOPIC.format(s.datastream_id), {"phenomenonTime": when, "result": self.value(s, t, opened=opened)}

    def opened(self, s: Stream, t: datetime, live_from: datetime) -> bool:
        return (self.plant == Plant.manhole_open and s.device_id == self.plant_device and t >= live_from)

    # -- schedule ---------------------------------------------------------------------------------
    def schedule(self) -> list[tuple[datetime, int, datetime]]:
        """The heap of (publish time, stream index, reading time) of each stream's first reading."""
        heap = []
        for i, s in enumerate(self.streams):
            t = _aligned_after(self.start, s.step)
            publish = t + s.step if s.key == "volume" else t  # a slot's volume is known when it ends
            heap.append((publish, i, t))
        heapq.heapify(heap)
        return heap


def run(settings=None, *, rate: float = 200.0, duration: float | None = None, count: int | None = None,
        types: list[str] | None = None, backfill_hours: float = 24.0, speed: float = 1.0,
        plant: Plant | None = None, plant_device: str | None = None, stop: threading.Event | None = None,
        on_message: Callable[[str, dict], None] | None = None, seed: int = 2024, ack_timeout: float = 60.0,
        now: Callable[[], datetime] | None = None, backfill_only: bool = False) -> Stats:
    """Publish readings (see the module's docstring) until ``duration`` seconds, ``count`` messages,
    ``stop`` or — ``backfill_only`` — the backfill (and a planted reading) is out; waits for the
    broker's PUBACK of every message. Returns what was sent."""
    from sensing.devices import TYPES
    from sensing.mqtt import broker
    from spatial_api import db

    if rate <= 0:
        raise SimulatorError(f"--rate {rate}: give a positive number of readings per second")
    if speed <= 0:
        raise SimulatorError(f"--speed {speed}: give a positive factor (1 = real time)")
    if backfill_hours < 0 or backfill_hours > 24 * 31:
        raise SimulatorError(f"--backfill {backfill_hours}: give hours between 0 and 744")
    if types:
        bad = [t for t in types if t not in TYPES]
        if bad:
            raise SimulatorError(f"--devices {','.join(bad)}: unknown type; choose among {', '.join(TYPES)}")
    clock = now or (lambda: datetime.now(timezone.utc))
    with db.connect(settings) as conn:
        if conn.execute("SELECT to_regclass('sensing_devices') IS NULL").fetchone()[0]:
            raise SimulatorError("the database has no sensing tables: run `geotwin db up` (it migrates), then "
                                 "register devices or build the demo (`geotwin demo build`)")
        streams = streams_of(conn, types)
    wall0 = clock().replace(microsecond=0)
    sim = Simulator(streams, start=wall0 - timedelta(hours=backfill_hours), plant=plant, plant_device=plant_device,
                    seed=seed)
    stats = Stats(planted={"case": plant.value, "device": sim.plant_device} if plant else None)

    # PUBACKs counted (paho calls on_publish once per message, also after resending it on a
    # reconnect); never hold this condition while calling into paho (its thread calls back here)
    acks = threading.Condition()
    failures: list[str] = []

    def on_publish(client, userdata, mid, reason_code, properties):
        with acks:
            stats.acked += 1
            if getattr(reason_code, "is_failure", False):
                failures.append(str(reason_code))
            acks.notify_all()

    connected = threading.Event()
    refused: list[str] = []

    def on_connect(client, userdata, flags, reason_code, properties):
        if getattr(reason_code, "is_failure", False):
            refused.append(str(reason_code))
        connected.set()

    c = broker.client(settings, f"geotwin-simulator-{_seed_of(_time.time_ns()) % 10**8}")
    c.on_publish = on_publish
    c.on_connect = on_connect
    try:
        broker.connect(c)
    except OSError as exc:
        ep = broker.endpoint(settings)
        raise SimulatorError(f"cannot reach the MQTT broker at {ep.url}: {exc}. Start it with `geotwin mqtt up` "
                             "(or set GEOTWIN_MQTT_URL)") from None
    c.loop_start()
    try:
        if not connected.wait(30) or refused:
            raise SimulatorError(f"the MQTT broker refused the connection ({refused[0] if refused else 'no CONNACK'}); "
                                 "check the service user (`geotwin mqtt up` writes it) or GEOTWIN_MQTT_URL")
        heap = sim.schedule()
        t_start = _time.monotonic()
        next_send = t_start  # rate limit: message k goes at the earliest 1/rate after message k − 1
        live_from = wall0
        extra: list[tuple[int, datetime]] = []
        if plant == Plant.manhole_open:  # reported right after the backfill, at the start time
            extra = [(i, wall0) for i, s in enumerate(streams) if s.device_id == sim.plant_device
                     and s.key in ("open", "tilt")]
        while True:
            if stop is not None and stop.is_set():
                break
            if count is not None and stats.published >= count:
                break
            elapsed = _time.monotonic() - t_start
            if duration is not None and elapsed >= duration:
                break
            sim_now = wall0 + (clock() - wall0) * speed
            if extra and (not heap or heap[0][0] > wall0):
                i, t = extra.pop(0)
                item = (t, i, t)
            elif heap and heap[0][0] <= sim_now:
                item = heapq.heappop(heap)
                s = streams[item[1]]
                nxt = item[2] + s.step
                heapq.heappush(heap, (nxt + s.step if s.key == "volume" else nxt, item[1], nxt))
            elif backfill_only:
                break
            else:  # nothing due: wait for the next reading (or the end)
                wait = ((heap[0][0] - sim_now).total_seconds() / speed) if heap else 0.5
                limit = min(wait, 0.5)
                if duration is not None:
                    limit = min(limit, max(0.0, duration - elapsed))
                if stop is not None:
                    stop.wait(max(limit, 0.001))
                else:
                    _time.sleep(max(limit, 0.001))
                continue
            now_m = _time.monotonic()
            if next_send - now_m > 0.002:  # (small leads are let through: sleeps that short overshoot)
                _time.sleep(next_send - now_m)
            next_send = max(next_send, now_m) + 1.0 / rate
            s = streams[item[1]]
            topic, payload = sim.message(s, item[2], opened=sim.opened(s, item[2], live_from))
            c.publish(topic, json.dumps(payload, ensure_ascii=False), qos=1)
            stats.published += 1
            if item[0] <= wall0:
                stats.backfilled += 1
            stats.by_type[s.type] = stats.by_type.get(s.type, 0) + 1
            stats.first_time = stats.first_time or item[2]
            stats.last_time = item[2]
            if on_message:
                on_message(topic, payload)
        with acks:
            if not acks.wait_for(lambda: stats.acked >= stats.published, ack_timeout):
                raise SimulatorError(f"{stats.published - stats.acked} of {stats.published} readings not "
                                     f"acknowledged by the broker within {ack_timeout:.0f} s")
        if failures:
            raise SimulatorError(f"the broker refused {len(failures)} readings ({failures[0]}): does the user "
                                 "may publish to v1.1/# (the ACL)?")
        stats.seconds = round(_time.monotonic() - t_start, 2)
        return stats
    finally:
        c.disconnect()
        c.loop_stop()


def simulate(
    rate: float = typer.Option(200.0, "--rate", help="Readings per second at most (all devices together)."),
    duration: float = typer.Option(None, "--duration", help="Stop after this many seconds [default: until Ctrl-C "
                                                             "or --count]."),
    count: int = typer.Option(None, "--count", help="Stop after this many readings."),
    devices: str = typer.Option(None, "--devices", help="Device types to simulate, comma-separated "
                                                         "(water-meter,manhole-cover,hydrant-pressure,traffic-counter) "
                                                         "[default: all]."),
    backfill: float = typer.Option(24.0, "--backfill", help="Hours before now to publish first, as fast as --rate "
                                                             "allows (the rules look back 12–24 h)."),
    speed: float = typer.Option(1.0, "--speed", help="Simulated seconds per second after the backfill "
                                                      "(1 = the clock)."),
    plant: Plant = typer.Option(None, "--plant", help="Make something happen to one device: inactivity (a meter "
                                                      "silent for 13 h), leak (use in every slot for 26 h), "
                                                      "manhole-open (a cover opens now)."),
    device: str = typer.Option(None, "--device", help="The device of --plant [default: the first of its type]."),
    seed: int = typer.Option(2024, "--seed", help="Random seed of the households' days."),
    backfill_only: bool = typer.Option(False, "--backfill-only", help="Stop once the backfill (and a planted "
                                                                      "reading) is published."),
) -> None:
    """Publish live readings of the registered devices over MQTT (QoS 1, STA topics) so that a demo
    shows data and alerts arriving. Needs the broker (`geotwin mqtt up`) and, to store them, the
    worker (`geotwin mqtt worker`)."""
    import signal

    from rich.console import Console

    console, err = Console(), Console(stderr=True)
    types = [t.strip() for t in devices.split(",") if t.strip()] if devices else None
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    shown = [0.0]

    def progress(topic, payload):
        now_m = _time.monotonic()
        if now_m - shown[0] > 5:
            shown[0] = now_m
            console.print(f"  … {topic} {json.dumps(payload, ensure_ascii=False)}")

    try:
        stats = run(rate=rate, duration=duration, count=count, types=types, backfill_hours=backfill, speed=speed,
                    plant=plant, plant_device=device, stop=stop, on_message=progress, seed=seed,
                    backfill_only=backfill_only)
    except SimulatorError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1)
    except Exception as exc:
        import psycopg

        if isinstance(exc, psycopg.OperationalError):
            err.print(f"[bold red]error:[/] cannot reach the database: {exc}. Start it with `geotwin db up`.")
            raise typer.Exit(1)
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(stats.by_type.items()))
    console.print(f"[green]●[/] published {stats.published:,} readings ({stats.backfilled:,} backfilled; {kinds}) "
                  f"in {stats.seconds:.1f} s, all acknowledged"
                  + (f"; planted {stats.planted['case']} on {stats.planted['device']}" if stats.planted else ""))
