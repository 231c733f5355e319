"""Scale-out jobs on Ray Data: embed and classify a profile database, audiences, index builds.

* :mod:`server.batch.sources`: input discovery and chunked, validating readers (JSONL / Parquet).
* :mod:`server.batch.incremental`: the output folder: result files, manifest, skip logic, atomic
writes.
* :mod:`server.batch.predictor`: the actor-pool callable that loads the model once per actor.
* :mod:`server.batch.pipeline`: ``run_batch`` (``profile-embed batch``).
* :mod:`server.batch.audience_job`: ``run_audience`` (``profile-embed batch-audience``).
* :mod:`server.batch.index_build`: ``build_index`` (``profile-embed index build``).

Ray is an optional dependency (extra ``[scale]``); it is imported inside functions only.
"""

from __future__ import annotations
