"""Errors raised by the freezing library.

Every failure a user can cause or fix (a wrong path, a missing ``.data`` shard, a
misspelt node name, a frozen graph that disagrees with its source) is a
``FreezeError`` with a message that says what to do; ``scripts/freeze.py`` prints it
on one line and exits with status 2, without a traceback. Anything else escaping the
library is a bug in it.

Hierarchy::

    FreezeError                  base class; catch this one
    ├── SourceError              the source cannot be read: no such file, unsupported
    │                            kind, missing .data shard or .meta, restore failed
    ├── NodeNotFoundError        a named node, tensor or signature is not there
    │                            (the message carries "did you mean ...")
    ├── AmbiguousChoiceError     inputs/outputs were not given and the graph has
    │                            several candidates (they are listed)
    ├── GraphError               the graph cannot be frozen into something servable:
    │                            an unfed placeholder, an unsupported variable use,
    │                            a result that does not import, not an image model
    ├── VerificationError        the frozen graph's outputs differ from the source's,
    │                            or our preprocessing from the user's reference
    │                            (carries ``.verification``: a Verification or ReferenceCheck)
    └── ExportError              the destination is taken (an existing version) or
                                 the manifest/labels would be invalid
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .reference import ReferenceCheck
    from .verification import Verification


class FreezeError(Exception):
    """A failure the user can act on; the message says how."""


class SourceError(FreezeError):
    """The checkpoint, SavedModel, Keras file or graph cannot be read."""


class NodeNotFoundError(FreezeError):
    """A node, tensor or signature named by the user does not exist."""


class AmbiguousChoiceError(FreezeError):
    """Inputs or outputs must be named because several candidates exist."""


class GraphError(FreezeError):
    """The chosen subgraph cannot become a self-contained frozen graph."""


class VerificationError(FreezeError):
    """The frozen graph does not compute what the source computes (or what the reference does)."""

    def __init__(self, message: str, verification: Verification | ReferenceCheck) -> None:
        super().__init__(message)
        self.verification = verification


class ExportError(FreezeError):
    """The model cannot be written where or how it was asked."""
