"""MQTT: Debian's mosquitto run by geotwin (``geotwin mqtt up|down|status``), device credentials and
ACL, the ingestion worker (exactly once, COPY batches) and STA's MQTT extension."""
