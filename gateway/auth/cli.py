"""``gateway principals …`` and ``gateway keys …``: managing who may call and which keys exist.

Secrets never travel on the command line: passwords come from stdin (``--password-stdin``),
vending keys from a file (``gateway keys import FILE``), the master key from
``GATEWAY_MASTER_KEY_FILE``. A new API key is printed once, as one JSON line on stdout::

    $ gateway principals add pos-1 --role vendor --api-key
    {"principal": "pos-1", "role": "vendor", "api_key": "mgw_…"}

Every change is written to the audit log with the actor ``cli:<os user>``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

import psycopg
from psycopg import AsyncConnection

from gateway import audit, registry
from gateway.auth import store
from gateway.auth.model import NAME_PATTERN, Role
from gateway.auth.passwords import check_password_policy, hash_password
from gateway.errors import ConfigError, StorageError, ValidationError
from gateway.keystore import SoftwareKeyStore, VendingKeyId, rotate_master_key
from gateway.keystore.envelope import Keyring, new_master_key, write_keyring
from gateway.keystore.provisioning import export_provisioning
from gateway.settings import Settings
from tokens.errors import TokenError
from tokens.keys import Dkga

__all__ = ["add_subcommands", "parse_vending_keys"]

Command = Callable[[AsyncConnection[Any], Settings, argparse.Namespace], Awaitable[int]]


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _emit(obj: object) -> None:
    print(json.dumps(obj, default=str), flush=True)


async def _audit(conn: AsyncConnection[Any], action: str, obj: str, **detail: Any) -> None:
    await audit.record(
        conn, actor=_actor(), action=action, object=obj, outcome="ok", source="cli",
        detail=detail,
    )  # fmt: skip


def _keystore(settings: Settings) -> SoftwareKeyStore:
    if settings.master_key_file is None:
        raise ConfigError("GATEWAY_MASTER_KEY_FILE is not set: the key store needs a master key")
    return SoftwareKeyStore(settings.master_key_file)


def _read_password(stream: TextIO) -> str:
    line = stream.readline()
    password = line[:-1] if line.endswith("\n") else line
    problem = check_password_policy(password)
    if problem is not None:
        raise ValidationError(problem)
    return password


# -- principals ---------------------------------------------------------------------------


async def _principals_add(conn: AsyncConnection[Any], _: Settings, args: argparse.Namespace) -> int:
    role = Role(args.role)
    if args.password_stdin:
        password_hash = await hash_password(_read_password(sys.stdin))
        async with conn.transaction():
            await store.create_principal(
                conn, name=args.name, role=role, kind="person", password_hash=password_hash
            )
            await _audit(conn, "principal.create", f"principal/{args.name}", role=role.value,
                         kind="person")  # fmt: skip
        _emit({"principal": args.name, "role": role.value, "kind": "person"})
        return 0
    async with conn.transaction():
        await store.create_principal(conn, name=args.name, role=role, kind="machine")
        key_id, api_key = await store.add_api_key(conn, args.name, label=args.label)
        await _audit(conn, "principal.create", f"principal/{args.name}", role=role.value,
                     kind="machine", key_id=key_id)  # fmt: skip
    _emit({"principal": args.name, "role": role.value, "api_key": api_key})
    return 0


async def _principals_list(conn: AsyncConnection[Any], _: Settings, __: argparse.Namespace) -> int:
    for row in await store.list_principals(conn):
        _emit(row)
    return 0


async def _principals_disable(
    conn: AsyncConnection[Any], _: Settings, args: argparse.Namespace
) -> int:
    async with conn.transaction():
        await store.disable_principal(conn, args.name)
        await _audit(conn, "principal.disable", f"principal/{args.name}")
    _emit({"principal": args.name, "disabled": True})
    return 0


# -- API keys -----------------------------------------------------------------------------


async def _keys_add(conn: AsyncConnection[Any], _: Settings, args: argparse.Namespace) -> int:
    async with conn.transaction():
        key_id, api_key = await store.add_api_key(conn, args.name, label=args.label)
        await _audit(conn, "api_key.create", f"principal/{args.name}", key_id=key_id)
    _emit({"principal": args.name, "key_id": key_id, "api_key": api_key})
    return 0


async def _keys_list(conn: AsyncConnection[Any], _: Settings, args: argparse.Namespace) -> int:
    for row in await store.list_api_keys(conn, args.name):
        _emit(row)
    return 0


async def _keys_revoke(conn: AsyncConnection[Any], _: Settings, args: argparse.Namespace) -> int:
    async with conn.transaction():
        owner = await store.revoke_api_key(conn, args.key_id)
        await _audit(conn, "api_key.revoke", f"principal/{owner}", key_id=args.key_id)
    _emit({"principal": owner, "key_id": args.key_id, "revoked": True})
    return 0


# -- the key store ------------------------------------------------------------------------


def parse_vending_keys(text: str) -> list[tuple[VendingKeyId, bytes]]:
    """JSON lines ``{"sgc": "123456", "krn": 1, "dkga": "02", "vending_key": "<hex>"}``.

    Errors name the line, never its key.
    """
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            sgc = str(row["sgc"])
            krn = int(row["krn"])
            dkga = Dkga.parse(str(row["dkga"]))
            secret = bytes.fromhex(str(row["vending_key"]))
        except (ValueError, KeyError, TypeError, TokenError):
            raise ValidationError(
                f'line {number}: expected {{"sgc", "krn", "dkga", "vending_key"}} with a'
                " 6-digit SGC, KRN 1-9, DKGA 02 or 04 and a hex key"
            ) from None
        if len(sgc) != 6 or not sgc.isdigit() or not 1 <= krn <= 9:
            raise ValidationError(f"line {number}: SGC is 6 digits and KRN 1-9")
        if len(secret) != dkga.vending_key_bytes:
            raise ValidationError(
                f"line {number}: a DKGA{dkga.value} vending key is {dkga.vending_key_bytes} bytes"
            )
        keys.append((VendingKeyId(sgc, krn, dkga), secret))
    return keys


async def _keys_import(
    conn: AsyncConnection[Any], settings: Settings, args: argparse.Namespace
) -> int:
    keystore = _keystore(settings)
    source = sys.stdin.read() if str(args.file) == "-" else args.file.read_text(encoding="utf-8")
    keys = parse_vending_keys(source)
    imported = 0
    async with conn.transaction():
        for key, secret in keys:
            if await keystore.import_vending_key(conn, key, secret):
                imported += 1
                await _audit(conn, "vending_key.import", key.name)
    _emit({"imported": imported, "unchanged": len(keys) - imported})
    return 0


async def _keys_rotate(
    conn: AsyncConnection[Any], settings: Settings, _: argparse.Namespace
) -> int:
    if settings.master_key_file is None:
        raise ConfigError("GATEWAY_MASTER_KEY_FILE is not set")
    key_id, count = await rotate_master_key(conn, settings.master_key_file)
    await _audit(conn, "master_key.rotate", f"master-key/{key_id}", rewrapped=count)
    await conn.commit()
    _emit({"master_key_id": key_id, "rewrapped": count})
    return 0


async def _keys_stored(
    conn: AsyncConnection[Any], settings: Settings, _: argparse.Namespace
) -> int:
    for info in await _keystore(settings).list_keys(conn):
        _emit({"name": info.name, "purpose": info.purpose, "master_key_id": info.master_key_id,
               "attributes": info.attributes, "created_at": info.created_at})  # fmt: skip
    return 0


async def _keys_provision(
    conn: AsyncConnection[Any], settings: Settings, args: argparse.Namespace
) -> int:
    keystore = _keystore(settings)
    meter_ids = args.meter_ids
    if not meter_ids:
        meter_ids = [m["meter_id"] for m in await registry.list_meters(conn, limit=10**9)]
    async with conn.transaction():
        written = await export_provisioning(conn, keystore, args.out, meter_ids)
        await _audit(conn, "command_key.export", f"provisioning/{args.out.name}",
                     meters=len(written))  # fmt: skip
    _emit({"provisioned": len(written), "directory": str(args.out)})
    return 0


def _init_master(settings: Settings, args: argparse.Namespace) -> int:
    path: Path | None = args.path or settings.master_key_file
    if path is None:
        raise ConfigError("give a path or set GATEWAY_MASTER_KEY_FILE")
    if path.exists():
        raise ConfigError(f"{path} exists; refusing to overwrite a master key")
    key = new_master_key()
    write_keyring(path, Keyring((key,)))
    _emit({"master_key_file": str(path), "master_key_id": key.key_id})
    return 0


# -- wiring ---------------------------------------------------------------------------------


def _db_command(command: Command) -> Callable[[Settings, argparse.Namespace], int]:
    def run(settings: Settings, args: argparse.Namespace) -> int:
        async def main() -> int:
            url = settings.database_url.get_secret_value()
            try:
                async with await psycopg.AsyncConnection.connect(url) as conn:
                    code = await command(conn, settings, args)
                    await conn.commit()
                    return code
            except psycopg.OperationalError as exc:
                raise StorageError(f"cannot reach the database: {exc}") from exc
            except psycopg.errors.UndefinedTable as exc:
                raise StorageError("the schema is missing; run `gateway migrate` first") from exc

        return asyncio.run(main())

    return run


def _name(text: str) -> str:
    import re  # noqa: PLC0415

    if not re.fullmatch(NAME_PATTERN, text):
        raise argparse.ArgumentTypeError("1-64 of A-Z a-z 0-9 _ . @ -")
    return text


def add_subcommands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``principals`` and ``keys`` to the ``gateway`` command."""
    principals = sub.add_parser("principals", help="people and machine clients").add_subparsers(
        dest="action", required=True
    )
    add = principals.add_parser("add", help="create a principal")
    add.add_argument("name", type=_name)
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    how = add.add_mutually_exclusive_group(required=True)
    how.add_argument("--api-key", action="store_true", help="a machine client; prints its key")
    how.add_argument("--password-stdin", action="store_true", help="a person; password on stdin")
    add.add_argument("--label", default="", help="label of the first API key")
    add.set_defaults(func=_db_command(_principals_add))
    principals.add_parser("list", help="list principals").set_defaults(
        func=_db_command(_principals_list)
    )
    disable = principals.add_parser("disable", help="disable a principal (keys and sessions)")
    disable.add_argument("name", type=_name)
    disable.set_defaults(func=_db_command(_principals_disable))

    keys = sub.add_parser("keys", help="API keys and the key store").add_subparsers(
        dest="action", required=True
    )
    kadd = keys.add_parser("add", help="another API key for a machine client (printed once)")
    kadd.add_argument("name", type=_name)
    kadd.add_argument("--label", default="")
    kadd.set_defaults(func=_db_command(_keys_add))
    klist = keys.add_parser("list", help="a principal's API keys (never the keys themselves)")
    klist.add_argument("name", type=_name)
    klist.set_defaults(func=_db_command(_keys_list))
    revoke = keys.add_parser("revoke", help="revoke an API key by id")
    revoke.add_argument("key_id", type=int)
    revoke.set_defaults(func=_db_command(_keys_revoke))
    imp = keys.add_parser(
        "import", help="import STS vending keys from a JSON-lines file ('-': stdin)"
    )
    imp.add_argument("file", type=Path)
    imp.set_defaults(func=_db_command(_keys_import))
    keys.add_parser(
        "rotate-master", help="new master key; re-wrap every data key (no restart needed)"
    ).set_defaults(func=_db_command(_keys_rotate))
    keys.add_parser("stored", help="list the key store (names and attributes only)").set_defaults(
        func=_db_command(_keys_stored)
    )
    prov = keys.add_parser("provision", help="write meters' provisioning files (command keys)")
    prov.add_argument("--out", type=Path, required=True, help="directory for <meter_id>.json")
    prov.add_argument("meter_ids", nargs="*", help="meters (default: every registered meter)")
    prov.set_defaults(func=_db_command(_keys_provision))
    init = keys.add_parser("init-master", help="create a master key file (refuses to overwrite)")
    init.add_argument("path", type=Path, nargs="?", help="default: GATEWAY_MASTER_KEY_FILE")
    init.set_defaults(func=_init_master)
