"""What went wrong, in protocol-free words: every domain exception has one *kind*.

The core (registry, batcher, servable, upload checks) raises exceptions that know nothing of
HTTP or gRPC. ``DOMAIN`` below is the one table that gives each its kind, the error code our
own REST API shows, and whether a retry soon may succeed. Each front door keeps only its
small kind → status table (``app.errors.STATUS``, ``app.kserve.ERRORS``,
``app.tfserving.CODES``), so a new domain exception is one line here, and
``tests/test_error_kinds.py`` sends every one through every door::

    kind         our REST   KServe v2 REST / gRPC     TF Serving gRPC (its REST)
    invalid      400        400 INVALID_ARGUMENT      INVALID_ARGUMENT (400)
    too_large    413        413 INVALID_ARGUMENT      INVALID_ARGUMENT (400)
    unsupported  415        415 INVALID_ARGUMENT      INVALID_ARGUMENT (400)
    not_found    404        404 NOT_FOUND             NOT_FOUND (404)
    overloaded   503        503 RESOURCE_EXHAUSTED    RESOURCE_EXHAUSTED (429)
    unavailable  503        503 UNAVAILABLE           UNAVAILABLE (503)
    deadline     504        504 DEADLINE_EXCEEDED     DEADLINE_EXCEEDED (504)
    internal     500        500 INTERNAL              INTERNAL (500)

Anything not in the table is a bug: every door logs it with its traceback and answers its
protocol's internal error, leaking nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from . import images, wire
from .batching import BatcherClosed, DeadlineExceeded, QueueFull
from .registry import (
    BadModelSelection,
    BadVersion,
    ModelLookupError,
    ModelNotFound,
    ModelOverBudget,
    ModelUnavailable,
    NoModels,
    VersionNotFound,
)
from .servable import ModelRunError, UndecodableImage
from .tensors import BadTensor, NotAnImageModel, TensorTooLarge, UnknownSignature


class Kind(enum.Enum):
    INVALID = "invalid"  # the request is malformed: fixing it is the client's job
    TOO_LARGE = "too_large"  # over a configured size limit
    UNSUPPORTED = "unsupported"  # a real image in a format we do not serve
    NOT_FOUND = "not_found"  # no such model or version
    OVERLOADED = "overloaded"  # a queue or the decode budget is full: retry soon
    UNAVAILABLE = "unavailable"  # nothing can serve it right now (loading, refused, closing)
    DEADLINE = "deadline"  # it waited longer than its deadline
    INTERNAL = "internal"  # the model failed on input it accepted: a server fault


@dataclass(frozen=True, slots=True)
class Described:
    kind: Kind
    code: str  # our REST API's error code, e.g. "model_not_found"
    retry: bool = False  # a retry soon may succeed (our REST and v2 add Retry-After: 1)


# Domain exception -> what it is. Looked up along the exception's MRO (most specific first).
DOMAIN: dict[type[Exception], Described] = {
    BadModelSelection: Described(Kind.INVALID, "bad_model_selection"),
    BadVersion: Described(Kind.INVALID, "bad_version"),
    wire.BadBase64: Described(Kind.INVALID, "invalid_base64"),
    wire.BadJson: Described(Kind.INVALID, "invalid_json"),
    wire.JsonTooLarge: Described(Kind.TOO_LARGE, "json_too_large"),
    wire.BadEncoding: Described(Kind.INVALID, "invalid_encoding"),
    wire.UnsupportedEncoding: Described(Kind.UNSUPPORTED, "unsupported_encoding"),
    wire.BodyTooLarge: Described(Kind.TOO_LARGE, "payload_too_large"),
    ModelLookupError: Described(Kind.NOT_FOUND, "model_not_found"),  # the base of the three below
    ModelNotFound: Described(Kind.NOT_FOUND, "model_not_found"),
    VersionNotFound: Described(Kind.NOT_FOUND, "version_not_found"),
    ModelUnavailable: Described(Kind.UNAVAILABLE, "model_unavailable", retry=True),
    ModelOverBudget: Described(Kind.UNAVAILABLE, "model_over_budget"),  # never loads: retrying will not help
    NoModels: Described(Kind.UNAVAILABLE, "no_models"),
    UndecodableImage: Described(Kind.INVALID, "invalid_image"),
    images.EmptyImage: Described(Kind.INVALID, "empty_image"),
    images.NotAnImage: Described(Kind.INVALID, "invalid_image"),
    images.CorruptImage: Described(Kind.INVALID, "invalid_image"),
    images.ImageError: Described(Kind.INVALID, "invalid_image"),
    images.UnsupportedFormat: Described(Kind.UNSUPPORTED, "unsupported_image_format"),
    images.ImageTooLarge: Described(Kind.TOO_LARGE, "image_too_large"),
    images.TooManyImages: Described(Kind.TOO_LARGE, "too_many_images"),
    images.RequestTooLarge: Described(Kind.TOO_LARGE, "request_too_large"),
    images.DecodeBusy: Described(Kind.OVERLOADED, "overloaded", retry=True),
    QueueFull: Described(Kind.OVERLOADED, "overloaded", retry=True),
    DeadlineExceeded: Described(Kind.DEADLINE, "deadline_exceeded"),
    BatcherClosed: Described(Kind.UNAVAILABLE, "unavailable", retry=True),
    ModelRunError: Described(Kind.INTERNAL, "model_error"),
    BadTensor: Described(Kind.INVALID, "invalid_tensor"),
    TensorTooLarge: Described(Kind.TOO_LARGE, "tensor_too_large"),
    UnknownSignature: Described(Kind.INVALID, "unknown_signature"),
    NotAnImageModel: Described(Kind.INVALID, "not_an_image_model"),
}


def describe(exc: BaseException) -> Described | None:
    """What ``exc`` is, or None when it is not a domain exception (a bug)."""
    for cls in type(exc).__mro__:
        found = DOMAIN.get(cls)
        if found is not None:
            return found
    return None
