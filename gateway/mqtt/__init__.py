"""MQTT 5 for the gateway: a pure session state machine under a thin asyncio client.

The intake takes messages with :meth:`MqttClient.receive` and acknowledges them after commit
with :meth:`MqttClient.acknowledge`; features that send commands or keypad tokens use
:meth:`MqttClient.publish` (QoS 1, returns once the broker acknowledged). Packets are encoded
and decoded by the ``mqtt5`` codec; nothing here uses another library's private API.
"""

from gateway.mqtt.client import MqttClient, MqttOptions
from gateway.mqtt.events import MessageReceived, SessionConfig
from gateway.mqtt.session import Session

__all__ = ["MessageReceived", "MqttClient", "MqttOptions", "Session", "SessionConfig"]
