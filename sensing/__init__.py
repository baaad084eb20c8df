"""Sensing (issue 16): the district's IoT platform as a room of the house — OGC SensorThings API 1.1
(``sensing.sta``), MQTT (``sensing.mqtt``), devices, status, alert rules and the water-meter pilot.

Storage: migration 0014 (``sta_*`` tables, partitioned observations, maintained stats and
aggregates, ``mqtt_credentials``)."""
