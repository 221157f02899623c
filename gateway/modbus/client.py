"""One Modbus TCP connection to one endpoint (host, port), on pymodbus's asyncio client.

Many meters and Modbus gateways accept a single TCP master and serve one request at a time, so
the poller opens exactly one :class:`EndpointClient` per endpoint and issues its requests one
after another (pymodbus also serialises requests per client with a lock). Optional pacing keeps
a minimum pause between the end of one answer and the next request, for devices that need it.

Timeouts, retries and reconnects are ours, not pymodbus's: the client is built with
``retries=0`` and ``reconnect_delay=0`` (no background reconnect task), and every connect and
request runs under our own deadline, so a silent device costs exactly one timeout and the poller
decides about backoff. A late answer to a timed-out request is discarded by pymodbus's framer
(transaction id mismatch). pymodbus exceptions and exception responses are translated here, once,
into :mod:`gateway.modbus.errors`.
"""

from __future__ import annotations

import asyncio

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ConnectionException, ModbusException

from gateway.modbus.errors import (
    IllegalAddressError,
    ModbusBusyError,
    ModbusConnectError,
    ModbusDeviceError,
    ModbusError,
    ModbusTimeoutError,
)

__all__ = ["EndpointClient"]


class EndpointClient:
    """A reconnectable FC04 reader for one ``host:port``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout_s: float,
        request_timeout_s: float,
        pacing_s: float = 0.0,
    ) -> None:
        self.host = host
        self.port = port
        self._connect_timeout = connect_timeout_s
        self._request_timeout = request_timeout_s
        self._pacing = pacing_s
        self._last_answer = -1e9
        # pymodbus applies its `timeout` to connects and responses; ours fire first.
        self._client = AsyncModbusTcpClient(
            host,
            port=port,
            name=f"modbus {host}:{port}",
            timeout=max(connect_timeout_s, request_timeout_s) + 1.0,
            retries=0,
            reconnect_delay=0,
        )

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    async def connect(self) -> None:
        """Open the connection; :class:`ModbusConnectError` if the endpoint cannot be reached."""
        try:
            async with asyncio.timeout(self._connect_timeout):
                ok = await self._client.connect()
        except TimeoutError as exc:
            raise ModbusConnectError(f"connect to {self} timed out") from exc
        except OSError as exc:
            raise ModbusConnectError(f"cannot connect to {self}: {exc}") from exc
        if not ok:
            raise ModbusConnectError(f"cannot connect to {self}")

    def close(self) -> None:
        self._client.close()

    async def wait_for_pacing(self) -> None:
        """Sleep until the device's inter-request pause has passed (no-op without pacing)."""
        if self._pacing > 0:
            pause = self._last_answer + self._pacing - asyncio.get_running_loop().time()
            if pause > 0:
                await asyncio.sleep(pause)

    async def read_input_registers(self, unit: int, address: int, count: int) -> list[int]:
        """FC04 ``count`` registers from ``address`` of ``unit``.

        Raises :class:`ModbusTimeoutError`, :class:`ModbusConnectError`, :class:`ModbusBusyError`,
        :class:`IllegalAddressError`, another :class:`ModbusDeviceError` for
        other exception codes, or :class:`ModbusError` for a malformed answer.
        """
        if not self._client.connected:
            raise ModbusConnectError(f"not connected to {self}")
        loop = asyncio.get_running_loop()
        await self.wait_for_pacing()
        try:
            async with asyncio.timeout(self._request_timeout):
                response = await self._client.read_input_registers(
                    address, count=count, device_id=unit
                )
        except TimeoutError as exc:
            if not self._client.connected:
                raise ModbusConnectError(f"connection to {self} lost") from exc
            raise ModbusTimeoutError(f"unit {unit} at {self} did not answer") from exc
        except ConnectionException as exc:
            raise ModbusConnectError(f"connection to {self} failed: {exc}") from exc
        except ModbusException as exc:
            raise ModbusError(f"unit {unit} at {self}: {exc}") from exc
        finally:
            self._last_answer = loop.time()
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            where = f"unit {unit} at {self}, registers {address}+{count}"
            if code == ExcCodes.DEVICE_BUSY:
                raise ModbusBusyError(code, f"{where}: device busy (exception 6)")
            if code == ExcCodes.ILLEGAL_ADDRESS:
                raise IllegalAddressError(code, f"{where}: illegal data address (exception 2)")
            raise ModbusDeviceError(code, f"{where}: Modbus exception {code}")
        registers = getattr(response, "registers", None)
        if not isinstance(registers, list):
            raise ModbusError(f"unit {unit} at {self}: unexpected answer {response}")
        return registers
