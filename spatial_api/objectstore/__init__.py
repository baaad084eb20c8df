"""Object storage: imagery COGs and 3D tilesets in an S3-compatible store (issue 18).

The local filesystem stays the default. A location is either a :class:`pathlib.Path` or an
:class:`ObjectPath` (``s3://bucket/key``); :func:`location` turns a catalogue string into the
right one, and :class:`ObjectPath` offers the part of ``Path``'s interface the writers use
(``/``, ``name``, ``parent``, ``exists``, ``stat``, ``read_bytes``, ``write_bytes``, ``unlink``,
``rglob`` …), so that code written for folders works on a bucket prefix. :func:`place` moves a
finished local file to its final location (``os.replace`` on disk, an upload then the local file
removed in a bucket).

Settings (MinIO-, SeaweedFS- and AWS-compatible)::

    GEOTWIN_S3_ENDPOINT   http://127.0.0.1:8333 (http:// → plain HTTP, https:// → TLS)
    GEOTWIN_S3_KEY        access key id
    GEOTWIN_S3_SECRET     secret access key
    GEOTWIN_S3_BUCKET     the default bucket (``--store s3`` writes there)
    GEOTWIN_S3_REGION     region for request signing (default us-east-1; MinIO / SeaweedFS accept any)

When GEOTWIN_S3_ENDPOINT is not set, the local server started by ``geotwin s3 up``
(:mod:`spatial_api.objectstore.server`) is used: its endpoint, bucket and credentials are in
``<home>/s3/server.json``.

The client is obstore (Rust ``object_store``: signed requests, multipart uploads, presigned
URLs). Rasterio / GDAL read ``s3://`` paths through ``/vsis3/`` with HTTP range requests;
:func:`gdal_options` gives the GDAL configuration (``AWS_S3_ENDPOINT``, ``AWS_HTTPS``,
``AWS_VIRTUAL_HOSTING=FALSE``, the credentials) and :func:`rasterio_env` a ``rasterio.Env``
with them.

Public API::

    from spatial_api import objectstore as obj
    obj.put("s3://geotwin/a/b.glb", data)      # bytes, or a local Path (uploaded, multipart when large)
    obj.get("s3://geotwin/a/b.glb"); obj.exists(uri); obj.head(uri); obj.delete(uri)
    obj.presign("s3://geotwin/a/b.glb", expires_s=600)   # a GET URL anyone can use until it expires
    obj.location("s3://geotwin/x") / "y.tif"   # ObjectPath; obj.location("/data/x") → Path
    with obj.rasterio_env(): rasterio.open("s3://geotwin/imagery/ortho/E2023.tif")
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import shutil
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

__all__ = [
    "ObjectPath", "ObjectStoreError", "S3Settings", "check", "copy", "delete", "exists",
    "gdal_environment", "gdal_options", "get", "head", "is_remote", "location", "place", "presign", "put", "rasterio_env",
    "s3_settings",
]

SCHEME = "s3://"
#: GDAL's settings for reading COGs over HTTP: no directory listing at open (no sidecar files to
#: look for), only .tif through curl, merged consecutive ranges, a per-file block cache.
GDAL_HTTP_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "VSI_CACHE": "TRUE",
}


class ObjectStoreError(RuntimeError):
    """The object store cannot be used as configured: the message names the setting to fix."""


# -- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    key: str
    secret: str
    bucket: str
    region: str = "us-east-1"
    source: str = "environment"  # where the settings came from (named in errors)

    @property
    def http(self) -> bool:
        return self.endpoint.lower().startswith("http://")

    @property
    def host(self) -> str:
        """host:port of the endpoint (GDAL's AWS_S3_ENDPOINT takes no scheme)."""
        return self.endpoint.split("://", 1)[-1].rstrip("/")


def _home() -> Path:
    from spatial_api.config import get_settings

    return get_settings().home


def server_file(home: Path | None = None) -> Path:
    """Where ``geotwin s3 up`` records its endpoint, bucket and credentials."""
    return (home or _home()) / "s3" / "server.json"


@lru_cache(maxsize=8)
def _read_server_file(path: str, mtime_ns: int) -> dict:
    return json.loads(Path(path).read_text())


def s3_settings(required: bool = True) -> S3Settings | None:
    """The object store's settings: GEOTWIN_S3_* when GEOTWIN_S3_ENDPOINT is set, else the local
    server's (``geotwin s3 up``). None (or, when ``required``, ObjectStoreError) when neither."""
    env = os.environ
    endpoint = env.get("GEOTWIN_S3_ENDPOINT")
    if endpoint:
        if not endpoint.lower().startswith(("http://", "https://")):
            raise ObjectStoreError(f"GEOTWIN_S3_ENDPOINT={endpoint!r}: give a URL, e.g. http://127.0.0.1:8333 "
                                   "(http:// for plain HTTP, https:// for TLS)")
        missing = [n for n in ("GEOTWIN_S3_KEY", "GEOTWIN_S3_SECRET") if not env.get(n)]
        if missing:
            raise ObjectStoreError(f"GEOTWIN_S3_ENDPOINT is set but {' and '.join(missing)} "
                                   f"{'is' if len(missing) == 1 else 'are'} not: give the access key id and "
                                   "secret of the object store")
        return S3Settings(endpoint.rstrip("/"), env["GEOTWIN_S3_KEY"], env["GEOTWIN_S3_SECRET"],
                          env.get("GEOTWIN_S3_BUCKET") or "geotwin", env.get("GEOTWIN_S3_REGION") or "us-east-1")
    path = server_file()
    try:
        info = _read_server_file(str(path), path.stat().st_mtime_ns)
    except (OSError, ValueError):
        if required:
            raise ObjectStoreError(
                "no object store is configured: set GEOTWIN_S3_ENDPOINT, GEOTWIN_S3_KEY, GEOTWIN_S3_SECRET and "
                "GEOTWIN_S3_BUCKET (any S3-compatible store: MinIO, SeaweedFS, AWS), or start the local one "
                "with `geotwin s3 up`") from None
        return None
    return S3Settings(info["endpoint"], info["key"], info["secret"],
                      os.environ.get("GEOTWIN_S3_BUCKET") or info["bucket"], info.get("region", "us-east-1"),
                      source=str(path))


@lru_cache(maxsize=8)
def _session_class():
    from rasterio.session import Session

    class StoreSession(Session):
        """A rasterio session giving GDAL the store's credentials and endpoint (rasterio refuses
        AWS_* keys in ``Env(**options)`` and its own AWSSession needs boto3)."""

        def __init__(self, s3: S3Settings):
            self._s3 = s3

        @classmethod
        def hascreds(cls, config) -> bool:
            return "AWS_ACCESS_KEY_ID" in config and "AWS_SECRET_ACCESS_KEY" in config

        @property
        def credentials(self) -> dict:
            return {"aws_access_key_id": self._s3.key, "aws_secret_access_key": self._s3.secret}

        def get_credential_options(self) -> dict:
            s3 = self._s3
            return {"AWS_ACCESS_KEY_ID": s3.key, "AWS_SECRET_ACCESS_KEY": s3.secret, "AWS_REGION": s3.region,
                    "AWS_S3_ENDPOINT": s3.host, "AWS_HTTPS": "NO" if s3.http else "YES",
                    "AWS_VIRTUAL_HOSTING": "FALSE"}

    return StoreSession


def gdal_options(s3: S3Settings | None = None) -> dict:
    """``rasterio.Env`` keyword arguments for reading ``s3://`` (``/vsis3/``) from the configured
    store — a ``session`` carrying the endpoint and credentials (AWS_S3_ENDPOINT, AWS_HTTPS,
    AWS_VIRTUAL_HOSTING=FALSE, the keys) and GDAL's HTTP options; {} when none is configured.
    TiTiler's ``environment_dependency`` takes it as is (``rasterio.Env(**options)``)."""
    if s3 is None:
        try:
            s3 = s3_settings(required=False)
        except ObjectStoreError:
            s3 = None
    if s3 is None:
        return {}
    return {"session": _session(s3), **GDAL_HTTP_OPTIONS}


def gdal_environment() -> dict:
    """:func:`gdal_options` of the configured store, with no parameters: TiTiler's
    ``environment_dependency`` (a FastAPI dependency: a parameter would become a query parameter)."""
    return gdal_options()


@lru_cache(maxsize=8)
def _session(s3: S3Settings):
    return _session_class()(s3)


def rasterio_env(**extra):
    """A ``rasterio.Env`` that reads ``s3://`` paths from the configured store (a plain Env when none)."""
    import rasterio

    return rasterio.Env(**gdal_options(), **extra)


# -- the client ---------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _store_for(bucket: str, s3: S3Settings):
    from obstore.store import S3Store

    return S3Store(bucket, endpoint=s3.endpoint, access_key_id=s3.key, secret_access_key=s3.secret,
                   region=s3.region, allow_http=s3.http, virtual_hosted_style_request=False,
                   client_options={"connect_timeout": "5s", "timeout": "300s"},
                   retry_config={"max_retries": 2, "backoff": {"max_backoff": timedelta(seconds=2)},
                                 "retry_timeout": timedelta(seconds=20)})


def _store(bucket: str):
    return _store_for(bucket, s3_settings())


def _explain(exc: Exception, what: str) -> ObjectStoreError:
    """An obstore error as a message naming the setting to fix."""
    s3 = s3_settings(required=False)
    text = str(exc)
    where = f"the object store at {s3.endpoint}" if s3 else "the object store"
    src = "" if s3 is None or s3.source == "environment" else f" (settings from {s3.source})"
    if any(k in text for k in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403")):
        return ObjectStoreError(f"{what}: {where} refused the credentials{src}: check GEOTWIN_S3_KEY and "
                                "GEOTWIN_S3_SECRET (the access key id and secret of a user allowed to read and write "
                                "the bucket)")
    if "NoSuchBucket" in text:
        return ObjectStoreError(f"{what}: {where} has no such bucket: create it, or set GEOTWIN_S3_BUCKET / the "
                                "store URI (s3://BUCKET/prefix) to an existing bucket")
    if any(k in text.lower() for k in ("connection refused", "error sending request", "connect", "timed out",
                                       "dns error")):
        return ObjectStoreError(f"{what}: cannot reach {where}{src}: check GEOTWIN_S3_ENDPOINT, or start the "
                                "local store with `geotwin s3 up`")
    return ObjectStoreError(f"{what}: {where} failed: {text.splitlines()[0][:300] if text else type(exc).__name__}")


def _split(uri) -> tuple[str, str]:
    p = uri if isinstance(uri, ObjectPath) else ObjectPath.parse(str(uri))
    return p.bucket, p.key


def put(uri, data: bytes | Path, *, content_type: str | None = None) -> dict:
    """Write an object: ``data`` bytes, or a local file (streamed, multipart when large). Returns
    its e_tag and size."""
    import obstore

    bucket, key = _split(uri)
    attrs = {"Content-Type": content_type} if content_type else None
    try:
        if isinstance(data, Path):
            res = obstore.put(_store(bucket), key, data, attributes=attrs)
            size = data.stat().st_size
        else:
            res = obstore.put(_store(bucket), key, bytes(data), attributes=attrs)
            size = len(data)
    except ObjectStoreError:
        raise
    except Exception as exc:
        raise _explain(exc, f"writing {SCHEME}{bucket}/{key}") from None
    return {"e_tag": res.get("e_tag"), "size": size}


def get(uri) -> bytes:
    import obstore

    bucket, key = _split(uri)
    try:
        return bytes(obstore.get(_store(bucket), key).bytes())
    except FileNotFoundError:
        raise
    except ObjectStoreError:
        raise
    except Exception as exc:
        raise _explain(exc, f"reading {SCHEME}{bucket}/{key}") from None


def get_with_meta(uri) -> tuple[bytes, dict]:
    """The object's bytes and its metadata (``e_tag``, ``size``, ``last_modified``) in one request."""
    import obstore

    bucket, key = _split(uri)
    try:
        res = obstore.get(_store(bucket), key)
        return bytes(res.bytes()), res.meta
    except (FileNotFoundError, ObjectStoreError):
        raise
    except Exception as exc:
        raise _explain(exc, f"reading {SCHEME}{bucket}/{key}") from None


def head(uri) -> dict | None:
    """The object's metadata (``size``, ``e_tag``, ``last_modified``), or None when there is no such object."""
    import obstore

    bucket, key = _split(uri)
    try:
        return obstore.head(_store(bucket), key)
    except FileNotFoundError:
        return None
    except ObjectStoreError:
        raise
    except Exception as exc:
        raise _explain(exc, f"looking up {SCHEME}{bucket}/{key}") from None


def exists(uri) -> bool:
    return head(uri) is not None


def delete(uri) -> None:
    """Remove an object (no error when it is not there)."""
    import obstore

    bucket, key = _split(uri)
    try:
        obstore.delete(_store(bucket), key)
    except FileNotFoundError:
        pass
    except ObjectStoreError:
        raise
    except Exception as exc:
        raise _explain(exc, f"deleting {SCHEME}{bucket}/{key}") from None


def copy(src, dst) -> None:
    """Server-side copy within one bucket."""
    import obstore

    sb, sk = _split(src)
    db_, dk = _split(dst)
    if sb != db_:
        put(dst, get(src))
        return
    try:
        obstore.copy(_store(sb), sk, dk)
    except ObjectStoreError:
        raise
    except Exception as exc:
        raise _explain(exc, f"copying {src} to {dst}") from None


def list_keys(prefix_uri) -> list[dict]:
    """The objects under a prefix (``s3://bucket/prefix``): dicts with ``path`` (the key), ``size``, ``e_tag``."""
    import obstore

    bucket, key = _split(prefix_uri)
    try:
        out = []
        for batch in obstore.list(_store(bucket), prefix=key or None):
            out.extend(batch)
        return out
    except ObjectStoreError:
        raise
    except Exception as exc:
        raise _explain(exc, f"listing {SCHEME}{bucket}/{key}") from None


def presign(uri, expires_s: int = 600, method: str = "GET") -> str:
    """A URL that ``method``s the object without credentials until it expires (``expires_s`` seconds)."""
    import obstore

    bucket, key = _split(uri)
    try:
        return obstore.sign(_store(bucket), method, key, timedelta(seconds=int(expires_s)))
    except ObjectStoreError:
        raise
    except Exception as exc:
        raise _explain(exc, f"signing a URL for {SCHEME}{bucket}/{key}") from None


def check(uri) -> None:
    """Can the store be reached, with these credentials, and has it the bucket of ``uri``? One
    listing request; raises ObjectStoreError naming the setting otherwise."""
    import obstore

    bucket, key = _split(uri)
    try:
        next(iter(obstore.list(_store(bucket), prefix=key or None, chunk_size=1)), None)
    except ObjectStoreError:
        raise
    except Exception as exc:
        raise _explain(exc, f"{SCHEME}{bucket}/{key}") from None


# -- locations ----------------------------------------------------------------------------------


def is_remote(value) -> bool:
    return isinstance(value, ObjectPath) or (isinstance(value, str) and value.startswith(SCHEME))


def location(value) -> Path | ObjectPath:
    """A catalogue / registry path as a location: ``s3://…`` → ObjectPath, anything else → Path."""
    if isinstance(value, (ObjectPath, Path)):
        return value
    text = str(value)
    return ObjectPath.parse(text) if text.startswith(SCHEME) else Path(text)


def place(tmp: Path, dest: Path | ObjectPath) -> None:
    """Move the finished local file ``tmp`` to ``dest``: ``os.replace`` on disk; in a bucket an
    upload (whole: an object appears only complete) and ``tmp`` removed."""
    if isinstance(dest, ObjectPath):
        put(dest, Path(tmp))
        Path(tmp).unlink(missing_ok=True)
    else:
        os.replace(tmp, dest)


def replace(src: Path | ObjectPath, dest: Path | ObjectPath) -> None:
    """``os.replace`` for either kind of location (in a bucket: server-side copy, then delete)."""
    if isinstance(dest, ObjectPath):
        if isinstance(src, ObjectPath):
            copy(src, dest)
            delete(src)
        else:
            place(src, dest)
    else:
        os.replace(src, dest)


@dataclass(frozen=True, eq=True)
class ObjectPath:
    """An object (or a key prefix) ``s3://bucket/key`` with the part of ``pathlib.Path``'s
    interface geotwin's writers use. ``str()`` is the URI (what the catalogue records and what
    rasterio opens through ``/vsis3/``). No ``__fspath__``: local file functions refuse it."""

    bucket: str
    key: str = ""

    @classmethod
    def parse(cls, uri: str) -> ObjectPath:
        if not uri.startswith(SCHEME):
            raise ObjectStoreError(f"{uri!r}: not an object store URI; give s3://BUCKET/prefix")
        bucket, _, key = uri[len(SCHEME):].partition("/")
        if not bucket:
            raise ObjectStoreError(f"{uri!r}: no bucket; give s3://BUCKET/prefix")
        return cls(bucket, _norm(key))

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}" if self.key else f"{SCHEME}{self.bucket}"

    def __truediv__(self, other) -> ObjectPath:
        return ObjectPath(self.bucket, _norm(posixpath.join(self.key, str(other))))

    def as_posix(self) -> str:
        return str(self)

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    @property
    def stem(self) -> str:
        name = self.name
        i = name.rfind(".")
        return name[:i] if i > 0 else name

    @property
    def suffix(self) -> str:
        name = self.name
        i = name.rfind(".")
        return name[i:] if i > 0 else ""

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.bucket, posixpath.dirname(self.key))

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    def resolve(self) -> ObjectPath:
        return self

    def expanduser(self) -> ObjectPath:
        return self

    def relative_to(self, other: ObjectPath) -> PurePosixKey:
        if not isinstance(other, ObjectPath) or other.bucket != self.bucket:
            raise ValueError(f"{self} is not under {other}")
        if other.key and not (self.key == other.key or self.key.startswith(other.key + "/")):
            raise ValueError(f"{self} is not under {other}")
        return PurePosixKey(self.key[len(other.key):].lstrip("/"))

    # -- the store

    def exists(self) -> bool:
        """An object of this key, or a prefix holding objects."""
        return head(self) is not None or self.is_dir()

    def is_file(self) -> bool:
        return head(self) is not None

    def is_dir(self) -> bool:
        """Is this a prefix with objects under it (a "folder")?"""
        if not self.key:
            return True
        import obstore

        try:
            return next(iter(obstore.list(_store(self.bucket), prefix=self.key + "/", chunk_size=1)), None) is not None
        except Exception as exc:
            raise _explain(exc, f"listing {self}") from None

    def stat(self) -> SimpleNamespace:
        meta = head(self)
        if meta is None:
            raise FileNotFoundError(str(self))
        modified = meta.get("last_modified")
        return SimpleNamespace(st_size=int(meta["size"]), e_tag=meta.get("e_tag"),
                               st_mtime_ns=int(modified.timestamp() * 1e9) if modified else 0)

    def read_bytes(self) -> bytes:
        return get(self)

    def write_bytes(self, data: bytes) -> int:
        put(self, data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        if not missing_ok and head(self) is None:
            raise FileNotFoundError(str(self))
        delete(self)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: a bucket has no folders, a key's prefix exists with its objects."""

    def rmdir(self) -> None:
        """Nothing to do (see mkdir)."""

    def rglob(self, pattern: str) -> Iterator[ObjectPath]:
        """The objects under this prefix whose name matches ``pattern`` (``*.glb``)."""
        for meta in list_keys(self):
            key = meta["path"]
            if self.key and not key.startswith(self.key + "/"):
                continue
            if fnmatch.fnmatch(posixpath.basename(key), pattern):
                yield ObjectPath(self.bucket, key)


class PurePosixKey(str):
    """A key relative to a prefix (what ``ObjectPath.relative_to`` returns), with ``as_posix``."""

    def as_posix(self) -> str:
        return str(self)


def _norm(key: str) -> str:
    key = key.replace("\\", "/").strip("/")
    if not key:
        return ""
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ObjectStoreError(f"{key!r}: '..' is not allowed in an object key")
    return "/".join(parts)


def local_staging(settings=None) -> Path:
    """A fresh local folder for files written before they are uploaded (under ``<home>/s3/staging``:
    the same disk as the rest of geotwin's state, not a small /tmp). The caller removes it."""
    import tempfile

    root = (settings.home if settings is not None else _home()) / "s3" / "staging"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="stage-", dir=root))


def remove_staging(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
