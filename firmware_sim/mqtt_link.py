"""Async MQTT shell: one gmqtt connection serving one meter or a data concentrator's meters.

The link owns the socket and the pacing; the devices are pure. A link with one device connects
as ``meter-{meter_id}`` with the last will ``{"state":"offline"}`` retained on the meter's
status topic; a link with several is a data concentrator ``dc-{id}`` publishing on each meter's
own topics (its will goes to ``concentrators/{id}/status``: MQTT allows one will per
connection). Both use clean start off and a session expiry, QoS 1 everywhere, and keep at most
``window`` unacknowledged publishes in flight, below the broker's Receive Maximum.

Two named tasks per link: ``ticks`` steps the devices on simulated time and publishes what they
produce; ``inbox`` handles commands and keypad input delivered by the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final
from urllib.parse import unquote, urlsplit

import gmqtt
from gmqtt.storage import PersistentStorage

from firmware_sim.clock import SimClock
from firmware_sim.device import Device, Output
from firmware_sim.faults import FaultRecord
from firmware_sim.provisioning import ProvisionedKeys
from firmware_sim.transmit import Outgoing, offline_status
from protocols.errors import TopicError, UsageError
from protocols.status import OFFLINE_WILL
from protocols.topics import TopicKind, Topics

__all__ = [
    "BROKER_PASSWORD_ENV",
    "BrokerAddress",
    "FlowStorage",
    "MqttLink",
    "parse_broker_url",
]

log = logging.getLogger(__name__)

DEFAULT_SESSION_EXPIRY = 2 * 86400


BROKER_PASSWORD_ENV: Final = "FIRMWARE_SIM_MQTT_PASSWORD"  # noqa: S105 - a variable name
"""The broker password, kept out of the command line (where ``ps`` shows it)."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def apply_credentials(self, client: gmqtt.Client) -> None:
        if self.username is not None:
            client.set_auth_credentials(self.username, self.password)


def parse_broker_url(url: str, env: Mapping[str, str] = os.environ) -> BrokerAddress:
    """``mqtt://[user@]host:port`` (port 1883 by default), user percent-decoded.

    The password comes from ``$FIRMWARE_SIM_MQTT_PASSWORD`` (or, discouraged, from the URL).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise UsageError("broker URL must look like mqtt://[user@]host:port")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else env.get(BROKER_PASSWORD_ENV)
    return BrokerAddress(parts.hostname, parts.port or 1883, username, password or None)


class FlowStorage(PersistentStorage):  # type: ignore[misc]  # gmqtt is untyped
    """gmqtt's in-flight store, extended to let publishers wait for a free slot."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = window
        self._room = asyncio.Event()
        self._room.set()

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        if len(self._messages) >= self.window:
            self._room.clear()

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        if len(self._messages) < self.window:
            self._room.set()

    def clear(self) -> None:
        super().clear()
        self._room.set()

    async def wait_room(self) -> None:
        await self._room.wait()

    @property
    def in_flight(self) -> int:
        return len(self._messages)


RecordSink = Callable[[Sequence[FaultRecord]], None]


class MqttLink:
    """One MQTT connection and the devices it serves."""

    def __init__(
        self,
        link_id: str,
        devices: Sequence[Device],
        *,
        broker: BrokerAddress,
        topics: Topics,
        clock: SimClock,
        records: RecordSink,
        window: int = 16,
        session_expiry: int = DEFAULT_SESSION_EXPIRY,
        min_sleep: float = 0.05,
    ) -> None:
        if not devices:
            raise UsageError("a link serves at least one device")
        self.link_id = link_id
        self.devices = {d.meter_id: d for d in devices}
        self.broker = broker
        self.topics = topics
        self.clock = clock
        self.records = records
        self.min_sleep = min_sleep
        self.storage = FlowStorage(window)
        single = len(devices) == 1
        self.client_id = f"meter-{devices[0].meter_id}" if single else f"dc-{link_id}"
        will_topic = (
            topics.status(devices[0].meter_id)
            if single
            else f"{topics.prefix}concentrators/{link_id}/status"
        )
        self.client = gmqtt.Client(
            self.client_id,
            clean_session=False,
            session_expiry_interval=session_expiry,
            will_message=gmqtt.Message(will_topic, OFFLINE_WILL, qos=1, retain=True),
            persistent_storage=self.storage,
        )
        self.client.set_config({"reconnect_retries": -1, "reconnect_delay": 1})
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self._connected = asyncio.Event()
        self._inbox: asyncio.Queue[tuple[TopicKind, str, bytes]] = asyncio.Queue()
        self.provisioning: ProvisionedKeys | None = None
        """Where the gateway's provisioning files are (command keys), if given."""
        self.sent_messages = 0

    # ------------------------------------------------------------- gmqtt callbacks

    def _on_connect(self, client: object, flags: object, rc: object, properties: object) -> None:
        self._connected.set()
        subs = [gmqtt.Subscription(self.topics.commands(mid), qos=1) for mid in self.devices]
        subs += [gmqtt.Subscription(self.topics.keypad(mid), qos=1) for mid in self.devices]
        for start in range(0, len(subs), 500):
            self.client.subscribe(subs[start : start + 500])
        now = self.clock.now()
        for device in self.devices.values():
            self._inbox.put_nowait((TopicKind.STATUS, device.meter_id, b""))
        log.debug("link %s connected (%d meters) at %s", self.client_id, len(self.devices), now)

    def _on_disconnect(self, client: object, packet: object, exc: object = None) -> None:
        self._connected.clear()
        log.debug("link %s disconnected", self.client_id)

    def _on_message(
        self, client: object, topic: str, payload: bytes, qos: int, properties: object
    ) -> int:
        try:
            parsed = self.topics.parse(topic)
        except TopicError:
            log.warning("ignoring message on foreign topic %r", topic[:120])
            return 0
        if parsed.device_id in self.devices and parsed.kind in (
            TopicKind.COMMANDS,
            TopicKind.KEYPAD,
        ):
            self._inbox.put_nowait((parsed.kind, parsed.device_id, bytes(payload)))
        return 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # ------------------------------------------------------------- publishing

    async def publish(self, msg: Outgoing) -> None:
        await self._connected.wait()
        await self.storage.wait_room()
        match msg.kind:
            case TopicKind.TELEMETRY:
                topic = self.topics.telemetry(msg.meter_id)
            case TopicKind.EVENTS:
                topic = self.topics.events(msg.meter_id)
            case TopicKind.STATUS:
                topic = self.topics.status(msg.meter_id)
            case TopicKind.COMMAND_REPLY:
                topic = self.topics.command_reply(msg.meter_id)
            case _:
                raise UsageError(f"a meter does not publish {msg.kind}")
        self.client.publish(gmqtt.Message(topic, msg.payload, qos=1, retain=msg.retain))
        self.sent_messages += 1

    async def _deliver(self, out: Output) -> None:
        if out.records:
            self.records(out.records)
        for msg in out.messages:
            await self.publish(msg)

    # ------------------------------------------------------------- tasks

    async def connect(self) -> None:
        self.broker.apply_credentials(self.client)
        await self.client.connect(self.broker.host, self.broker.port, keepalive=30)

    async def ticks(self, stop: asyncio.Event) -> None:
        """Step every device on simulated time until ``stop``; then shut down cleanly."""
        tick = min(d.meter.config.tick_s for d in self.devices.values())
        while not stop.is_set():
            now = self.clock.now()
            for device in self.devices.values():
                await self._deliver(device.advance(now))
            nxt = min(d.meter.t for d in self.devices.values())
            delay = max(self.min_sleep, self.clock.wall_delay(nxt + timedelta(seconds=tick)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
        await self.shutdown(self.clock.now())

    async def inbox(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            getter = asyncio.ensure_future(self._inbox.get())
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if getter not in done:
                getter.cancel()
                return
            kind, meter_id, payload = getter.result()
            device = self.devices[meter_id]
            now = self.clock.now()
            # Bring the meter to the present before acting on the message.
            await self._deliver(device.advance(now))
            match kind:
                case TopicKind.COMMANDS:
                    if self.provisioning is not None:
                        key = self.provisioning.key_for(meter_id)
                        if key is not None:
                            device.provision_command_key(key)
                    await self._deliver(device.on_command(payload, now))
                case TopicKind.KEYPAD:
                    await self._deliver(device.on_keypad(payload, now))
                case TopicKind.STATUS:
                    await self._deliver(device.online(now))
                case _:
                    pass

    async def shutdown(self, now: datetime, *, limit_s: float = 15.0) -> None:
        """Flush, publish the offline statuses, wait for acks, disconnect.

        Bounded by ``limit_s``: a broker that is gone must not hang the shutdown; the ground
        truth is written regardless.
        """
        outputs = [device.finish(now) for device in self.devices.values()]
        for out in outputs:
            if out.records:
                self.records(out.records)
        try:
            async with asyncio.timeout(limit_s):
                for device, out in zip(self.devices.values(), outputs, strict=True):
                    for msg in out.messages:
                        await self.publish(msg)
                    await self.publish(
                        Outgoing(TopicKind.STATUS, device.meter_id, offline_status(now), True)
                    )
                await self.storage.wait_empty()
        except TimeoutError:
            log.warning("link %s: shutdown publish timed out", self.client_id)
        await self.client.disconnect()
