"""``sts-token``: issue, decode and bulk-issue STS tokens (docs/sts-token.md).

A thin argparse shell over :mod:`tokens`; it owns the I/O (stdin, stdout, environment, the
clock) and nothing else. It imports only :mod:`tokens` and the standard library so it starts
fast. Keys are secrets: they are never taken on the command line (where ``ps`` and shell
history show them) but read from a file (``--decoder-key-file PATH``, ``-`` for stdin) or an
environment variable, and never printed, echoed in errors or logged.

    sts-token issue credit --decoder-key-file key.hex --ea 07 --medium electricity --tenths 100
    STS_DECODER_KEY=… sts-token decode --ea 07 "2371 6100 5011 8319 4197"
    sts-token batch < requests.jsonl > responses.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from tokens import TokenError, decode, format_token
from tokens.batch import BatchContext, parse_key, process_line, process_request, record_to_json
from tokens.tid import BaseDate, datetime_from_tid

__all__ = ["main"]

_MAX_KEY_FILE_BYTES: Final = 4096


@dataclass(frozen=True, slots=True)
class _KeySource:
    """Where one key may come from: a ``--…-file`` option or an environment variable."""

    option: str
    env: str
    what: str

    @property
    def dest(self) -> str:
        return self.option.removeprefix("--").replace("-", "_")


_DECODER_KEY: Final = _KeySource("--decoder-key-file", "STS_DECODER_KEY", "decoder key")
_VENDING_KEY: Final = _KeySource("--vending-key-file", "STS_VENDING_KEY", "vending key")
_NEW_VENDING_KEY: Final = _KeySource(
    "--new-vending-key-file", "STS_NEW_VENDING_KEY", "new vending key"
)


class KeyInputError(Exception):
    """A key could not be read; the message names the source, never the key."""


class _RefuseKeyArgument(argparse.Action):
    """``--decoder-key HEX`` and the like: refused, since argv is visible to every user."""

    def __init__(self, *args: Any, source: _KeySource, **kwargs: Any) -> None:
        self.source = source
        super().__init__(*args, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        del namespace, values  # the value is a secret: never repeated
        parser.error(
            f"{option_string} is not accepted: a key on the command line is visible in the "
            f"process list and shell history; use {self.source.option} PATH "
            f"({self.source.option} - reads it from stdin) or set ${self.source.env}"
        )


def _add_key_source(group: Any, source: _KeySource, refused: str) -> None:
    group.add_argument(
        source.option,
        metavar="PATH",
        help=f"file holding the {source.what} in hex ('-' for stdin); or set ${source.env}",
    )
    group.add_argument(refused, action=_RefuseKeyArgument, source=source, help=argparse.SUPPRESS)


def _read_key(
    source: _KeySource, args: argparse.Namespace, env: Mapping[str, str], stdin: TextIO
) -> str | None:
    """The key text from the option's file (or stdin), else the environment, else None."""
    path = getattr(args, source.dest, None)
    if path is None:
        value = env.get(source.env)
        return value.strip() if value else None
    if path == "-":
        text = stdin.read(_MAX_KEY_FILE_BYTES + 1)
        where = "stdin"
    else:
        try:
            with open(path, encoding="ascii") as handle:
                text = handle.read(_MAX_KEY_FILE_BYTES + 1)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
            raise KeyInputError(f"cannot read the {source.what} file {path!r}: {reason}") from None
        where = f"the file {path!r}"
    text = text.strip()
    if not text or len(text) > _MAX_KEY_FILE_BYTES:
        raise KeyInputError(f"{where} does not hold one {source.what} in hex")
    return text


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _key_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group(
        "key (a decoder key, or DKGA parameters to derive it; keys come from files or the "
        "environment, never from the command line)"
    )
    _add_key_source(group, _DECODER_KEY, "--decoder-key")
    group.add_argument("--ea", choices=("07", "09", "11"), help="encryption algorithm")
    group.add_argument("--dkga", choices=("02", "04"), help="derive the key by DKGA02/DKGA04")
    _add_key_source(group, _VENDING_KEY, "--vending-key")
    group.add_argument("--pan", help="18-digit meter PAN")
    group.add_argument("--key-type", type=int, choices=range(4), metavar="KT")
    group.add_argument("--sgc", help="6-digit supply group code")
    group.add_argument("--ti", type=int, metavar="0-99", help="tariff index")
    group.add_argument("--krn", type=int, metavar="1-9", help="key revision number")
    group.add_argument("--base-date", type=int, choices=(1993, 2014, 2035))
    group.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parent


@dataclass(frozen=True, slots=True)
class _Keys:
    """The secrets of one invocation, read once before anything else happens."""

    decoder: str | None
    vending: str | None
    new_vending: str | None


def _read_keys(args: argparse.Namespace, env: Mapping[str, str], stdin: TextIO) -> _Keys:
    sources = [_DECODER_KEY, _VENDING_KEY, _NEW_VENDING_KEY]
    from_stdin = [s.option for s in sources if getattr(args, s.dest, None) == "-"]
    if len(from_stdin) > 1:
        raise KeyInputError(f"only one key can be read from stdin ({', '.join(from_stdin)})")
    return _Keys(*(_read_key(s, args, env, stdin) for s in sources))


def _key_object(args: argparse.Namespace, keys: _Keys) -> dict[str, Any] | None:
    decoder_key = keys.decoder
    obj: dict[str, Any] = {}
    if args.ea is not None:
        obj["ea"] = args.ea
    if args.base_date is not None:
        obj["base_date"] = args.base_date
    if args.dkga is None:
        if decoder_key is None:
            return None
        obj["decoder_key"] = decoder_key
        return obj
    obj["dkga"] = args.dkga
    obj["vending_key"] = keys.vending or ""
    for name in ("pan", "key_type", "sgc", "ti", "krn"):
        value = getattr(args, name)
        if value is not None:
            obj[name] = value
    return obj


def _token_object(
    args: argparse.Namespace, key: dict[str, Any] | None, keys: _Keys
) -> dict[str, Any]:
    token: dict[str, Any] = {"type": args.token_type}
    for name in ("rnd", "tid", "watts", "register", "rate", "factor", "control", "ken", "ro"):
        value = getattr(args, name, None)
        if value is not None:
            token[name] = value
    match args.token_type:
        case "credit":
            token["medium"] = args.medium
            token["tenths"] = args.tenths
        case "meter_test":
            token["manufacturer_code"] = args.manufacturer_code
            token["subclass"] = args.subclass
        case "key_change":
            token["new_key"] = _new_key_object(args, key, keys)
    return token


def _new_key_object(
    args: argparse.Namespace, key: dict[str, Any] | None, keys: _Keys
) -> dict[str, Any]:
    """The current key object with the --new-* options applied."""
    new_key = dict(key or {})
    overrides = {
        "dkga": args.new_dkga,
        "key_type": args.new_key_type,
        "sgc": args.new_sgc,
        "ti": args.new_ti,
        "krn": args.new_krn,
        "base_date": args.new_base_date,
        "ea": args.new_ea,
    }
    new_key.update({k: v for k, v in overrides.items() if v is not None})
    if keys.new_vending:
        new_key["vending_key"] = keys.new_vending
    new_key.pop("decoder_key", None)
    return new_key


def _add_issue_parser(commands: Any) -> None:
    issue = commands.add_parser("issue", help="issue one token (or a key-change set)")
    kinds = issue.add_subparsers(dest="token_type", required=True, metavar="TYPE")
    key_opts = _key_options()
    tid_opts = argparse.ArgumentParser(add_help=False)
    tid_opts.add_argument("--rnd", type=int, help="0-15 (default: random)")
    tid_opts.add_argument("--tid", type=int, help="default: minutes since the base date, now")

    def kind(name: str, help_text: str, *, tid: bool = True) -> argparse.ArgumentParser:
        parents = [key_opts, tid_opts] if tid else [key_opts]
        parser: argparse.ArgumentParser = kinds.add_parser(
            name.replace("_", "-"), help=help_text, parents=parents
        )
        parser.set_defaults(token_type=name)
        return parser

    credit = kind("credit", "transfer credit (class 0)")
    credit.add_argument("--medium", choices=("electricity", "water", "gas", "time"))
    credit.add_argument("--tenths", type=int, required=True, help="amount in tenths of a unit")
    credit.set_defaults(medium="electricity")
    kind("set_max_power_limit", "maximum power limit").add_argument(
        "--watts", type=int, required=True
    )
    kind("set_max_phase_power_unbalance_limit", "phase unbalance limit").add_argument(
        "--watts", type=int, required=True
    )
    kind("clear_credit", "clear a credit register").add_argument(
        "--register", type=int, default=0xFFFF, help="0-3, or 65535 for all (default)"
    )
    kind("set_tariff_rate", "tariff rate").add_argument("--rate", type=int, required=True)
    kind("set_water_meter_factor", "water meter factor").add_argument(
        "--factor", type=int, required=True
    )
    kind("clear_tamper", "clear the tamper condition")
    test = kind("meter_test", "meter test / display (class 1, no key)", tid=False)
    test.add_argument("--control", type=int, required=True)
    test.add_argument("--manufacturer-code", type=int, default=0)
    test.add_argument("--subclass", type=int, choices=(0, 1), default=0)
    change = kind("key_change", "key change sections under the current key", tid=False)
    change.add_argument("--ken", type=int, default=255, help="key expiry number 0-255")
    change.add_argument("--ro", type=int, choices=(0, 1), default=0, help="rollover")
    change.add_argument("--new-dkga", choices=("02", "04"))
    _add_key_source(change, _NEW_VENDING_KEY, "--new-vending-key")
    change.add_argument("--new-key-type", type=int, choices=range(4), metavar="KT")
    change.add_argument("--new-sgc")
    change.add_argument("--new-ti", type=int)
    change.add_argument("--new-krn", type=int)
    change.add_argument("--new-base-date", type=int, choices=(1993, 2014, 2035))
    change.add_argument("--new-ea", choices=("07", "11"))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sts-token", description="Issue and decode STS prepaid tokens (IEC 62055-41)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_issue_parser(commands)
    dec = commands.add_parser("decode", help="decode a token", parents=[_key_options()])
    dec.add_argument("token", help="20 digits; spaces and dashes are ignored")
    dec.add_argument(
        "--show-key-material",
        action="store_true",
        help="print the new-key fields of key-change tokens (a secret; hidden by default)",
    )
    commands.add_parser(
        "batch", help="JSON Lines requests on stdin -> one JSON line each on stdout"
    )
    return parser


def _fail(exc: TokenError, as_json: bool, out: TextIO, err: TextIO) -> int:
    if as_json:
        out.write(json.dumps({"error": {"code": exc.code, "message": exc.message}}) + "\n")
    else:
        err.write(f"sts-token: {exc.code}: {exc.message}\n")
    return 1


def _issue(args: argparse.Namespace, keys: _Keys, out: TextIO, err: TextIO) -> int:
    key = _key_object(args, keys)
    request: dict[str, Any] = {"token": _token_object(args, key, keys)}
    if key is not None:
        request["key"] = key
    if args.token_type == "key_change" and request["token"]["new_key"] == key:  # noqa: S105
        # A "change" to the very same key spends a token set and changes nothing: an operator
        # forgot the --new-* options.
        err.write("sts-token: bad_request: the new key equals the current key; give --new-*\n")
        return 1
    response = process_request(request, BatchContext(clock=_utc_now))
    response.pop("id", None)
    if "error" in response:
        if args.json:
            out.write(json.dumps(response) + "\n")
        else:
            err.write(f"sts-token: {response['error']['code']}: {response['error']['message']}\n")
        return 1
    if args.json:
        out.write(json.dumps(response) + "\n")
    else:
        for token in response["tokens"]:
            out.write(format_token(token) + "\n")
    return 0


def _decode(args: argparse.Namespace, keys: _Keys, out: TextIO, err: TextIO) -> int:
    key_obj = _key_object(args, keys)
    try:
        key = None if key_obj is None else parse_key(key_obj, BatchContext(clock=_utc_now)).key
        record = decode(args.token, key)
    except TokenError as exc:
        return _fail(exc, args.json, out, err)
    described = record_to_json(record, show_key_material=args.show_key_material)
    tid = described["fields"].get("tid")
    if args.base_date is not None and isinstance(tid, int):
        described["issued_at"] = datetime_from_tid(tid, BaseDate(args.base_date)).isoformat()
    if args.json:
        out.write(json.dumps(described) + "\n")
        return 0
    out.write(f"{described['type']} (class {described['class']}, ")
    out.write(f"subclass {described['subclass']})\n")
    for name, value in described["fields"].items():
        out.write(f"  {name}: {value}\n")
    if "issued_at" in described:
        out.write(f"  issued_at: {described['issued_at']}\n")
    return 0


def _batch(stdin: Any, out: TextIO, err: TextIO) -> int:
    ctx = BatchContext(clock=_utc_now)
    status = 0
    for number, raw in enumerate(stdin, start=1):
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        try:
            response = process_line(line, ctx)
        except Exception as exc:  # a bug must not stop the batch: reported, then go on
            status = 1
            err.write(f"sts-token: line {number}: internal error {type(exc).__name__}\n")
            # The traceback names code and lines only (no locals), so no key material.
            err.write("".join(traceback.format_exception(exc)))
            response = {
                "id": None,
                "error": {"code": "internal_error", "message": type(exc).__name__},
            }
        out.write(json.dumps(response, separators=(",", ":")) + "\n")
        out.flush()
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sts-token`` console script."""
    args = _build_parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    if args.command == "batch":
        return _batch(sys.stdin.buffer, out, err)
    try:
        keys = _read_keys(args, os.environ, sys.stdin)
    except KeyInputError as exc:
        err.write(f"sts-token: bad_key_input: {exc}\n")
        return 2
    if args.command == "decode":
        return _decode(args, keys, out, err)
    return _issue(args, keys, out, err)


if __name__ == "__main__":
    sys.exit(main())
