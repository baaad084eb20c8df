"""The tile cache: an in-process LRU bounded in bytes, plus an optional folder on disk, that is never
stale.

A tile is cached under (layers, grid, z, x, y, variant) — the variant is a digest of the request's
``datetime`` and ``properties``. When a changeset of a layer commits, the cache drops exactly the
cached tiles of that layer (at every zoom, every variant, alone or in a multi-layer tile) whose
area — the tile plus its 64/4096 buffer, the area the tile's SQL reads — intersects a geometry the
changeset added or ended (new and old versions). A change of the layer's registry entry (access
level, schema, tile options) drops all of the layer's tiles.

How a process hears of a change (see ``spatial_api.events``):

- edits made by this process (API transactions, in-process ingests) call ``events.committed``
  after their commit: the cache is invalidated before the HTTP response leaves;
- other processes' changesets (CLI ingests, other server workers) arrive through PostgreSQL
  ``LISTEN geotwin_changes`` on a dedicated connection. The listener first marks the layer as
  *changing* — from that moment its tiles bypass the cache — then works out the exact tiles and
  drops them. The window in which a stale tile could still be served is the NOTIFY delivery
  latency (well under a millisecond on one host), not the invalidation's work. If the listener
  loses its connection, every layer bypasses the cache until it has reconnected and caught up with
  the changesets it missed (by id), so nothing is missed across a PostgreSQL restart.
- The disk cache records the last changeset id it has processed; a server starting on an existing
  folder first catches up with everything committed since.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from psycopg import sql

from spatial_api import db, events, store
from tiling.vector import BUFFER, EXTENT, GRIDS, TMS

log = logging.getLogger(__name__)

#: A changeset touching more features than this drops the layer's whole cache instead of
#: working out the tiles one by one (a replace of a survey year touches most tiles anyway).
WHOLE_LAYER_ABOVE = 50_000


@dataclass(frozen=True, slots=True)
class TileKey:
    layers: tuple[str, ...]
    tms: str
    z: int
    x: int
    y: int
    variant: str  # digest of datetime + properties ("" for the plain current tile)

    def relpath(self, level: str) -> str:
        """Where the tile lives in the disk cache; the file name carries the access level of its
        layers, so a restarted server knows who may be served it without asking the database."""
        return f"{self.tms}/{','.join(self.layers)}/{self.z}/{self.x}/{self.y}-{self.variant or '0'}.{level}.mvt"

    @classmethod
    def from_relpath(cls, rel: str) -> tuple["TileKey", str]:
        tms, layers, z, x, tail = rel.split("/")
        stem, level = tail[:-4].rsplit(".", 1)
        y, variant = stem.split("-", 1)
        if level not in ("public", "internal", "restricted"):
            raise ValueError(rel)
        return cls(tuple(layers.split(",")), tms, int(z), int(x), int(y), "" if variant == "0" else variant), level


def variant(datetime_: str | None, properties: str | None) -> str:
    if not datetime_ and properties is None:
        return ""
    return hashlib.blake2b(f"{datetime_}|{properties}".encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Entry:
    body: bytes
    etag: str
    level: str = "public"  # the most restricted access level among the tile's layers


def etag_of(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


class TileCache:
    """LRU in memory (``max_bytes``) and, if ``disk_dir`` is given, a folder of tile files."""

    def __init__(self, max_bytes: int = 256 << 20, disk_dir: Path | None = None):
        self.max_bytes = max_bytes
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self._mem: OrderedDict[TileKey, Entry] = OrderedDict()
        self._mem_bytes = 0
        self._by_layer: dict[str, set[TileKey]] = {}  # memory and disk keys, per layer
        self._on_disk: dict[TileKey, str] = {}  # key → access level
        self._changing: dict[str, int] = {}  # layer → nesting count of invalidations under way
        self._all_changing = 0  # the listener is disconnected: nothing may be trusted
        self._generations: dict[str, int] = {}
        self._global_gen = 0
        self._lock = threading.RLock()
        self.hits = self.misses = self.dropped = 0
        if self.disk_dir:
            self.disk_dir.mkdir(parents=True, exist_ok=True)
            for path in self.disk_dir.rglob("*.mvt"):
                try:
                    key, level = TileKey.from_relpath(path.relative_to(self.disk_dir).as_posix())
                except ValueError:
                    continue
                self._on_disk[key] = level
                self._index(key)

    # -- lookups ------------------------------------------------------------------------------

    def usable(self, layers: tuple[str, ...]) -> bool:
        if self._all_changing:
            return False
        return not any(layer in self._changing for layer in layers)

    def get(self, key: TileKey) -> Entry | None:
        if not self.usable(key.layers):
            return None
        with self._lock:
            entry = self._mem.get(key)
            if entry is not None:
                self._mem.move_to_end(key)
                self.hits += 1
                return entry
            level = self._on_disk.get(key)
        if level is not None:
            try:
                body = (self.disk_dir / key.relpath(level)).read_bytes()
            except FileNotFoundError:
                body = None
            if body is not None and self.usable(key.layers):
                entry = Entry(body, etag_of(body), level)
                self._remember(key, entry)
                self.hits += 1
                return entry
        self.misses += 1
        return None

    def put(self, key: TileKey, body: bytes, *, generation: int, level: str = "public") -> Entry:
        """Cache a tile rendered while the cache was at ``generation`` (see :meth:`generation`):
        if an invalidation of one of its layers started since, the tile is returned but not kept."""
        entry = Entry(body, etag_of(body), level)
        with self._lock:
            if generation != self.generation(key.layers) or not self.usable(key.layers):
                return entry
            self._remember(key, entry)
            if self.disk_dir:
                path = self.disk_dir / key.relpath(level)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
                tmp.write_bytes(body)
                os.replace(tmp, path)
                self._on_disk[key] = level
        return entry

    def _remember(self, key: TileKey, entry: Entry) -> None:
        with self._lock:
            old = self._mem.pop(key, None)
            if old is not None:
                self._mem_bytes -= len(old.body)
            self._mem[key] = entry
            self._mem_bytes += len(entry.body)
            self._index(key)
            while self._mem_bytes > self.max_bytes and self._mem:
                k, e = self._mem.popitem(last=False)
                self._mem_bytes -= len(e.body)
                if k not in self._on_disk:
                    self._unindex(k)

    def _index(self, key: TileKey) -> None:
        for layer in key.layers:
            self._by_layer.setdefault(layer, set()).add(key)

    def _unindex(self, key: TileKey) -> None:
        for layer in key.layers:
            keys = self._by_layer.get(layer)
            if keys is not None:
                keys.discard(key)

    # -- generations: a render that raced an invalidation is not cached -----------------------

    def generation(self, layers: tuple[str, ...]) -> int:
        """Take before rendering a tile; pass to :meth:`put`."""
        return sum(self._generations.get(layer, 0) for layer in layers) + self._global_gen

    def _bump(self, layer: str | None) -> None:
        if layer is None:
            self._global_gen += 1
        else:
            self._generations[layer] = self._generations.get(layer, 0) + 1

    # -- invalidation -------------------------------------------------------------------------

    def begin_change(self, layer: str | None) -> None:
        """From now on, tiles of ``layer`` (``None``: every layer) bypass the cache."""
        with self._lock:
            if layer is None:
                self._all_changing += 1
            else:
                self._changing[layer] = self._changing.get(layer, 0) + 1
            self._bump(layer)

    def end_change(self, layer: str | None) -> None:
        with self._lock:
            if layer is None:
                self._all_changing = max(0, self._all_changing - 1)
            else:
                n = self._changing.get(layer, 0) - 1
                if n <= 0:
                    self._changing.pop(layer, None)
                else:
                    self._changing[layer] = n

    def keys_of(self, layer: str) -> list[TileKey]:
        with self._lock:
            return list(self._by_layer.get(layer, ()))

    def drop(self, keys) -> int:
        n = 0
        with self._lock:
            for key in keys:
                entry = self._mem.pop(key, None)
                if entry is not None:
                    self._mem_bytes -= len(entry.body)
                level = self._on_disk.pop(key, None)
                on_disk = level is not None
                if on_disk:
                    try:
                        (self.disk_dir / key.relpath(level)).unlink()
                    except FileNotFoundError:
                        pass
                if entry is not None or on_disk:
                    n += 1
                self._unindex(key)
            self.dropped += n
        return n

    def drop_layer(self, layer: str) -> int:
        return self.drop(self.keys_of(layer))

    def drop_touching(self, layer: str, geoms: dict[str, np.ndarray]) -> int:
        """Drop the cached tiles of ``layer`` whose buffered area intersects one of ``geoms``
        (shapely geometries per grid: {"WebMercatorQuad": [...], "CGCS2000Quad": [...]})."""
        keys = self.keys_of(layer)
        doomed: list[TileKey] = []
        for tms_id in GRIDS:
            mine = [k for k in keys if k.tms == tms_id]
            changed = geoms.get(tms_id)
            if not mine or changed is None or not len(changed):
                continue
            tms = TMS.get(tms_id)
            boxes = []
            for k in mine:
                b = tms.xy_bounds(k.x, k.y, k.z)
                m = (b.right - b.left) * BUFFER / EXTENT
                boxes.append((b.left - m, b.bottom - m, b.right + m, b.top + m))
            envelopes = shapely.box(*np.asarray(boxes).T)
            tree = shapely.STRtree(changed)
            hit = np.unique(tree.query(envelopes, predicate="intersects")[0])
            doomed += [mine[i] for i in hit]
        return self.drop(doomed)

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._mem), "bytes": self._mem_bytes, "on_disk": len(self._on_disk),
                    "hits": self.hits, "misses": self.misses, "dropped": self.dropped}


class Invalidator:
    """Applies committed changesets of one schema to a :class:`TileCache`: in-process events and
    PostgreSQL notifications, with catch-up by changeset id after a disconnection."""

    def __init__(self, cache: TileCache, settings):
        self.cache = cache
        self.settings = settings
        self.schema = settings.db_schema
        self._done: set[int] = set()
        self._inflight: dict[int, threading.Event] = {}
        self._work = None  # connection for the invalidation's reads (not the LISTEN one)
        self._work_lock = threading.Lock()
        self._high = 0  # every changeset id ≤ this has been applied
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.connected = threading.Event()

    # -- state of the disk cache --------------------------------------------------------------

    def _state_path(self) -> Path | None:
        return self.cache.disk_dir / "state.json" if self.cache.disk_dir else None

    def _save_high(self) -> None:
        path = self._state_path()
        if path is not None:
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"schema": self.schema, "last_changeset": self._high}))
            os.replace(tmp, path)

    def _load_high(self) -> int | None:
        path = self._state_path()
        if path is None or not path.exists():
            return None
        try:
            state = json.loads(path.read_text())
            return int(state["last_changeset"]) if state.get("schema") == self.schema else None
        except (ValueError, KeyError):
            return None

    # -- applying -----------------------------------------------------------------------------

    def on_event(self, schema: str, layer: str, changeset_id: int | None, conn=None) -> None:
        """Apply one change. The same changeset is heard twice (in-process event, then NOTIFY):
        the second hearer waits for the first to finish instead of working again, so when an
        API edit's response leaves, its invalidation is complete whoever did it."""
        if schema != self.schema:
            return
        if changeset_id is not None:
            with self._lock:
                if changeset_id <= self._high or changeset_id in self._done:
                    return
                running = self._inflight.get(changeset_id)
                if running is None:
                    self._inflight[changeset_id] = threading.Event()
            if running is not None:
                running.wait(timeout=30)
                return
        self.cache.begin_change(layer)
        try:
            if changeset_id is None:
                self.cache.drop_layer(layer)
            else:
                self.apply(layer, changeset_id, conn)
        finally:
            self.cache.end_change(layer)
            if changeset_id is not None:
                with self._lock:
                    done = self._inflight.pop(changeset_id, None)
                if done is not None:
                    done.set()

    def applied(self, changeset_id: int) -> bool:
        with self._lock:
            return changeset_id <= self._high or changeset_id in self._done

    def apply(self, layer: str, changeset_id: int, conn=None) -> None:
        with self._lock:
            if changeset_id <= self._high or changeset_id in self._done:
                return
        if self.cache.keys_of(layer):
            self._drop_for(layer, changeset_id, conn)
        with self._lock:
            self._done.add(changeset_id)
            while self._high + 1 in self._done:
                self._high += 1
                self._done.discard(self._high)
        self._save_high()

    def _query(self, conn, query, params) -> list:
        """Run a read on ``conn`` or, without one, on the invalidator's own work connection (kept
        open: a new connection per changeset would cost more than the invalidation itself)."""
        if conn is not None:
            return conn.execute(query, params).fetchall()
        with self._work_lock:
            for attempt in (1, 2):
                if self._work is None or self._work.closed:
                    self._work = db.connect(self.settings, autocommit=True)
                try:
                    return self._work.execute(query, params).fetchall()
                except Exception:
                    if attempt == 2:
                        raise
                    try:
                        self._work.close()
                    except Exception:
                        pass
                    self._work = None
        return []

    def _drop_for(self, layer: str, changeset_id: int, conn=None) -> None:
        part = sql.Identifier(store.partition_name(layer))
        try:
            n = self._query(conn, sql.SQL("SELECT count(*) FROM {} WHERE changeset_id = %s OR closed_by = %s "
                                             "OR superseded_by = %s").format(part),
                            (changeset_id, changeset_id, changeset_id))[0][0]
            if n > WHOLE_LAYER_ABOVE:
                self.cache.drop_layer(layer)
                return
            rows = self._query(conn, sql.SQL(
                "SELECT ST_AsBinary(geom_3857), ST_AsBinary(geom) FROM {} "
                "WHERE changeset_id = %s OR closed_by = %s OR superseded_by = %s").format(part),
                (changeset_id, changeset_id, changeset_id))
        except Exception:  # the layer's partition is gone, or a bug: never keep a tile we cannot vouch for
            log.exception("tile cache: could not read changeset %s of %s; dropping the layer's tiles",
                          changeset_id, layer)
            self.cache.drop_layer(layer)
            return
        if not rows:
            return
        wm = shapely.from_wkb([bytes(r[0]) for r in rows])
        geo = shapely.from_wkb([bytes(r[1]) for r in rows])
        self.cache.drop_touching(layer, {"WebMercatorQuad": wm, "CGCS2000Quad": geo})

    def catch_up(self, conn) -> None:
        """Apply every changeset committed after the last one applied."""
        rows = conn.execute("SELECT id, layer FROM changesets WHERE id > %s ORDER BY id", (self._high,)).fetchall()
        for cs_id, layer in rows:
            self.cache.begin_change(layer)
            try:
                self.apply(layer, cs_id, conn)
            finally:
                self.cache.end_change(layer)

    # -- the listener thread ------------------------------------------------------------------

    def start(self) -> None:
        """Start listening (idempotent). Returns once the first connection is made and the cache
        has caught up, so that nothing committed before is missed."""
        if self._thread is not None:
            return
        events.subscribe(self.on_event)
        conn = self._listen()
        saved = self._load_high()
        if saved is None:
            saved = conn.execute("SELECT coalesce(max(id), 0) FROM changesets").fetchone()[0]
            if self.cache.disk_dir and any(self.cache._on_disk):
                # A disk cache of unknown age: nothing in it can be vouched for.
                self.cache.drop(list(self.cache._on_disk))
        self._high = saved
        self.catch_up(conn)
        self._save_high()
        self.connected.set()
        self._thread = threading.Thread(target=self._run, args=(conn,), name="tile-cache-listener", daemon=True)
        self._thread.start()

    def _listen(self):
        conn = db.connect(self.settings, autocommit=True)
        conn.execute("SET application_name = 'geotwin-tile-listener'")
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(events.CHANNEL)))
        return conn

    def stop(self) -> None:
        """Stop hearing of changes (the cache is then no longer vouched for: used at shutdown)."""
        self._stop.set()
        events.unsubscribe(self.on_event)
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._work_lock:
            if self._work is not None:
                self._work.close()
                self._work = None

    def _run(self, conn) -> None:
        while not self._stop.is_set():
            try:
                for note in conn.notifies(timeout=0.5):
                    if self._stop.is_set():
                        break
                    self._notified(note.payload)
                conn.execute("SELECT 1")  # notice a dead connection between notifications
            except Exception as exc:
                log.warning("tile cache listener lost its connection (%s); bypassing the cache until it is back", exc)
                self.connected.clear()
                self.cache.begin_change(None)
                try:
                    conn.close()
                except Exception:
                    pass
                while not self._stop.is_set():
                    try:
                        conn = self._listen()
                        self.catch_up(conn)
                        break
                    except Exception:
                        time.sleep(0.5)
                self.connected.set()
                self.cache.end_change(None)
        try:
            conn.close()
        except Exception:
            pass

    def _notified(self, payload: str) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        if msg.get("schema") != self.schema:
            return
        self.on_event(self.schema, msg["layer"], msg.get("changeset"))
