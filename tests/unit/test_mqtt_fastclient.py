"""The batched MQTT client of the ingestion worker (sensing/mqtt/fastclient.py) and the worker's
direct notification JSON: packets as paho encodes and decodes them, split anywhere across reads."""

from __future__ import annotations

import json
import socket
import struct
import time
from datetime import datetime, timedelta, timezone

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sensing.mqtt import worker as w
from sensing.mqtt.fastclient import RAW_MID_FIRST, BatchClient, user_property, varint


def _client() -> BatchClient:
    return BatchClient(mqtt.CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5, manual_ack=True)


def _paho_publish(topic: str, payload: bytes, qos: int, mid: int, props: Properties | None = None,
                  dup: bool = False) -> bytes:
    """A PUBLISH packet as paho itself writes it (its encoder, on a socket pair)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="p", protocol=mqtt.MQTTv5)
    a, b = socket.socketpair()
    try:
        c._sock = a
        if qos:
            c._send_publish(mid, topic.encode(), payload, qos, False, dup, properties=props)
        else:
            c.publish(topic, payload, 0, properties=props)
        c.loop_write()
        b.setblocking(False)
        return b.recv(1 << 20)
    finally:
        c._sock = None
        a.close()
        b.close()


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """(first byte, body) of each packet in ``data``."""
    out, pos = [], 0
    while pos < len(data):
        cmd, length, shift, i = data[pos], 0, 0, pos + 1
        while True:
            byte = data[i]
            i += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        out.append((cmd, data[i:i + length]))
        pos = i + length
    return out


def test_varint_matches_the_standard_examples():
    # MQTT 5 §1.5.5: the boundaries of 1, 2, 3 and 4 bytes
    assert varint(0) == b"\x00" and varint(127) == b"\x7f"
    assert varint(128) == b"\x80\x01" and varint(16383) == b"\xff\x7f"
    assert varint(16384) == b"\x80\x80\x01" and varint(2097151) == b"\xff\xff\x7f"
    assert varint(2097152) == b"\x80\x80\x80\x01" and varint(268435455) == b"\xff\xff\xff\x7f"


@pytest.mark.parametrize("size", [10, 200, 20000])  # remaining length in 1, 2 and 3 bytes
def test_read_path_gives_every_publish_whole_however_the_stream_is_split(size):
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("geotwin", "notification")]
    payload = b"x" * size
    stream = b"".join([
        _paho_publish("v1.1/Datastreams(7)/Observations", payload, 1, 17),
        _paho_publish("v1.1/Datastreams(8)/Observations", b'{"result": 1}', 0, 0),
        _paho_publish("v1.1/Datastreams(9)/Observations", b"{}", 1, 65535, props, dup=True),
        b"\xd0\x00",  # PINGRESP: paho's own handler
    ])
    for step in (1, 3, 7, len(stream)):
        c = _client()
        got: list = []
        c.on_publish_packet = lambda *a, got=got: got.append(a)
        c._ping_t = 123.0
        buf = bytearray()
        for i in range(0, len(stream), step):
            buf += stream[i:i + step]
            rc, used = c._parse(buf)
            assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS
            del buf[:used]
        assert not buf, f"step {step}: {len(buf)} bytes left unparsed"
        assert [(m, q, d, t) for m, q, d, t, _, _ in got] == [
            (17, 1, False, b"v1.1/Datastreams(7)/Observations"),
            (0, 0, False, b"v1.1/Datastreams(8)/Observations"),
            (65535, 1, True, b"v1.1/Datastreams(9)/Observations")], f"step {step}"
        assert got[0][5] == payload and got[1][5] == b'{"result": 1}' and got[2][5] == b"{}"
        assert got[0][4] == b"" and w.NOTIFY_BYTES in got[2][4]
        assert c._ping_t == 0, "PINGRESP reached paho's handler"


def test_a_connection_closed_by_a_callback_ends_the_parse_of_its_packets():
    """A write that fails inside a callback (or a DISCONNECT) closes the connection while the read
    path walks the buffer: the rest of that connection's packets are dropped, nothing breaks
    (found by the broker-restart fault test under load: an IndexError killed a worker)."""
    stream = b"".join(_paho_publish("t", b"%d" % i, 1, i + 1) for i in range(3))
    c = _client()
    a, b = socket.socketpair()
    c._sock = a
    got = []

    def on_packet(*args):
        got.append(args)
        c._sock_close()

    c.on_publish_packet = on_packet
    try:
        b.sendall(stream)
        assert c._packet_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
        assert [g[5] for g in got] == [b"0"] and c._sock is None and c._rbuf == bytearray()
    finally:
        a.close()
        b.close()


def test_a_remaining_length_over_four_bytes_is_a_protocol_error():
    c = _client()
    c.on_publish_packet = lambda *a: None
    rc, used = c._parse(bytearray(b"\x30\xff\xff\xff\xff\x01" + b"\x00" * 10))
    assert rc == MQTTErrorCode.MQTT_ERR_PROTOCOL and used == 0


def test_acknowledgements_and_publishes_go_out_in_one_write_as_paho_reads_them():
    c = _client()
    a, b = socket.socketpair()
    c._sock = a
    try:
        c.ack_many([1, 300, 65535])
        b.setblocking(False)
        assert _frames(b.recv(1 << 16)) == [(0x40, struct.pack("!H", m)) for m in (1, 300, 65535)]

        prop = user_property("geotwin", "notification")
        n = c.publish_many([(b"v1.1/Observations", b'{"a": 1}'), (b"v1.1/Datastreams(3)/Observations", b"y" * 300)],
                           1, prop)
        assert n == 2 and c.raw_inflight == 2
        frames = _frames(b.recv(1 << 16))
        decoded = [_packet.decode_publish(cmd, body, mqtt.MQTTv5) for cmd, body in frames]
        assert [(d.topic, d.payload, d.qos, d.mid) for d in decoded] == [
            (b"v1.1/Observations", b'{"a": 1}', 1, RAW_MID_FIRST),
            (b"v1.1/Datastreams(3)/Observations", b"y" * 300, 1, RAW_MID_FIRST + 1)]
        assert all(d.properties.UserProperty == [("geotwin", "notification")] for d in decoded)

        # the broker acknowledges the first (success) and refuses the second (0x87 not authorised)
        rc, used = c._parse(bytearray(struct.pack("!BBH", 0x40, 2, RAW_MID_FIRST)
                                      + struct.pack("!BBHB", 0x40, 3, RAW_MID_FIRST + 1, 0x87)))
        assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS and used == 9
        assert c.raw_inflight == 0 and c.raw_acked == 2 and c.raw_refused == 1

        # QoS 0: no packet id, nothing kept; unacknowledged QoS 1 ones go out again with DUP set
        c.publish_many([(b"t", b"0")], 0)
        c.publish_many([(b"t", b"1")], 1)
        assert c.raw_inflight == 1
        assert c.resend_unacknowledged() == 1
        c.loop_write()
        frames = _frames(b.recv(1 << 16))
        decoded = [_packet.decode_publish(cmd, body, mqtt.MQTTv5) for cmd, body in frames]
        assert [(d.payload, d.qos, d.dup) for d in decoded] == [(b"0", 0, False), (b"1", 1, False), (b"1", 1, True)]
    finally:
        c._sock = None
        a.close()
        b.close()


def test_paho_keeps_its_packet_ids_below_those_of_publish_many():
    c = _client()
    c._last_mid = RAW_MID_FIRST - 2
    assert [c._mid_generate() for _ in range(3)] == [RAW_MID_FIRST - 1, 1, 2]


BASE = "http://127.0.0.1:8000"
T = datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=timezone.utc)


@pytest.mark.parametrize("row", [
    (1, 2, T, None, None, 12.3, None, None, None, None, None, 5, None),
    (10**12, 2, T.replace(microsecond=456000), None, None, -0.0, None, None, None, None, None, None, None),
    (3, 2, T.replace(microsecond=0), None, None, 1e20, None, None, None, None, None, None, None),
    (4, 2, T.astimezone(timezone(timedelta(hours=8))), None, None, 3.0, None, None, None, None, None, 1, None),
    (5, 2, T, T + timedelta(hours=1), T, None, {"a": [1, "中"]}, {"q": 1}, T, T, {"p": 2}, None, None),
    (6, 2, T, None, None, None, True, None, None, None, None, None, None),
    (7, 2, T.replace(year=999), None, None, 1.5, None, None, None, None, None, None, None),
])
def test_notification_json_is_the_entity_the_http_api_serves(row):
    assert json.loads(w.notification_payload(BASE, row)) == w.entity_json(BASE, row)


def test_worker_parse_takes_what_json_takes_and_refuses_the_rest():
    msg = lambda body: w.Message(0, 1, 1, "v1.1/Datastreams(4)/Observations", body, time.time())
    row, skip = w.parse(msg(b'{"result": 123456789012345678901234567890, "phenomenonTime": "2026-12-07T10:00:00Z"}'),
                        "Asia/Shanghai")
    assert not skip and row.result_number == 1.2345678901234568e29  # beyond 64 bits: json's reading
    for bad, reason in ((b'{"result": NaN}', "not a finite number"), (b'{"result": 1', "payload is not JSON"),
                        (b"\xff", "payload is not JSON")):
        with pytest.raises(w.BadMessage, match=reason):
            w.parse(msg(bad), "Asia/Shanghai")
