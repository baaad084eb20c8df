"""MQTT: Debian's mosquitto run by geotwin (``geotwin mqtt up|down|status``), device credentials and
ACL, the ingestion worker (exactly once, COPY batches) and STA's MQTT extension.

- ``broker``: the local broker (folder, configuration, process), endpoints and paho clients;
- ``credentials``: users of the broker from ``mqtt_credentials`` (``issue``, ``revoke``), the
  password file and ACL;
- ``control``: ``up`` — configuration, users and process together;
- ``worker``: the ingestion worker (``geotwin mqtt worker``) and ``after_batch_hooks``;
- ``notify``: the API process's notifier (STA MQTT receive side for HTTP writes);
- ``testing``: a broker of their own for tests and benchmarks, clients, ``wait_for``.
"""
