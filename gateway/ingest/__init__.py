"""MQTT/Modbus intake, batching and storage of telemetry."""
