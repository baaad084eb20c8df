"""Per-device baselines: how a household uses water by half-hour of the week.

A baseline is learned from the last 2–4 weeks of a water meter's volume readings (one reading per
half-hour slot, m³). For each of the 336 half-hours of the week (``slot``: Monday 00:00–00:30 in
the district's zone = 0 … Sunday 23:30 = 335) it keeps:

- ``weeks``: how many of the learning weeks have a reading in that slot, ``uses``: how many of
  them show use (volume > ``min_use``), ``p_use = uses / weeks``;
- ``mean``, ``q90`` (90th percentile, linear interpolation), ``max`` of the slot's volume.

What it decides ("unusual for this person", the ``baseline`` rule kind): a silence — consecutive
readings without use — is scored by the probability that this person, behaving as usual, would
have used no water in any of those slots: ``P = Π (1 - p̂)`` over the silent slots in which
the person used water at least once in the learning weeks, with the smoothed share
``p̂ = (uses + ½) / (weeks + 1)`` (never 0 or 1: four weeks of use at 07:00 make a silence at
07:00 unlikely, not impossible). Slots without any use in the learning weeks (the night, for
most) are no evidence at all — silence there is the person's habit — so a regular quiet night
never alerts, and a person without habits is left to the fixed 12-hour rule, while a missed
morning routine alerts within hours. The rule alerts when ``P < alpha`` (default 0.001) and the
silence lasted at least ``min_hours``.

The statistics exist twice on purpose: :func:`learn` computes them in SQL for every device at
once (set-based, ``percentile_cont``), :func:`slot_stats` in plain Python for one series — the
unit tests pin the statistics on synthetic series and an integration test proves both agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

SLOTS = 336
SLOT = timedelta(minutes=30)
DEFAULT_ALPHA = 0.001
#: The datastream (observed property) a water meter's volume is read from.
VOLUME = "用水量"


def district_zone():
    from spatial_api.api import time as timepolicy

    return timepolicy.zone()


def slot_of_week(t: datetime) -> int:
    """The half-hour of the week of ``t`` in the district's zone (as SQL ``sensing_slot_of_week``)."""
    if t.tzinfo is None:
        raise ValueError("slot_of_week needs an aware datetime")
    lt = t.astimezone(district_zone())
    return lt.weekday() * 48 + lt.hour * 2 + (1 if lt.minute >= 30 else 0)


def slot_start(t: datetime) -> datetime:
    """The start of the half-hour slot holding ``t``."""
    epoch = datetime(2000, 1, 1, tzinfo=timezone.utc)
    return epoch + ((t - epoch) // SLOT) * SLOT


@dataclass(frozen=True)
class SlotStats:
    weeks: int
    uses: int
    p_use: float
    mean: float
    q90: float
    max: float

    @property
    def p_smoothed(self) -> float:
        return smoothed(self.uses, self.weeks)

    @property
    def silence_log_p(self) -> float:
        """ln P(no use in this slot | the habit): 0 for a slot never used in the learning weeks."""
        return math.log(1.0 - self.p_smoothed) if self.uses > 0 else 0.0


def smoothed(uses: int, weeks: int) -> float:
    """The share of weeks with use, pulled towards ½ by half an observation: never 0 or 1."""
    return (uses + 0.5) / (weeks + 1.0)


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (PostgreSQL's ``percentile_cont``)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("quantile of nothing")
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def slot_stats(readings: Iterable[tuple[datetime, float]], *, min_use: float = 0.0) -> dict[int, SlotStats]:
    """Statistics per slot of the week from ``(time, volume)`` readings (several readings in one
    half-hour are summed first; a slot instance = one week's reading of that slot)."""
    per_instance: dict[datetime, float] = {}
    for t, v in readings:
        key = slot_start(t)
        per_instance[key] = per_instance.get(key, 0.0) + float(v)
    by_slot: dict[int, list[float]] = {}
    for t, v in per_instance.items():
        by_slot.setdefault(slot_of_week(t), []).append(v)
    out = {}
    for slot, vs in by_slot.items():
        uses = sum(1 for v in vs if v > min_use)
        out[slot] = SlotStats(weeks=len(vs), uses=uses, p_use=uses / len(vs), mean=sum(vs) / len(vs),
                              q90=quantile(vs, 0.9), max=max(vs))
    return out


def silence_log_probability(baseline: Mapping[int, SlotStats], slots: Iterable[int]) -> float:
    """ln P(no use in any of these slots | the person's habit) = Σ ln(1 - p̂) over the slots with
    use in the learning weeks; slots never used, or never seen, count as no evidence (0)."""
    total = 0.0
    for s in slots:
        st = baseline.get(s)
        if st is not None:
            total += st.silence_log_p
    return total


def unusual_silence_hours(baseline: Mapping[int, SlotStats], start: datetime, *, alpha: float = DEFAULT_ALPHA,
                          min_hours: float = 0.0, limit_hours: float = 7 * 24) -> float | None:
    """How long a silence beginning at ``start`` (the end of the last use) can last before it is
    unusual for this person: the hours until ``Π (1 - p̂) < alpha`` (at least ``min_hours``);
    None if it never becomes unusual within ``limit_hours`` (a baseline without use)."""
    t = slot_start(start)
    if t < start:
        t += SLOT
    log_alpha = math.log(alpha)
    total = 0.0
    n = 0
    while n * 0.5 <= limit_hours:
        st = baseline.get(slot_of_week(t))
        if st is not None:
            total += st.silence_log_p
        n += 1
        t += SLOT
        if total < log_alpha and n * 0.5 >= min_hours:
            return n * 0.5
    return None


def expected_use(baseline: Mapping[int, SlotStats], start: datetime, end: datetime) -> float:
    """The person's mean volume over the slots of [start, end) (m³)."""
    t = slot_start(start)
    total = 0.0
    while t < end:
        st = baseline.get(slot_of_week(t))
        if st is not None:
            total += st.mean
        t += SLOT
    return total


# --- the database side ---------------------------------------------------------------------------

_LEARN = """
WITH devs AS (
    SELECT DISTINCT ON (d.device_id) d.device_id, ds.id AS stream_id
    FROM sensing_devices d
    JOIN sta_datastreams ds ON ds.thing_id = d.thing_id
    JOIN sta_observed_properties op ON op.id = ds.observed_property_id
    WHERE d.retired_at IS NULL AND d.type = 'water-meter'
      AND (ds.name = %(prop)s OR op.name = %(prop)s)
      AND (%(ids)s::text[] IS NULL OR d.device_id = ANY(%(ids)s::text[]))
    ORDER BY d.device_id, ds.id
),
inst AS (   -- one value per slot instance (several readings in a half-hour are summed)
    SELECT v.device_id, date_bin('30 minutes', o.phenomenon_time_start, timestamptz '2000-01-01 00:00+00') AS t,
           sum(coalesce(o.result_number, 0)) AS vol
    FROM devs v
    JOIN sta_observations o ON o.stream_id = v.stream_id
    WHERE o.phenomenon_time_start >= %(t0)s AND o.phenomenon_time_start < %(t1)s
    GROUP BY 1, 2
),
covered AS (  -- devices with at least min_weeks of history in the window
    SELECT device_id FROM inst GROUP BY device_id
    HAVING max(t) - min(t) >= %(min_span)s::interval
),
stats AS (
    SELECT i.device_id, sensing_slot_of_week(i.t) AS slot, count(*) AS weeks,
           count(*) FILTER (WHERE i.vol > %(min_use)s) AS uses, avg(i.vol) AS mean,
           percentile_cont(0.9) WITHIN GROUP (ORDER BY i.vol) AS q90, max(i.vol) AS max
    FROM inst i JOIN covered c USING (device_id)
    GROUP BY 1, 2
)
INSERT INTO sensing_baselines AS b (device_id, slot, weeks, uses, p_use, mean, q90, max, learned_at)
SELECT device_id, slot, weeks, uses, uses::float8 / weeks, mean, q90, max, %(t1)s FROM stats
ON CONFLICT (device_id, slot) DO UPDATE SET
    weeks = excluded.weeks, uses = excluded.uses, p_use = excluded.p_use, mean = excluded.mean,
    q90 = excluded.q90, max = excluded.max, learned_at = excluded.learned_at
RETURNING device_id
"""


def learn(conn, device_ids: list[str] | None = None, *, weeks: int = 4, now: datetime | None = None,
          min_weeks: float = 2.0, min_use: float = 0.0) -> dict:
    """(Re)learn the baselines of water meters (``device_ids``, default all) from the ``weeks``
    weeks before ``now`` (default: the wall clock), whole slots. A device with less than
    ``min_weeks`` of history in that window keeps its previous baseline (or none). One statement
    for every device. Returns {"devices": n learned, "slots": rows, "window": [t0, t1]}."""
    if not 1 <= weeks <= 12:
        raise ValueError(f"weeks={weeks}: learn from 1 to 12 weeks of history (2–4 is the usual)")
    if now is None:
        now = conn.execute("SELECT now()").fetchone()[0]
    elif now.tzinfo is None:
        raise ValueError("now: give an aware datetime (naive times are ambiguous)")
    t1 = slot_start(now)
    t0 = t1 - timedelta(weeks=weeks)
    # "min_weeks of history": first and last slot at least (min_weeks weeks - one slot) apart
    min_span = timedelta(weeks=min_weeks) - SLOT
    with conn.transaction():
        learned = conn.execute(_LEARN, {"prop": VOLUME, "ids": list(device_ids) if device_ids is not None else None,
                                        "t0": t0, "t1": t1, "min_span": min_span, "min_use": min_use}).fetchall()
        devices = sorted({r[0] for r in learned})
        # slots of a relearned device that the new window did not see are dropped
        conn.execute("DELETE FROM sensing_baselines WHERE device_id = ANY(%s) AND learned_at <> %s", (devices, t1))
    return {"devices": len(devices), "slots": len(learned), "window": [t0, t1]}


def load(conn, device_id: str) -> dict[int, SlotStats]:
    """The stored baseline of one device ({} if none)."""
    rows = conn.execute("SELECT slot, weeks, uses, p_use, mean, q90, max FROM sensing_baselines WHERE device_id = %s",
                        (device_id,)).fetchall()
    return {r[0]: SlotStats(weeks=r[1], uses=r[2], p_use=r[3], mean=r[4], q90=r[5], max=r[6]) for r in rows}
