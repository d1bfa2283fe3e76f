"""JSON in, JSON out. Nothing else is ever stored: no pickle, no class names."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from json import encoder as _json_encoder
from typing import Any

DEFAULT_MAX_PAYLOAD = 1024 * 1024  # 1 MiB of encoded arguments

# Arrays and objects nested deeper than this are refused, on the way in and out. The
# json module recurses once per level against the interpreter's recursion limit (1,000):
# a record forged 100,000 levels deep ends in a RecursionError only after it has used
# up the whole stack, and anything that runs then at that depth (a garbage-collected
# object's finalizer, a warning) fails in turn. Checking the depth first keeps the
# decoder far from the limit; no real job nests its arguments 200 levels deep.
MAX_DEPTH = 200
# A bracket, or a whole string (whose brackets do not count). Possessive, so that a
# long string is consumed in one step rather than backtracked through.
_NESTING_TOKEN = re.compile(r'[\[\]{}]|"(?:[^"\\]++|\\.)*+"')

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_decoder = json.JSONDecoder()


class PayloadTooLarge(ValueError):
    """Encoded arguments over the app's ``max_payload`` (the HTTP API answers 413)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"payload is {size} bytes, over the limit of {limit} bytes "
            "(store large data elsewhere and pass a reference)"
        )
        self.size = size
        self.limit = limit


class TooDeep(ValueError):
    """JSON nested deeper than ``MAX_DEPTH`` arrays and objects."""

    def __init__(self) -> None:
        super().__init__(f"JSON nested deeper than {MAX_DEPTH} levels")


def too_deep(text: str) -> bool:
    """Whether *text* opens more than ``MAX_DEPTH`` arrays or objects at once.

    Linear and without recursion. Nearly every text is settled by its length or by two
    counts done in C; only one with more than ``MAX_DEPTH`` brackets is scanned.
    """
    if len(text) <= MAX_DEPTH or text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    depth = 0
    for token in _NESTING_TOKEN.finditer(text):
        char = text[token.start()]
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif char in "]}":
            depth -= 1
    return False


def batch_encoder() -> Callable[[Any], str]:
    """``_encoder.encode`` for the arguments of one ``enqueue_many`` call.

    ``JSONEncoder.encode`` builds a C encoder on every call, which is most of its cost
    for small arguments; this one is built once per batch. It is used by one thread, for
    one batch, then dropped, so its table of containers being encoded (the check for
    circular references) is never shared. A value it cannot encode leaves that table
    holding the containers it was inside; it is emptied then, so that encoding them
    again reports what is wrong with them, not a "circular reference".
    """
    make = getattr(_json_encoder, "c_make_encoder", None)  # not in typeshed
    if make is None:  # an interpreter without json's C accelerator
        return _encoder.encode
    markers: dict[int, Any] = {}
    # The arguments JSONEncoder.iterencode passes for _encoder's settings (compact,
    # ensure_ascii=False, allow_nan=False).
    chunks = make(
        markers,
        _encoder.default,
        _json_encoder.encode_basestring,
        None,
        ":",
        ",",
        False,
        False,
        False,
    )

    def encode(value: Any) -> str:
        try:
            return "".join(chunks(value, 0))
        except BaseException:
            markers.clear()
            raise

    return encode


def quick_args_json(
    args: list[Any] | tuple[Any, ...], encode: Callable[[Any], str], fits: int
) -> str | None:
    """``args`` as ``encode_arguments`` encodes them, or None where that would refuse them
    or must look closer: not JSON, nested too deep, or over ``fits`` characters (a size
    only the UTF-8 length settles). For ``enqueue_many``'s commonest item; the caller
    sends a None through ``encode_arguments``, which raises the specific error."""
    if not args:
        return "[]"
    try:
        text = encode(args)
    except (TypeError, ValueError, RecursionError):
        return None
    if len(text) > fits or (len(text) > MAX_DEPTH and too_deep(text)):
        return None
    return text


def dumps(
    value: Any, *, what: str = "value", encode: Callable[[Any], str] = _encoder.encode
) -> str:
    """Encode *value* as compact JSON, or raise ``TypeError`` saying what is wrong."""
    try:
        text = encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(f"{what} is not JSON-serializable: {exc}") from None
    if too_deep(text):
        # Refused here, where the caller can see it, not when a worker decodes it.
        raise TypeError(f"{what} is not JSON-serializable: {TooDeep()}")
    return text


def loads(text: str | None) -> Any:
    """Decode stored JSON; ``ValueError`` (``TooDeep`` among them) when it is not."""
    if text is None:
        return None
    if too_deep(text):
        raise TooDeep()
    return _decoder.decode(text)


def loads_for_display(text: str | None) -> Any:
    """Decode a stored value for an operator's view of a job, never raising.

    A record written around the API (straight into the store) may hold text that is not
    JSON, or JSON nested too deep to decode; listing jobs must still work (the worker
    dead-letters such a job), so the raw text is shown instead.
    """
    try:
        return loads(text)
    except ValueError:
        return text


def encode_arguments(
    args: Any,
    kwargs: Any,
    *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    encode: Callable[[Any], str] | None = None,
) -> tuple[str, str]:
    """Validate and encode a job's arguments; refuse early what a worker could not decode."""
    # The exact types first: the common call then pays no isinstance (a fifth of this
    # function's cost per job of an enqueue_many).
    if type(args) is not tuple and type(args) is not list and not isinstance(args, (list, tuple)):
        raise TypeError(f"args must be a list or tuple, not {type(args).__name__}")
    if type(kwargs) is not dict and not isinstance(kwargs, dict):
        raise TypeError(f"kwargs must be a dict, not {type(kwargs).__name__}")
    if kwargs:
        for key in kwargs:
            if not isinstance(key, str):
                raise TypeError(f"kwargs keys must be strings, not {type(key).__name__}")
    # No arguments at all is common enough to spare the encoder (and the size check).
    encode = encode or _encoder.encode  # or a batch's own (batch_encoder)
    args_json = dumps(args, what="args", encode=encode) if args else "[]"  # tuple -> list
    kwargs_json = dumps(kwargs, what="kwargs", encode=encode) if kwargs else "{}"
    if len(args_json) + len(kwargs_json) <= max_payload // 4:
        return args_json, kwargs_json  # at most 4 bytes of UTF-8 per character: fits
    size = len(args_json.encode()) + len(kwargs_json.encode())
    if size > max_payload:
        raise PayloadTooLarge(size, max_payload)
    return args_json, kwargs_json
