"""A paho-mqtt client for streams of QoS 1 messages: many packets per read, many per write.

paho-mqtt reads a packet with three or more ``recv`` calls (the command byte, each byte of the
remaining length, then the body), builds an ``MQTTMessage`` and decodes its MQTT 5 properties into
a ``Properties`` object for every PUBLISH, and writes every PUBACK with a ``send`` of its own.
Measured in the ingestion worker, that per-packet work — not PostgreSQL — bounded the worker at
~14,700 observations/s on one core. :class:`BatchClient` keeps everything else of paho (CONNECT
and its properties, SUBSCRIBE, keep-alive, reconnect, TLS, callbacks) and replaces only the hot
paths:

- **read**: one ``recv`` of up to 256 KiB, then every complete packet in it is parsed here;
  PUBLISH packets go straight to :attr:`BatchClient.on_publish_packet` as
  ``(mid, qos, dup, topic: bytes, properties: bytes, payload: bytes)`` (the properties still
  encoded), PUBACKs of the messages published by :meth:`publish_many` are counted here, and every
  other packet (CONNACK, SUBACK, PINGRESP, DISCONNECT, a PUBACK of paho's own publish …) is handed
  to paho's own handler as if paho had read it;
- **acknowledge**: :meth:`ack_many` writes the PUBACKs of a whole batch as one buffer;
- **publish**: :meth:`publish_many` encodes a list of PUBLISH packets into one buffer. With QoS 1
  their packet ids come from the upper half of the id space (paho's own ids are kept in the lower
  half, see :meth:`_mid_generate`); each packet is kept until its PUBACK comes, and sent again
  (DUP set) when the client connects again — what paho does for its own publishes.

Only MQTT 5 (what every geotwin client speaks) and only clients driven by hand (``loop_read`` /
``loop_write`` / ``loop_misc`` from the caller's thread, never ``loop_start``).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

PUBLISH = 0x30
PUBACK = 0x40
#: packet ids of :meth:`BatchClient.publish_many` (QoS 1); paho's own stay below
RAW_MID_FIRST = 32768
READ_SIZE = 1 << 18


def varint(n: int) -> bytes:
    """An MQTT variable byte integer (remaining length, property length)."""
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def user_property(name: str, value: str) -> bytes:
    """An encoded MQTT 5 User Property (identifier 0x26 and a UTF-8 string pair)."""
    a, b = name.encode(), value.encode()
    return b"\x26" + struct.pack("!H", len(a)) + a + struct.pack("!H", len(b)) + b


class BatchClient(mqtt.Client):
    """paho's ``Client`` (MQTT 5) with batched reads, acknowledgements and publishes (see the module)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: ``(mid, qos, dup, topic, properties, payload)`` for each PUBLISH received (None: paho's on_message)
        self.on_publish_packet: Callable[[int, int, bool, bytes, bytes, bytes], None] | None = None
        self._rbuf = bytearray()
        self._raw_out: dict[int, bytes] = {}  # mid → the packet, until its PUBACK
        self._raw_mid = RAW_MID_FIRST - 1
        self._raw_lock = threading.Lock()
        #: PUBACKs received for publish_many's packets; refused ones (reason code ≥ 0x80) counted apart
        self.raw_acked = 0
        self.raw_refused = 0

    # -- ids ------------------------------------------------------------------------------------
    def _mid_generate(self) -> int:  # paho's own packets: 1 … 32767
        with self._mid_generate_mutex:
            self._last_mid += 1
            if self._last_mid >= RAW_MID_FIRST:
                self._last_mid = 1
            return self._last_mid

    def _raw_mid_next(self) -> int:
        mid = self._raw_mid + 1
        if mid > 65535:
            mid = RAW_MID_FIRST
        if mid in self._raw_out:
            raise RuntimeError(f"MQTT: {len(self._raw_out)} publishes wait for their PUBACK; no packet id is free")
        self._raw_mid = mid
        return mid

    @property
    def raw_inflight(self) -> int:
        """QoS 1 messages of :meth:`publish_many` not yet acknowledged by the broker."""
        return len(self._raw_out)

    # -- read -----------------------------------------------------------------------------------
    def _sock_close(self) -> None:
        # a new connection starts with a new stream of packets; a new buffer, not this one emptied:
        # the close may come from a callback while _parse walks this one
        self._rbuf = bytearray()
        super()._sock_close()

    def _packet_read(self) -> MQTTErrorCode:
        sock = self._sock
        try:
            data = self._sock_recv(READ_SIZE)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as err:
            self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if not data:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        buf = self._rbuf
        buf += data
        rc, used = self._parse(buf, sock)
        if used and buf is self._rbuf:
            del buf[:used]
        return rc

    def _parse(self, buf: bytearray, sock=None) -> tuple[MQTTErrorCode, int]:
        """Handle every complete packet in ``buf``: (return code, bytes used). Stops when the
        connection ``sock`` is closed meanwhile (by a callback, a failed write, a DISCONNECT): what
        follows in ``buf`` belongs to a connection that is gone."""
        sock = self._sock if sock is None else sock
        pos, end = 0, len(buf)
        on_publish = self.on_publish_packet
        raw_out = self._raw_out
        while pos + 2 <= end:
            cmd = buf[pos]
            # the remaining length: 1 to 4 bytes of 7 bits
            length, shift, i = 0, 0, pos + 1
            while True:
                if i >= end:
                    return MQTTErrorCode.MQTT_ERR_SUCCESS, pos
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                i += 1
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    return MQTTErrorCode.MQTT_ERR_PROTOCOL, pos
            body, nxt = i, i + length
            if nxt > end:
                return MQTTErrorCode.MQTT_ERR_SUCCESS, pos
            kind = cmd & 0xF0
            if kind == PUBLISH and on_publish is not None and self._protocol == mqtt.MQTTv5:
                qos = (cmd >> 1) & 3
                tlen = (buf[body] << 8) | buf[body + 1]
                p = body + 2 + tlen
                topic = bytes(buf[body + 2:p])
                mid = 0
                if qos:
                    mid = (buf[p] << 8) | buf[p + 1]
                    p += 2
                plen, pshift = 0, 0
                while True:
                    byte = buf[p]
                    p += 1
                    plen |= (byte & 0x7F) << pshift
                    if not byte & 0x80:
                        break
                    pshift += 7
                props = bytes(buf[p:p + plen]) if plen else b""
                if p + plen > nxt:
                    return MQTTErrorCode.MQTT_ERR_PROTOCOL, pos
                on_publish(mid, qos, bool(cmd & 0x08), topic, props, bytes(buf[p + plen:nxt]))
                if self._sock is not sock:
                    return MQTTErrorCode.MQTT_ERR_SUCCESS, nxt
            elif kind == PUBACK and length >= 2 and ((buf[body] << 8) | buf[body + 1]) in raw_out:
                mid = (buf[body] << 8) | buf[body + 1]
                del raw_out[mid]
                self.raw_acked += 1
                if length >= 3 and buf[body + 2] >= 0x80:
                    self.raw_refused += 1
                    self._easy_log(mqtt.MQTT_LOG_WARNING, "PUBACK %d: the broker refused the message (reason %d)",
                                   mid, buf[body + 2])
            else:  # paho's own handling, as if it had read the packet
                self._in_packet = {"command": cmd, "have_remaining": 1, "remaining_count": [],
                                   "remaining_mult": 1, "remaining_length": length,
                                   "packet": bytearray(buf[body:nxt]), "to_process": 0, "pos": 0}
                try:
                    rc = self._packet_handle()
                except MalformedPacket as exc:
                    self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
                    rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
                self._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [],
                                   "remaining_mult": 1, "remaining_length": 0, "packet": bytearray(b""),
                                   "to_process": 0, "pos": 0}
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return rc, nxt
                if self._sock is not sock:  # paho closed the connection (DISCONNECT from the broker)
                    return MQTTErrorCode.MQTT_ERR_SUCCESS, nxt
            pos = nxt
        return MQTTErrorCode.MQTT_ERR_SUCCESS, pos

    # -- write ----------------------------------------------------------------------------------
    def _queue_raw(self, data: bytes) -> None:
        # labelled as a PUBACK for paho's writer (it looks at the label for PUBLISH QoS 0 / DISCONNECT)
        self._packet_queue(PUBACK, data, 0, 0)

    def ack_many(self, mids: Iterable[int]) -> None:
        """Acknowledge QoS 1 messages (PUBACK, success), all in one write."""
        mids = list(mids)
        if mids and self._sock is not None:
            self._queue_raw(struct.pack(f"!{len(mids)}I", *[0x40020000 | m for m in mids]))

    def publish_many(self, messages: Iterable[tuple[bytes, bytes]], qos: int = 0, properties: bytes = b"") -> int:
        """Publish ``(topic, payload)`` pairs (bytes), all in one write; ``properties``: encoded
        MQTT 5 PUBLISH properties (see :func:`user_property`) given to each. Returns the count."""
        head = bytes((PUBLISH | (qos << 1),))
        props = varint(len(properties)) + properties
        parts = []
        n = 0
        with self._raw_lock:
            for topic, payload in messages:
                tl = struct.pack("!H", len(topic))
                if qos:
                    mid = self._raw_mid_next()
                    packet = b"".join((head, varint(2 + len(topic) + 2 + len(props) + len(payload)), tl, topic,
                                       struct.pack("!H", mid), props, payload))
                    self._raw_out[mid] = packet
                else:
                    packet = b"".join((head, varint(2 + len(topic) + len(props) + len(payload)), tl, topic, props,
                                       payload))
                parts.append(packet)
                n += 1
        if parts and self._sock is not None:
            self._queue_raw(b"".join(parts))
        return n

    def resend_unacknowledged(self) -> int:
        """After connecting again: send publish_many's unacknowledged QoS 1 packets again, DUP set
        (call from on_connect). Returns how many."""
        with self._raw_lock:
            packets = [bytes((p[0] | 0x08,)) + p[1:] for p in self._raw_out.values()]
        if packets and self._sock is not None:
            self._queue_raw(b"".join(packets))
        return len(packets)


__all__ = ["BatchClient", "user_property", "varint"]
