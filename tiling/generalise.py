"""Zoom generalisations for vector tiles: each feature version's geometry prepared ahead for the
low zooms of WebMercatorQuad, so that a tile at zooms 9–13 asks PostgreSQL for little more than an
index scan and the encoding (issue 15).

What is stored (``tile_generalisations``, migration 0013; one partition ``tilegen_<layer>`` per
layer): for every version (layer, vid) and every zoom of :data:`ZOOMS`, the version's
``geom_3857`` put by ``ST_AsMVTGeom`` (unclipped) on the grid of its *home tile* at that zoom — the tile holding the
centre of its bounding box: snapped to whole pixels, repeated and collinear vertices removed, made
valid by wagyu with the ring orientation MVT asks for, in that tile's coordinates (0…4096, y
down). A version that collapses below a pixel at a zoom has NULL there: dropped, as the exact path
drops it. The bounding box of ``geom_3857`` (the spatial index, so a tile reads the candidates the
exact path reads), the home tile and the version's fid, temporal columns and properties are copied
beside it, so a tile reads one table and joins nothing.

How a tile uses it (tiling/vector.py): at zoom z of 9…13 a feature whose home tile is the tile
and that lies inside its buffer is sent as stored — no transformation, clipping or validation per
request; any other is moved by whole tiles and clipped by ``ST_AsMVTGeom`` as usual. The tile is
then the exact path's but for a feature whose snapped form is repaired differently once clipped.
Zoom 14 and deeper always use the exact path (the store's ``geom_3857``), so their features are
the exact ones, and so do zooms below 9.

How it stays exact: a version's geometry never changes (the store only closes ranges and marks
versions superseded), so a version is generalised once; closed and superseded versions keep
theirs (they serve past dates), only their copied ``valid_to`` / ``superseded_at`` follow the
store. :func:`sync` brings a layer up to date in one REPEATABLE READ transaction — the versions
added since (``vid`` above the last one reflected: a layer's versions are numbered in commit
order, its writes being serialised) and the ranges closed since — and records the last changeset
it reflects in ``tile_generalised``. Every tile statement compares that with the layer's latest
changeset *in its own snapshot* and falls back to the exact path when they differ, so a tile is
never rendered from generalisations that miss a committed change, whoever made it and whether or
not this process heard of it. Syncs are run

- in the request path's background: the first tile of a layer at zooms 9–13, or a tile whose
  statement found the generalisations behind, queues the layer (one worker thread per process;
  a session advisory lock per layer keeps the server's workers from doing the same work twice);
- in the changeset event of this process (``spatial_api.events``, before the tile cache hears of
  it: the cache's invalidator subscribes later), for layers already generalised, when the
  changeset adds at most :data:`INLINE_MAX` versions — an API edit shows in the very next
  generalised tile; a larger changeset is queued for the background.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from dataclasses import dataclass

import psycopg
from psycopg import sql

from spatial_api import db, events, store

log = logging.getLogger(__name__)

#: the zooms prepared, each its own column (must match migration 0013's); tiles at other zooms use the
#: exact path. Below z9 a z9 geometry scaled down would be snapped twice and lose features of a
#: pixel or two that the exact path keeps; a column per zoom costs ~30% of the table.
ZOOMS = (9, 10, 11, 12, 13)
MAX_ZOOM = ZOOMS[-1]
#: bump when what is stored changes: every layer is then generalised anew on its next sync
RULES = 1
#: Douglas–Peucker tolerance before snapping, in pixels of each zoom (4096 per tile); 0: none (the
#: snapping already drops vertices closer than a pixel, and collinear ones). At 0.5 px it saved ~10%
#: of the vertices of the demo's land use (6.3 a polygon) and repaired slivers under a pixel wide
#: into other slivers up to 6 px away from the exact path's, or into nothing.
SIMPLIFY_PX = 0.0
EXTENT = 4096
#: half the side of the Web Mercator square (EPSG:3857 metres)
WORLD = 20037508.342789244
#: changesets adding at most this many versions are generalised in the event path itself
INLINE_MAX = 5_000
#: the ranges closed since the last sync are found through the fids of the new versions when there
#: are at most this many (index lookups), else by one scan of the layer's partition
FID_LOOKUP_MAX = 20_000
#: a layer is not queued again sooner than this after its last sync (seconds), nor sooner than
#: RETRY_AFTER after a failed one
REQUEUE_AFTER = 1.0
RETRY_AFTER = 60


def partition_name(layer: str) -> str:
    return f"tilegen_{store.check_layer_name(layer)}"


def covers(tms_id: str, z: int) -> bool:
    """Are tiles of this grid and zoom rendered from generalisations (when a layer has them)?"""
    return tms_id == "WebMercatorQuad" and ZOOMS[0] <= z <= MAX_ZOOM


def zoom_column(z: int) -> str:
    """The stored column a tile at zoom ``z`` reads."""
    return f"z{z}"


def pixel_size(z: int) -> float:
    """Web Mercator metres per tile pixel (1/4096 of a tile) at zoom ``z``."""
    return 2 * WORLD / (EXTENT << z)


@dataclass
class SyncResult:
    layer: str
    changeset: int  # the last changeset reflected
    added: int = 0  # versions generalised
    updated: int = 0  # versions whose copied ranges were brought up to date
    rebuilt: bool = False  # the partition was (re)built from scratch
    seconds: float = 0.0


def _insert_sql(target: str, layer: str, *, fresh: bool) -> sql.Composable:
    """INSERT … SELECT of the versions of ``layer`` above a vid (parameter) into ``target``. Fresh (a
    whole layer): rows in tile order, so that a tile's rows are near each other on disk; else
    returning the new versions' fids."""
    cells = 1 << MAX_ZOOM
    cell = sql.Literal(2 * WORLD / cells)
    zcols = sql.SQL(", ").join(sql.Identifier(f"z{z}") for z in ZOOMS)
    # each zoom: simplified, then ST_AsMVTGeom onto the home tile's grid at that zoom, unclipped
    def prepared(z: int) -> sql.Composable:
        home = sql.SQL("ST_TileEnvelope({z}, s.hx >> {k}, s.hy >> {k})").format(z=sql.Literal(z),
                                                                                 k=sql.Literal(MAX_ZOOM - z))
        exact = sql.SQL("ST_AsMVTGeom(s.geom_3857, {home}, {extent}, 0, false)").format(home=home, extent=extent)
        if not SIMPLIFY_PX:
            return exact
        # a sliver the simplification collapses keeps its unsimplified form
        return sql.SQL("coalesce(ST_AsMVTGeom(ST_Simplify(s.geom_3857, {tol}, true), {home}, {extent}, 0, false), "
                       "{exact})").format(tol=sql.Literal(SIMPLIFY_PX * pixel_size(z)), home=home, extent=extent,
                                          exact=exact)

    extent = sql.Literal(EXTENT)
    gen = sql.SQL(", ").join(prepared(z) for z in ZOOMS)
    return sql.SQL(
        """
        INSERT INTO {target} (layer, vid, fid, valid_from, valid_to, superseded_at, properties, bbox, hx, hy, {zcols})
        SELECT s.layer, s.vid, s.fid, s.valid_from, s.valid_to, s.superseded_at, s.properties, s.bbox, s.hx, s.hy, {gen}
        FROM (
            SELECT f.*, box(f.geom_3857) AS bbox,
                   least(greatest(floor(((ST_XMin(f.geom_3857) + ST_XMax(f.geom_3857)) / 2 + {w}) / {cell}), 0),
                         {last})::integer AS hx,
                   least(greatest(floor(({w} - (ST_YMin(f.geom_3857) + ST_YMax(f.geom_3857)) / 2) / {cell}), 0),
                         {last})::integer AS hy
            FROM {part} f WHERE f.layer = {layer} AND f.vid > %s
        ) s {tail}
        """).format(target=sql.Identifier(target), zcols=zcols, gen=gen, w=sql.Literal(WORLD), cell=cell,
                    last=sql.Literal(cells - 1), part=sql.Identifier(store.partition_name(layer)),
                    layer=sql.Literal(layer),
                    tail=sql.SQL("ORDER BY s.hy, s.hx, s.vid" if fresh else "RETURNING fid"))


def _lock_key(layer: str) -> str:
    return f"geotwin.tilegen.{layer}"


def sync(settings, layer: str, *, conn: psycopg.Connection | None = None) -> SyncResult | None:
    """Bring ``layer``'s generalisations up to its latest changeset (see the module docstring).
    Waits for another process syncing the same layer, then usually finds nothing left to do.
    Returns None for a layer without features or that does not exist."""
    own = conn is None
    if own:
        conn = db.connect(settings, autocommit=True)
    try:
        conn.autocommit = True
        # A session lock taken *before* the transaction: the snapshot must come after the lock, so
        # that the work of a sync we waited for is seen (and not done twice).
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (_lock_key(layer),))
        try:
            return _sync_locked(conn, layer)
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (_lock_key(layer),))
    finally:
        if own:
            conn.close()


def _sync_locked(conn: psycopg.Connection, layer: str) -> SyncResult | None:
    started = time.perf_counter()
    gen = partition_name(layer)
    part = sql.Identifier(store.partition_name(layer))
    saved = conn.isolation_level
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        with conn.transaction():
            latest = conn.execute("SELECT max(id) FROM changesets WHERE layer = %s", (layer,)).fetchone()[0]
            if latest is None or conn.execute("SELECT to_regclass(%s)", (store.partition_name(layer),)).fetchone()[0] is None:
                return None
            state = conn.execute("SELECT rules, through_changeset, through_vid FROM tile_generalised WHERE layer = %s",
                                 (layer,)).fetchone()
            exists = conn.execute("SELECT to_regclass(%s)", (gen,)).fetchone()[0] is not None
            result = SyncResult(layer, latest)
            if exists and state is not None and state[0] == RULES and state[1] == latest:
                return result  # already current
            if exists and state is not None and state[0] == RULES:
                through, old_vid = state[1], state[2]
                fids = [r[0] for r in conn.execute(_insert_sql(gen, layer, fresh=False), (old_vid,))]
                result.added = len(fids)
                result.updated = _close_ranges(conn, layer, gen, part, through, old_vid, fids)
            else:
                # first generalisation of the layer, or new rules: built from scratch
                result.rebuilt = True
                if exists:
                    conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(gen)))
                    result.added = conn.execute(_insert_sql(gen, layer, fresh=True), (0,)).rowcount
                else:
                    # filled before it is attached: the indexes are built once, over the whole table
                    conn.execute(sql.SQL("CREATE TABLE {} (LIKE tile_generalisations INCLUDING DEFAULTS, "
                                         "CHECK (layer = {}))").format(sql.Identifier(gen), sql.Literal(layer)))
                    result.added = conn.execute(_insert_sql(gen, layer, fresh=True), (0,)).rowcount
                    conn.execute(sql.SQL("ALTER TABLE tile_generalisations ATTACH PARTITION {} FOR VALUES IN ({})")
                                 .format(sql.Identifier(gen), sql.Literal(layer)))
                conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(gen)))
            top = conn.execute(sql.SQL("SELECT coalesce(max(vid), 0) FROM {} WHERE layer = %s").format(part),
                               (layer,)).fetchone()[0]
            result.seconds = time.perf_counter() - started
            conn.execute(
                """
                INSERT INTO tile_generalised (layer, rules, through_changeset, through_vid, versions, seconds)
                VALUES (%s, %s, %s, %s, %s, %s)
                ON CONFLICT (layer) DO UPDATE SET rules = excluded.rules,
                    through_changeset = excluded.through_changeset, through_vid = excluded.through_vid,
                    versions = CASE WHEN %s THEN excluded.versions
                                    ELSE tile_generalised.versions + excluded.versions END,
                    seconds = excluded.seconds, updated_at = now()
                """, (layer, RULES, latest, top, result.added, result.seconds, result.rebuilt))
        return result
    finally:
        conn.isolation_level = saved


def _close_ranges(conn, layer: str, gen: str, part: sql.Identifier, through: int, old_vid: int,
                  fids: list[str]) -> int:
    """Copy ``valid_to`` / ``superseded_at`` of the versions (vid ≤ old_vid) closed or superseded by
    the changesets after ``through``. When none of those changesets removed features, every such
    version shares its fid with a new version (a changed feature; a correction's re-derived copy), so
    the fids' index finds them; otherwise one scan of the partition does (``closed_by`` /
    ``superseded_by`` > through)."""
    removals = conn.execute(
        """
        SELECT count(*) FILTER (WHERE mode = 'delete' OR coalesce((counts ->> 'closed')::bigint, 0) > 0
                                     OR NOT (counts ? 'added' OR counts ? 'changed'))
        FROM changesets WHERE layer = %s AND id > %s
        """, (layer, through)).fetchone()[0]
    assign = sql.SQL("valid_to = f.valid_to, superseded_at = f.superseded_at")
    changed = sql.SQL("(g.valid_to IS DISTINCT FROM f.valid_to OR g.superseded_at IS DISTINCT FROM f.superseded_at)")
    if not removals and len(fids) <= FID_LOOKUP_MAX:
        if not fids:
            return 0
        return conn.execute(sql.SQL(
            """
            UPDATE {gen} g SET {assign}
            FROM {part} f
            WHERE f.layer = {layer} AND f.fid = ANY(%s) AND f.vid <= %s
              AND g.layer = {layer} AND g.vid = f.vid AND {changed}
            """).format(gen=sql.Identifier(gen), assign=assign, part=part, layer=sql.Literal(layer), changed=changed),
            (sorted(set(fids)), old_vid)).rowcount
    return conn.execute(sql.SQL(
        """
        UPDATE {gen} g SET {assign}
        FROM {part} f
        WHERE f.layer = {layer} AND (f.closed_by > %s OR f.superseded_by > %s) AND f.vid <= %s
          AND g.layer = {layer} AND g.vid = f.vid AND {changed}
        """).format(gen=sql.Identifier(gen), assign=assign, part=part, layer=sql.Literal(layer), changed=changed),
        (through, through, old_vid)).rowcount


def status(conn, layer: str) -> dict | None:
    """What ``tile_generalised`` records for ``layer``, and whether it reflects the latest changeset."""
    row = conn.execute(
        """
        SELECT s.rules, s.through_changeset, s.through_vid, s.versions, s.seconds, s.updated_at,
               (SELECT max(id) FROM changesets WHERE layer = s.layer)
        FROM tile_generalised s WHERE s.layer = %s
        """, (layer,)).fetchone()
    if row is None:
        return None
    return {"rules": row[0], "changeset": row[1], "vid": row[2], "versions": row[3], "seconds": row[4],
            "updated_at": row[5].isoformat() if row[5] else None, "current": row[0] == RULES and row[1] == row[6]}


# -- per process: which layers are generalised, the background worker, the changeset events ------


class Generaliser:
    """One per tile API (schema): knows which layers have generalisations, queues syncs for the
    background worker and applies small changesets in the event path."""

    def __init__(self, settings):
        self.settings = settings
        self.schema = settings.db_schema
        self.ready: set[str] = set()  # layers whose partition exists (from a sync of this process)
        self._last: dict[str, float] = {}  # layer -> monotonic time of its last sync request
        self._lock = threading.Lock()
        _live.add(self)

    def has(self, layer: str) -> bool:
        """Are there generalisations of ``layer`` to render from (the tile statement still checks
        that they are current)?"""
        return layer in self.ready

    def forget(self, layers) -> None:
        """These layers' generalisations could not be read: render them exactly until a sync has run."""
        with self._lock:
            self.ready.difference_update(layers)

    def wanted(self, layer: str) -> None:
        """A tile found ``layer`` without current generalisations: queue a sync (at most one pending
        per layer, not again within REQUEUE_AFTER seconds)."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(layer, -REQUEUE_AFTER) < REQUEUE_AFTER:
                return
            self._last[layer] = now
        _worker.submit(self, layer)

    def run(self, layer: str, conn=None) -> SyncResult | None:
        try:
            result = sync(self.settings, layer, conn=conn)
        except Exception:
            log.exception("tile generalisations of %s (schema %s) could not be brought up to date; tiles use "
                          "the exact path meanwhile (next try in %d s)", layer, self.schema, RETRY_AFTER)
            with self._lock:
                self._last[layer] = time.monotonic() + RETRY_AFTER
            return None
        with self._lock:
            if result is not None:
                self.ready.add(layer)
            self._last[layer] = time.monotonic()
        return result

    def on_changeset(self, layer: str, changeset_id: int | None) -> None:
        """A changeset of this process committed: generalise it now when small, else queue it."""
        if changeset_id is None or layer not in self.ready:
            return
        try:
            with db.connect(self.settings, autocommit=True) as conn:
                row = conn.execute(
                    sql.SQL("SELECT count(*) FROM {} WHERE layer = %s AND vid > coalesce("
                            "(SELECT through_vid FROM tile_generalised WHERE layer = %s), 0)").format(
                        sql.Identifier(store.partition_name(layer))), (layer, layer)).fetchone()
                if row[0] <= INLINE_MAX:
                    self.run(layer, conn)
                    return
        except Exception:
            log.exception("tile generalisations: changeset %s of %s", changeset_id, layer)
        self.wanted(layer)


_live: weakref.WeakSet[Generaliser] = weakref.WeakSet()


def _on_committed(schema: str, layer: str, changeset_id: int | None) -> None:
    for g in list(_live):
        if g.schema == schema and layer in g.ready:
            g.on_changeset(layer, changeset_id)
            return  # one sync per schema and layer: the other tile APIs of the schema read its result


# Subscribed at import, so before any tile cache's invalidator (which subscribes when it starts):
# a changeset's generalisations are made before the cache drops the tiles it touched.
events.subscribe(_on_committed)


class _Worker:
    """One daemon thread per process running queued syncs, one layer at a time."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._pending: set[tuple[int, str]] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, gen: Generaliser, layer: str) -> None:
        key = (id(gen), layer)
        with self._lock:
            if key in self._pending:
                return
            self._pending.add(key)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="tile-generaliser", daemon=True)
                self._thread.start()
        self._queue.put((weakref.ref(gen), layer, key))

    def _run(self) -> None:
        while True:
            ref, layer, key = self._queue.get()
            try:
                gen = ref()
                if gen is not None:
                    gen.run(layer)
            finally:
                with self._lock:
                    self._pending.discard(key)

    def idle(self) -> bool:
        with self._lock:
            return not self._pending


_worker = _Worker()


def wait_idle(timeout: float = 60.0) -> bool:
    """Wait until no sync is queued or running in this process (tests, benches)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _worker.idle():
            return True
        time.sleep(0.02)
    return False


__all__ = [
    "MAX_ZOOM",
    "RULES",
    "ZOOMS",
    "Generaliser",
    "SyncResult",
    "covers",
    "partition_name",
    "pixel_size",
    "status",
    "sync",
    "wait_idle",
    "zoom_column",
]
