"""MQTT: the source (paho-mqtt, persistent session, bounded in-flight messages)."""
