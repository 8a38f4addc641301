"""MQTT transport: the embedded broker (a managed mosquitto), the ingest listener."""
