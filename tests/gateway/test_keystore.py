"""Key custody: envelope encryption, vending-key import, command keys end to end, rotation,
the master key check at start, and no plaintext key anywhere in the database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import gmqtt
import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from firmware_sim.clock import ManualClock
from firmware_sim.fleet import FleetSpec, GroundTruth, build_fleet, run_fleet
from firmware_sim.identity import Transport, Utility, make_identity
from firmware_sim.mqtt_link import parse_broker_url
from firmware_sim.provisioning import ProvisionedKeys
from gateway.auth import store
from gateway.errors import KeyStoreError
from gateway.http.app import create_app
from gateway.http.custody import Custody
from gateway.http.deps import Services
from gateway.http.security import Role
from gateway.http.security import access_from_settings as build_access
from gateway.keystore import SoftwareKeyStore, VendingKeyId
from gateway.keystore.envelope import (
    Keyring,
    load_keyring,
    new_master_key,
    open_sealed,
    rewrap,
    seal,
    write_keyring,
)
from gateway.keystore.provisioning import export_provisioning
from gateway.metrics import Metrics
from gateway.settings import Settings
from protocols.commands import CommandAction, check_command, sign_command
from protocols.topics import Topics
from tests.firmware_sim.helpers import START, command_key
from tests.plugins.auth import make_api_key, remember_secret
from tests.plugins.gateway import gateway_running, make_settings
from tokens.keys import (
    DecoderKey,
    Dkga,
    EncryptionAlgorithm,
    KeyParameters,
    KeyType,
    VendingKey,
    derive_decoder_key,
)
from tokens.meter_number import MeterNumber
from tokens.tid import BaseDate

DKGA02_KEY = bytes.fromhex("0123456789abcdef")
DKGA04_KEY = bytes.fromhex("00112233445566778899aabbccddeeff0a1b2c3d")
for _key in (DKGA02_KEY, DKGA04_KEY):
    remember_secret(_key)


def master_file(tmp_path: Path, name: str = "master.key") -> Path:
    path = tmp_path / name
    keyring = Keyring((new_master_key(),))
    write_keyring(path, keyring)
    remember_secret(keyring.current.secret)
    return path


def gateway_cli(*args: str, env: dict[str, str], stdin: str | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "GATEWAY_LOG_FORMAT": "text", **env},
        timeout=120,
        check=False,
    )


# -- envelope encryption (pure) -------------------------------------------------------------


def test_envelope_round_trip_binds_the_name_and_needs_the_master_key() -> None:
    ring = Keyring((new_master_key(),))
    sealed = seal(ring, "command/M1", b"k" * 32)
    assert b"k" * 32 not in sealed.wrapped_key + sealed.ciphertext
    assert open_sealed(ring, "command/M1", sealed) == b"k" * 32
    other = Keyring((new_master_key(),))
    with pytest.raises(KeyStoreError, match="does not hold"):
        open_sealed(other, "command/M1", sealed)


def test_envelope_refuses_other_names_other_keys_and_tampering() -> None:
    ring = Keyring((new_master_key(),))
    sealed = seal(ring, "command/M1", b"secret bytes")
    with pytest.raises(KeyStoreError):
        open_sealed(ring, "command/M2", sealed)  # a row copied under another name
    other = Keyring((new_master_key(),))
    with pytest.raises(KeyStoreError, match="does not hold"):
        open_sealed(other, "command/M1", sealed)
    impostor = Keyring((type(ring.current)(other.current.secret),))
    forged = type(sealed)(impostor.current.key_id, sealed.wrapped_key, sealed.ciphertext)
    with pytest.raises(KeyStoreError, match="wrong master key"):
        open_sealed(impostor, "command/M1", forged)
    tampered = type(sealed)(sealed.master_key_id, sealed.wrapped_key, sealed.ciphertext[:-1] + b"x")
    with pytest.raises(KeyStoreError, match="altered"):
        open_sealed(ring, "command/M1", tampered)


def test_rewrap_changes_only_the_wrapping() -> None:
    old = Keyring((new_master_key(),))
    sealed = seal(old, "sts-vending/123456/1/02", DKGA02_KEY)
    both = Keyring((new_master_key(), *old.keys))
    fresh = rewrap(both, "sts-vending/123456/1/02", sealed)
    assert fresh.ciphertext == sealed.ciphertext and fresh.master_key_id != sealed.master_key_id
    assert open_sealed(Keyring((both.current,)), "sts-vending/123456/1/02", fresh) == DKGA02_KEY


def test_wrap_and_unwrap_for_secrets_stored_elsewhere(tmp_path: Path) -> None:
    keystore = SoftwareKeyStore(master_file(tmp_path))
    blob = keystore.wrap("vendor/pos-1/secret", b"s3cr3t-value")
    assert b"s3cr3t-value" not in blob
    assert keystore.unwrap("vendor/pos-1/secret", blob) == b"s3cr3t-value"
    with pytest.raises(KeyStoreError):
        keystore.unwrap("vendor/pos-2/secret", blob)
    with pytest.raises(KeyStoreError, match="not a wrapped secret"):
        keystore.unwrap("vendor/pos-1/secret", b"\x02" + blob[1:])
    with pytest.raises(KeyStoreError, match="does not hold"):
        SoftwareKeyStore(master_file(tmp_path, "other.key")).unwrap("vendor/pos-1/secret", blob)


def test_master_key_file_checks(tmp_path: Path) -> None:
    path = master_file(tmp_path)
    assert len(load_keyring(path).keys) == 1
    path.chmod(0o644)
    with pytest.raises(KeyStoreError, match="readable by others"):
        load_keyring(path)
    bad = tmp_path / "bad.key"
    bad.write_text("zz" * 32 + "\n")
    bad.chmod(0o600)
    with pytest.raises(KeyStoreError, match="line 1: not hex") as err:
        load_keyring(bad)
    assert "zz" not in str(err.value)
    short = tmp_path / "short.key"
    short.write_text("ab" * 16 + "\n")
    short.chmod(0o600)
    with pytest.raises(KeyStoreError, match="64 hex digits"):
        load_keyring(short)


# -- the store in PostgreSQL ----------------------------------------------------------------


def meter_params(krn: int = 1, ea: EncryptionAlgorithm = EncryptionAlgorithm.EA07) -> KeyParameters:
    return KeyParameters(
        meter=MeterNumber(iin="600727", drn="12345678903"),
        key_type=KeyType.UNIQUE,
        sgc="123456",
        ti=1,
        krn=krn,
        base_date=BaseDate.Y2014,
        ea=ea,
    )


async def test_vending_keys_import_derive_and_refuse_a_changed_key(
    database_url: str, tmp_path: Path
) -> None:
    keystore = SoftwareKeyStore(master_file(tmp_path))
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        key = VendingKeyId("123456", 1, Dkga.DKGA02)
        assert await keystore.import_vending_key(conn, key, DKGA02_KEY) is True
        assert await keystore.import_vending_key(conn, key, DKGA02_KEY) is False  # idempotent
        with pytest.raises(KeyStoreError, match="different vending key") as err:
            await keystore.import_vending_key(conn, key, bytes(8))
        assert DKGA02_KEY.hex() not in str(err.value)
        derived = await keystore.derive_decoder_key(conn, meter_params(), Dkga.DKGA02)
        expected = derive_decoder_key(VendingKey(Dkga.DKGA02, DKGA02_KEY), meter_params())
        assert isinstance(derived, DecoderKey) and derived.key == expected.key
        with pytest.raises(KeyStoreError, match="no key"):
            await keystore.derive_decoder_key(conn, meter_params(krn=2), Dkga.DKGA02)
        assert DKGA02_KEY.hex() not in repr(keystore) + repr(derived)
        await conn.commit()


async def all_database_text(database_url: str) -> str:
    """Every row of every table (and its bytea as hex), as one text."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )
        tables = [t for (t,) in await cur.fetchall()]
        parts = []
        for table in tables:
            cur = await conn.execute(f"SELECT t::text FROM {table} t")
            parts.extend(row[0] for row in await cur.fetchall())
    assert tables
    return "\n".join(parts).lower()


async def test_cli_contract_and_no_plaintext_key_in_the_database(
    database_url: str, tmp_path: Path
) -> None:
    master = master_file(tmp_path)
    env = {"GATEWAY_DATABASE_URL": database_url, "GATEWAY_MASTER_KEY_FILE": str(master)}
    added = gateway_cli("principals", "add", "pos-1", "--role", "vendor", "--api-key", env=env)
    assert added.returncode == 0, added.stderr
    lines = added.stdout.splitlines()
    assert len(lines) == 1
    body = json.loads(lines[0])
    assert list(body) == ["principal", "role", "api_key"]
    assert (body["principal"], body["role"]) == ("pos-1", "vendor")
    api_key = body["api_key"]
    remember_secret(api_key)
    assert api_key not in added.stderr
    password = f"correct horse {uuid.uuid4().hex}"
    remember_secret(password)
    person = gateway_cli(
        "principals", "add", "tom", "--role", "technician", "--password-stdin", env=env,
        stdin=password + "\n",
    )  # fmt: skip
    assert person.returncode == 0, person.stderr
    assert json.loads(person.stdout) == {"principal": "tom", "role": "technician", "kind": "person"}
    weak = gateway_cli(
        "principals", "add", "tim", "--role", "technician", "--password-stdin", env=env,
        stdin="short\n",
    )  # fmt: skip
    assert weak.returncode != 0 and "12 characters" in weak.stderr
    listing = gateway_cli("principals", "list", env=env)
    assert {json.loads(line)["name"] for line in listing.stdout.splitlines()} == {"pos-1", "tom"}

    keys_file = tmp_path / "vending.jsonl"
    keys_file.write_text(
        json.dumps({"sgc": "123456", "krn": 1, "dkga": "02", "vending_key": DKGA02_KEY.hex()})
        + "\n"
        + json.dumps({"sgc": "654321", "krn": 2, "dkga": "04", "vending_key": DKGA04_KEY.hex()})
        + "\n"
    )
    imported = gateway_cli("keys", "import", str(keys_file), env=env)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout) == {"imported": 2, "unchanged": 0}
    bad_file = tmp_path / "bad.jsonl"
    bad_file.write_text(json.dumps({"sgc": "123456", "krn": 1, "dkga": "02",
                                    "vending_key": "abcd" + DKGA02_KEY.hex()}) + "\n")  # fmt: skip
    bad = gateway_cli("keys", "import", str(bad_file), env=env)
    assert bad.returncode != 0 and "line 1" in bad.stderr and DKGA02_KEY.hex() not in bad.stderr
    stored = gateway_cli("keys", "stored", env=env)
    assert [json.loads(line)["name"] for line in stored.stdout.splitlines()] == [
        "sts-vending/123456/1/02",
        "sts-vending/654321/2/04",
    ]

    keystore = SoftwareKeyStore(master)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await keystore.ensure_command_key(conn, "M-1")
        command_secret = await keystore.export_command_key(conn, "M-1")
        await conn.commit()
    remember_secret(command_secret)

    text = await all_database_text(database_url)
    assert "pos-1" in text and "sts-vending/123456/1/02" in text  # the search sees the tables
    for secret in (DKGA02_KEY.hex(), DKGA04_KEY.hex(), command_secret.hex(), api_key, password):
        assert secret.lower() not in text
    for secret in (master.read_text().split()[-1],):
        assert secret not in text

    # Revoking through the CLI: the key stops working at once.
    key_list = gateway_cli("keys", "list", "pos-1", env=env)
    key_id = json.loads(key_list.stdout.splitlines()[0])["id"]
    assert gateway_cli("keys", "revoke", str(key_id), env=env).returncode == 0
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        assert await store.principal_for_api_key(conn, api_key) is None
    outcome = gateway_cli("keys", "import", "/nonexistent", env={**env})
    assert outcome.returncode != 0


async def test_provisioning_export_generates_missing_keys_and_writes_private_files(
    database_url: str, tmp_path: Path
) -> None:
    keystore = SoftwareKeyStore(master_file(tmp_path))
    out = tmp_path / "prov"
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        assert await keystore.ensure_command_key(conn, "P-1") is True
        assert await keystore.ensure_command_key(conn, "P-1") is False
        kept = await keystore.export_command_key(conn, "P-1")
        written = await export_provisioning(conn, keystore, out, ["P-1", "P-2"])
        assert written == ["P-1", "P-2"]
        for meter_id in written:
            key = await keystore.export_command_key(conn, meter_id)
            remember_secret(key)
            body = json.loads((out / f"{meter_id}.json").read_text())
            assert body == {"meter_id": meter_id, "command_key": key.hex()}
            assert oct((out / f"{meter_id}.json").stat().st_mode & 0o777) == "0o600"
        assert json.loads((out / "P-1.json").read_text())["command_key"] == kept.hex()
        assert oct(out.stat().st_mode & 0o777) == "0o700"
        assert ProvisionedKeys(out).key_for("P-2") == bytes.fromhex(
            json.loads((out / "P-2.json").read_text())["command_key"]
        )
        assert ProvisionedKeys(out).key_for("P-3") is None
        (out / "P-2.json").write_text('{"meter_id": "P-9", "command_key": "00"}')
        assert ProvisionedKeys(out).key_for("P-2") is None  # a file for another meter is ignored


async def test_master_key_rotation_keeps_every_key_usable(
    database_url: str, tmp_path: Path
) -> None:
    master = master_file(tmp_path)
    old_hex = master.read_text().split()[-1]
    running = SoftwareKeyStore(master)  # a gateway that keeps running through the rotation
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await running.import_vending_key(conn, VendingKeyId("123456", 1, Dkga.DKGA02), DKGA02_KEY)
        await running.ensure_command_key(conn, "M-9")
        await conn.commit()
        command_secret = await running.export_command_key(conn, "M-9")
    remember_secret(command_secret)
    env = {"GATEWAY_DATABASE_URL": database_url, "GATEWAY_MASTER_KEY_FILE": str(master)}
    rotated = gateway_cli("keys", "rotate-master", env=env)
    assert rotated.returncode == 0, rotated.stderr
    result = json.loads(rotated.stdout)
    assert result["rewrapped"] == 2 and result["master_key_id"] != running.current_master_key_id
    new_lines = [line for line in master.read_text().splitlines() if not line.startswith("#")]
    assert len(new_lines) == 1 and new_lines[0] != old_hex  # the old key is gone from the file
    remember_secret(new_lines[0])
    assert oct(master.stat().st_mode & 0o777) == "0o600"
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        ids = await (await conn.execute("SELECT DISTINCT master_key_id FROM key_store")).fetchall()
        assert ids == [(result["master_key_id"],)]
        # The running instance picks the new key up from the file without a restart.
        assert await running.export_command_key(conn, "M-9") == command_secret
        derived = await running.derive_decoder_key(conn, meter_params(), Dkga.DKGA02)
        assert derived.key == derive_decoder_key(VendingKey(Dkga.DKGA02, DKGA02_KEY),
                                                 meter_params()).key  # fmt: skip
        assert await SoftwareKeyStore(master).verify(conn) == 2


async def test_a_wrong_master_key_stops_the_gateway_at_start(
    database_url: str, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    right = master_file(tmp_path, "right.key")
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await SoftwareKeyStore(right).ensure_command_key(conn, "M-1")
        await conn.commit()
    wrong = master_file(tmp_path, "wrong.key")
    settings = make_settings(database_url, mqtt_url, topic_prefix, master_key_file=wrong)
    with pytest.raises(KeyStoreError, match="master key"):
        async with gateway_running(settings):
            pass
    unset = make_settings(database_url, mqtt_url, topic_prefix)
    with pytest.raises(KeyStoreError, match="GATEWAY_MASTER_KEY_FILE is not set"):
        async with gateway_running(unset):
            pass
    fine = make_settings(database_url, mqtt_url, topic_prefix, master_key_file=right)
    async with gateway_running(fine) as handle:
        assert handle.http_port


# -- command keys: generated at registration, provisioned, verified by the simulated meter -----


class Replies:
    def __init__(self) -> None:
        self.client = gmqtt.Client(f"ks-test-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.replies: list[dict[str, Any]] = []

    def _on_message(self, client: object, topic: str, payload: bytes, qos: int, p: object) -> int:
        if topic.endswith("/commands/reply"):
            self.replies.append(json.loads(payload))
        return 0

    async def reply_to(self, command_id: str) -> dict[str, Any]:
        async with asyncio.timeout(15):
            while True:
                for reply in self.replies:
                    if reply["command_id"] == command_id:
                        return reply
                await asyncio.sleep(0.02)


async def test_registered_meter_gets_a_command_key_that_the_simulated_meter_verifies(
    database_url: str, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    keystore = SoftwareKeyStore(master_file(tmp_path))
    provisioning = tmp_path / "provisioning"
    seed = 60 + uuid.uuid4().int % 30
    ident = make_identity(seed, 0, transport=Transport.MQTT, utility=Utility.ELECTRICITY,
                          prepaid=False)  # fmt: skip
    meter_id = ident.meter_id

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, min_size=1, open=False)
    await pool.open()
    try:
        settings = Settings(database_url=database_url)
        app = create_app(
            Services(pool=pool, mqtt=None, intake=None, pipeline=None, metrics=Metrics()),  # type: ignore[arg-type]
            build_access(settings, pool),
            Custody(keystore=keystore, provisioning_dir=provisioning),
        )
        operator = {"Authorization": f"Bearer {await make_api_key(database_url, Role.OPERATOR)}"}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers=operator
        ) as http:
            put = await http.put(f"/meters/{meter_id}", json={"utility": "electricity"})
            assert put.status_code == 200, put.text
            assert "command" not in put.text
            file = provisioning / f"{meter_id}.json"
            first = json.loads(file.read_text())
            assert oct(file.stat().st_mode & 0o777) == "0o600"
            remember_secret(bytes.fromhex(first["command_key"]))
            # Re-registering keeps the key (and does not rewrite the file).
            file.unlink()
            assert (
                await http.put(f"/meters/{meter_id}", json={"utility": "electricity"})
            ).is_success
            assert not file.exists()
            far = await http.put(
                "/meters/MB-1",
                json={"utility": "electricity", "transport": "modbus", "modbus_host": "8.8.8.8",
                      "modbus_port": 502, "modbus_unit": 1},
            )  # fmt: skip
            assert far.status_code == 422 and "outside" in far.text
        async with pool.connection() as conn:
            exported = await keystore.export_command_key(conn, meter_id)
        assert exported.hex() == first["command_key"] and exported != command_key(meter_id)
        file.write_text(json.dumps(first))
        assert ProvisionedKeys(provisioning).key_for(meter_id) == exported

        topics = Topics(topic_prefix)
        clock = ManualClock(START)
        devices = build_fleet(FleetSpec(seed=seed, meters=1), START, identities=[ident])
        replies = Replies()
        await replies.client.connect("127.0.0.1", parse_broker_url(mqtt_url).port)
        replies.client.subscribe(topics.command_reply(meter_id), qos=1)
        stop = asyncio.Event()
        fleet = asyncio.create_task(
            run_fleet(
                devices, clock=clock, stop=stop, truth=GroundTruth(None),
                broker=parse_broker_url(mqtt_url), topics=topics, session_expiry=60,
                link_prefix=f"ks{seed}", provisioning=ProvisionedKeys(provisioning),
            )
        )  # fmt: skip
        try:
            await asyncio.sleep(1.0)  # the meter subscribes to its command topic
            async with pool.connection() as conn:
                signed = await keystore.sign_command(
                    conn, meter_id=meter_id, command_id="gw-1", action=CommandAction.DISCONNECT,
                    issued_at=clock.now(), ttl=timedelta(minutes=10), nonce=uuid.uuid4().hex[:16],
                )  # fmt: skip
            with_dev_key = check_command(signed, key=command_key(meter_id), now=clock.now(),
                                         seen=set())  # fmt: skip
            assert with_dev_key is not None  # the provisioned key is not the development one
            replies.client.publish(topics.commands(meter_id), signed.to_json(), qos=1)
            reply = await replies.reply_to("gw-1")
            assert (reply["result"], reply["state"]["relay"]) == ("ok", "disconnected")
            stale = sign_command(
                command_key(meter_id), meter_id=meter_id, command_id="dev-1",
                action=CommandAction.RECONNECT, issued_at=clock.now(),
                ttl=timedelta(minutes=10), nonce=uuid.uuid4().hex[:16],
            )  # fmt: skip
            replies.client.publish(topics.commands(meter_id), stale.to_json(), qos=1)
            rejected = await replies.reply_to("dev-1")
            assert (rejected["result"], rejected["reason"]) == ("rejected", "bad_signature")
        finally:
            stop.set()
            await asyncio.wait_for(fleet, 20)
            await replies.client.disconnect()
    finally:
        await pool.close()
