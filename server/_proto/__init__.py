"""Generated gRPC modules (``server/_codegen.py`` writes everything here but this file).

Importing the package generates the modules first when they are missing or older than a
``.proto``, so ``from server._proto.profile_embedding.v1 import profile_embedding_pb2`` works in a
fresh checkout without ``make protos``.
"""

from __future__ import annotations

from server._codegen import ensure_generated

ensure_generated()
