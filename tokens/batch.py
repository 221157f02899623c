"""The ``sts-token batch`` request format, as pure functions (docs/sts-token.md).

One request object in, one response object out; the CLI does the reading and writing. A
request names a key (a decoder key, or the parameters to derive one by DKGA02 / DKGA04) and a
token to issue; the response is ``{"id", "tokens": [...]}`` or ``{"id", "error": {"code",
"message"}}``. Every failure becomes an error response: nothing raised here stops a batch.

Omitted ``rnd`` / ``tid`` are drawn: RND from the injected source, TID from the injected clock
through a :class:`~tokens.tid.TidAllocator`, so several tokens for one meter in the same
minute (or after an explicit TID) still get strictly increasing TIDs.
Error messages name fields, never their values, so keys cannot leak into output.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Final

from tokens.codec import encode
from tokens.errors import BadRequestError, TokenError
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
from tokens.records import (
    ClearCredit,
    ClearTamperCondition,
    InitiateMeterTestOrDisplay,
    Medium,
    SetMaximumPhasePowerUnbalanceLimit,
    SetMaximumPowerLimit,
    SetTariffRate,
    SetWaterMeterFactor,
    TokenRecord,
    TransferCredit,
)
from tokens.tid import BaseDate, TidAllocator
from tokens.vending import RndSource, key_change_tokens, random_rnd

__all__ = ["BatchContext", "KeySpec", "parse_key", "process_line", "process_request",
           "record_to_json"]  # fmt: skip

DEFAULT_BASE_DATE: Final = BaseDate.Y2014
"""Base date for drawn TIDs when a key object names none (the 1993 base ran out in 2024)."""
_KEY_CACHE_SIZE: Final = 4096


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A parsed key object: the decoder key plus what TIDs and key changes need."""

    key: DecoderKey
    meter_id: str
    base_date: BaseDate
    key_type: KeyType | None = None
    krn: int | None = None
    ti: int | None = None
    sgc: str | None = None


def _cache_secret() -> bytes:
    return secrets.token_bytes(32)


@dataclass(slots=True)
class BatchContext:
    """What a batch run injects: a UTC clock, an RND source and the TID allocator.

    Derived keys are cached per distinct key object. The cache is indexed by an HMAC-SHA-256
    of the key object under a random secret of this context, never by the key object itself:
    the index stays meaningless outside the process (a core dump, a debugger, a log of the
    cache), and cannot be matched against a guessed key without the secret.
    """

    clock: Callable[[], datetime]
    rnd: RndSource = random_rnd
    allocator: TidAllocator = field(default_factory=TidAllocator)
    _keys: dict[bytes, KeySpec] = field(default_factory=dict, repr=False)
    _cache_secret: bytes = field(default_factory=_cache_secret, repr=False)

    def cached_key(self, material: bytes, build: Callable[[], KeySpec]) -> KeySpec:
        """Derive each distinct key object (``material``: its canonical bytes) once per run."""
        index = hmac.digest(self._cache_secret, material, hashlib.sha256)
        spec = self._keys.get(index)
        if spec is None:
            spec = build()
            if len(self._keys) >= _KEY_CACHE_SIZE:
                self._keys.clear()
            self._keys[index] = spec
        return spec


def _get(obj: Mapping[str, Any], name: str, where: str) -> Any:
    if name not in obj:
        raise BadRequestError(f"{where} is missing {name!r}")
    return obj[name]


def _int(obj: Mapping[str, Any], name: str, where: str, default: int | None = None) -> int:
    if name not in obj and default is not None:
        return default
    value = _get(obj, name, where)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequestError(f"{where}.{name} must be an integer")
    return value


def _opt_int(obj: Mapping[str, Any], name: str, where: str) -> int | None:
    if obj.get(name) is None:
        return None
    return _int(obj, name, where)


def _str(obj: Mapping[str, Any], name: str, where: str) -> str:
    value = _get(obj, name, where)
    if not isinstance(value, str):
        raise BadRequestError(f"{where}.{name} must be a string")
    return value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadRequestError(f"{where} must be a JSON object")
    return value


def _ea(obj: Mapping[str, Any], where: str) -> EncryptionAlgorithm:
    value = _get(obj, "ea", where)
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise BadRequestError(f'{where}.ea must be "07" or "11"')
    return EncryptionAlgorithm.parse(value)


def parse_key(value: Any, ctx: BatchContext, where: str = "key") -> KeySpec:
    """Parse a key object: ``{"decoder_key", "ea"}`` or ``{"dkga", "vending_key", ...}``."""
    obj = _object(value, where)
    material = json.dumps(obj, sort_keys=True, default=str).encode()
    return ctx.cached_key(material, lambda: _build_key(obj, where))


def _build_key(obj: Mapping[str, Any], where: str) -> KeySpec:
    if "decoder_key" in obj:
        key = DecoderKey.from_hex(_str(obj, "decoder_key", where), _ea(obj, where))
        base = BaseDate.parse(obj.get("base_date", DEFAULT_BASE_DATE))
        meter_id = "key:" + hashlib.sha256(key.key).hexdigest()[:32]
        kt = obj.get("key_type")
        return KeySpec(
            key=key,
            meter_id=str(obj["pan"]) if isinstance(obj.get("pan"), str) else meter_id,
            base_date=base,
            key_type=None if kt is None else KeyType.parse(_int(obj, "key_type", where)),
            krn=_opt_int(obj, "krn", where),
            ti=_opt_int(obj, "ti", where),
            sgc=None if obj.get("sgc") is None else _str(obj, "sgc", where),
        )
    if "dkga" not in obj:
        raise BadRequestError(f"{where} needs either 'decoder_key' or 'dkga'")
    dkga_value = _get(obj, "dkga", where)
    if not isinstance(dkga_value, str | int) or isinstance(dkga_value, bool):
        raise BadRequestError(f'{where}.dkga must be "02" or "04"')
    dkga = Dkga.parse(dkga_value)
    vending_key = VendingKey.from_hex(dkga, _str(obj, "vending_key", where))
    meter = MeterNumber.from_pan(_str(obj, "pan", where))
    base_value = obj.get("base_date")
    if base_value is None:
        if dkga is Dkga.DKGA04:
            raise BadRequestError(f"{where} is missing 'base_date' (DKGA04 needs it)")
        base_value = DEFAULT_BASE_DATE
    sgc = _get(obj, "sgc", where)
    if not isinstance(sgc, str | int) or isinstance(sgc, bool):
        raise BadRequestError(f"{where}.sgc must be a string of 6 digits")
    params = KeyParameters(
        meter=meter,
        key_type=KeyType.parse(_int(obj, "key_type", where)),
        sgc=sgc if isinstance(sgc, str) else f"{sgc:06d}",
        ti=_int(obj, "ti", where),
        krn=_int(obj, "krn", where),
        base_date=BaseDate.parse(base_value),
        ea=_ea(obj, where),
    )
    return KeySpec(
        key=derive_decoder_key(vending_key, params),
        meter_id=meter.pan,
        base_date=params.base_date,
        key_type=params.key_type,
        krn=params.krn,
        ti=params.ti,
        sgc=params.sgc,
    )


def _rnd_tid(token: Mapping[str, Any], spec: KeySpec, ctx: BatchContext) -> tuple[int, int]:
    rnd = _opt_int(token, "rnd", "token")
    if rnd is None:
        rnd = ctx.rnd()
    tid = _opt_int(token, "tid", "token")
    if tid is None:
        tid = ctx.allocator.allocate(spec.meter_id, ctx.clock(), spec.base_date)
    elif 0 <= tid < 1 << 24:
        ctx.allocator.observe(spec.meter_id, tid, spec.base_date)
    return rnd, tid


_SIMPLE_TYPES: Final[dict[str, tuple[str, Callable[..., TokenRecord]]]] = {
    "set_max_power_limit": ("watts", lambda v, t, r: SetMaximumPowerLimit(watts=v, tid=t, rnd=r)),
    "set_max_phase_power_unbalance_limit": (
        "watts", lambda v, t, r: SetMaximumPhasePowerUnbalanceLimit(watts=v, tid=t, rnd=r),
    ),
    "clear_credit": ("register", lambda v, t, r: ClearCredit(register=v, tid=t, rnd=r)),
    "set_tariff_rate": ("rate", lambda v, t, r: SetTariffRate(rate=v, tid=t, rnd=r)),
    "set_water_meter_factor": (
        "factor", lambda v, t, r: SetWaterMeterFactor(factor=v, tid=t, rnd=r),
    ),
}  # fmt: skip
TOKEN_TYPES: Final = (
    "credit", *_SIMPLE_TYPES, "clear_tamper", "key_change", "meter_test",
)  # fmt: skip


def _issue(request: Mapping[str, Any], ctx: BatchContext) -> list[str]:
    token = _object(_get(request, "token", "request"), "token")
    kind = _get(token, "type", "token")
    if kind == "meter_test":
        record: TokenRecord = InitiateMeterTestOrDisplay(
            control=_int(token, "control", "token"),
            manufacturer_code=_int(token, "manufacturer_code", "token"),
            subclass=_int(token, "subclass", "token", default=0),
        )
        return [encode(record)]
    if not isinstance(kind, str) or kind not in TOKEN_TYPES:
        raise BadRequestError(f"token.type must be one of {', '.join(TOKEN_TYPES)}")
    spec = parse_key(_get(request, "key", "request"), ctx)
    if kind == "key_change":
        return _key_change(token, spec, ctx)
    if kind == "credit":
        medium = Medium.parse(_str(token, "medium", "token"))
        tenths = _int(token, "tenths", "token")
        rnd, tid = _rnd_tid(token, spec, ctx)
        record = TransferCredit(medium=medium, tenths=tenths, tid=tid, rnd=rnd)
    elif kind == "clear_tamper":
        rnd, tid = _rnd_tid(token, spec, ctx)
        record = ClearTamperCondition(tid=tid, rnd=rnd)
    else:
        value_name, build = _SIMPLE_TYPES[kind]
        value = _int(token, value_name, "token")
        rnd, tid = _rnd_tid(token, spec, ctx)
        record = build(value, tid, rnd)
    return [encode(record, spec.key)]


def _key_change(token: Mapping[str, Any], current: KeySpec, ctx: BatchContext) -> list[str]:
    new = parse_key(_get(token, "new_key", "token"), ctx, "token.new_key")
    if new.key_type is None or new.krn is None or new.ti is None:
        raise BadRequestError("token.new_key needs 'key_type', 'krn' and 'ti'")
    return list(
        key_change_tokens(
            current.key,
            new.key,
            key_type=new.key_type,
            krn=new.krn,
            ti=new.ti,
            sgc=new.sgc,
            ken=_int(token, "ken", "token", default=255),
            ro=_int(token, "ro", "token", default=0),
        )
    )


def process_request(request: Any, ctx: BatchContext) -> dict[str, Any]:
    """The response object for one parsed request; never raises a TokenError."""
    request_id = request.get("id") if isinstance(request, dict) else None
    try:
        tokens = _issue(_object(request, "request"), ctx)
    except TokenError as exc:
        return {"id": request_id, "error": {"code": exc.code, "message": exc.message}}
    return {"id": request_id, "tokens": tokens}


def process_line(line: str, ctx: BatchContext) -> dict[str, Any]:
    """The response object for one line of JSON text."""
    try:
        request = json.loads(line)
    except (ValueError, RecursionError):
        return {
            "id": None,
            "error": {"code": "invalid_json", "message": "the line is not valid JSON"},
        }
    return process_request(request, ctx)


def record_to_json(record: TokenRecord, *, show_key_material: bool = False) -> dict[str, Any]:
    """A JSON-able description of a decoded record (type, class, subclass and fields).

    The new-key fields of key-change sections (``nk_*``) are parts of a decoder key, a secret:
    they are shown as ``"hidden"`` unless ``show_key_material`` is set.
    """
    values: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if isinstance(value, Medium):
            value = value.name.lower()
        elif f.name.startswith("nk_"):
            # key bytes are conventionally read in hex
            value = f"{value:08x}" if show_key_material else "hidden"
        values[f.name] = value
    return {
        "type": record.name,
        "class": int(record.token_class),
        "subclass": record.subclass,
        "fields": values,
    }
