"""cluster.toml: the documented example loads as written; wrong [s3] settings are refused with the
file, the key and what to write; the object store's settings reach the processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from topology.config import TopologyError, load
from topology.control import Controller

ROOT = Path(__file__).resolve().parents[2]

BASE = """
[postgres.primary]
port = 25501
[[api.replicas]]
port = 25601
[nginx]
port = 25600
"""


def _load(tmp_path: Path, extra: str):
    f = tmp_path / "cluster.toml"
    f.write_text(BASE + extra)
    return load(f)


def test_the_example_file_loads_with_every_role():
    topo = load(ROOT / "cluster.example.toml")
    assert [r.name for r in topo.replicas] == ["replica1"] and len(topo.apis) == 2 and topo.broker
    assert topo.s3_server and topo.s3_server.port == 18333 and topo.s3 == {"bucket": "geotwin"}
    assert topo.s3_server in topo.all()


@pytest.mark.parametrize("s3, message", [
    ('port = 18333\nendpoint = "http://minio:9000"', "keep one"),
    ("port = 60000", "choose a port ≤ 55531"),
    ('bucket = "x"', "needs port"),
    ('port = "18333"', "is not a port number"),
])
def test_wrong_object_store_settings_are_named(tmp_path, s3, message):
    with pytest.raises(TopologyError, match=message) as err:
        _load(tmp_path, f"[s3]\n{s3}\n")
    assert "cluster.toml" in str(err.value)


def test_the_object_stores_ports_may_not_clash_with_another_role(tmp_path):
    # the store on 25598 takes 25598 … 25602: the nginx and API ports among them
    with pytest.raises(TopologyError, match="share a host and port"):
        _load(tmp_path, "[s3]\nport = 25598\n")
    with pytest.raises(TopologyError, match="share a host and port"):  # its gRPC ports too
        _load(tmp_path, "[s3]\nport = 15599\n")


def test_an_external_store_is_handed_through_and_none_is_started(tmp_path):
    topo = _load(tmp_path, '[s3]\nendpoint = "http://minio.example:9000"\nbucket = "twin"\n')
    ctl = Controller(topo, echo=lambda *_: None)
    assert topo.s3_server is None and ctl.s3 is None and ctl.s3_env() == {}
    assert topo.s3 == {"endpoint": "http://minio.example:9000", "bucket": "twin"}  # → GEOTWIN_S3_ENDPOINT, _BUCKET


def test_a_store_not_yet_started_or_on_another_machine_needs_its_credentials(tmp_path, monkeypatch):
    ctl = Controller(_load(tmp_path, "[s3]\nport = 18333\n"), echo=lambda *_: None)
    with pytest.raises(TopologyError, match="run `geotwin cluster up` first"):
        ctl.s3_env()
    monkeypatch.delenv("GEOTWIN_S3_KEY", raising=False)
    monkeypatch.delenv("GEOTWIN_S3_SECRET", raising=False)
    remote = Controller(_load(tmp_path, '[s3]\nhost = "10.20.0.9"\nport = 18333\n'), echo=lambda *_: None)
    with pytest.raises(TopologyError, match="set GEOTWIN_S3_KEY and GEOTWIN_S3_SECRET"):
        remote.s3_env()
    monkeypatch.setenv("GEOTWIN_S3_KEY", "k")
    monkeypatch.setenv("GEOTWIN_S3_SECRET", "s")
    assert remote.s3_env() == {"GEOTWIN_S3_ENDPOINT": "http://10.20.0.9:18333", "GEOTWIN_S3_KEY": "k",
                               "GEOTWIN_S3_SECRET": "s", "GEOTWIN_S3_BUCKET": "geotwin",
                               "GEOTWIN_S3_REGION": "us-east-1"}
