"""``profile-embed client predict|embed|info``: call a running server from scripts (JSON lines).

``client predict`` prints the same JSON object per profile as ``profile-embed predict`` (both are
built by :func:`server.commands.predict.prediction_record` from ``heads.base.Prediction``), so a
script reads one shape whether the model runs in-process or behind the server.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from server.commands.invalid_rows import add_skip_invalid
from server.commands.outputs import positive


def register(subparsers: Any) -> None:
    """Add the ``client`` subcommand with its actions ``predict``, ``embed`` and ``info``.

    Each action is its own parser, so options may come before or after the input file
    (``client predict --target HOST:PORT profiles.jsonl``).
    """
    p = subparsers.add_parser(
        "client",
        help="call a running gRPC server (JSON lines out)",
        description="Send profiles (JSONL, '-' = stdin) to a server; print one JSON line each.",
    )
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--target", default="localhost:50051", help="host:port")
    connection.add_argument("--token-file", type=Path, default=None, help="bearer token file")
    connection.add_argument("--tls", action="store_true", help="use TLS (system roots or --ca)")
    connection.add_argument("--ca", type=Path, default=None, help="PEM CA to verify the server")
    connection.add_argument("--cert", type=Path, default=None, help="PEM client cert (mTLS)")
    connection.add_argument("--key", type=Path, default=None, help="PEM client key (mTLS)")
    connection.add_argument(
        "--timeout", type=positive(float), default=60.0, help="seconds per call"
    )
    profiles = argparse.ArgumentParser(add_help=False)
    profiles.add_argument("input", nargs="?", default="-", help="JSON lines ('-' = stdin)")
    profiles.add_argument(
        "--batch-size", type=positive(int), default=256, help="profiles per request"
    )
    add_skip_invalid(profiles)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    predict = actions.add_parser(
        "predict",
        parents=[connection, profiles],
        help="every head's prediction per profile (the JSON of 'profile-embed predict')",
        description='One JSON object per profile: {"id": ..., "<head>": {"label": ... | null, '
        '"argmax": ..., "score": ..., "reason": ..., "probabilities": {...}}}, as '
        "'profile-embed predict' writes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    predict.add_argument("--heads", default="", help="comma-separated head names (default: all)")
    actions.add_parser(
        "embed",
        parents=[connection, profiles],
        help='{"id", "embedding"} per profile',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    actions.add_parser(
        "info",
        parents=[connection],
        help="the server's model, heads and limits (one JSON object)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for action in actions.choices.values():
        action.set_defaults(func=run)


class _Reader:
    """Profiles of a JSON-lines stream, validated line by line (the ``--skip-invalid`` rule).

    Malformed JSON, a wrongly typed field or an id seen before raises an ``InvalidInputError``
    naming the input, line and field; with ``skip_invalid`` the row is listed on stderr (the first
    ``MAX_LISTED``), counted and skipped. Rows are streamed, so without ``skip_invalid`` the
    results of the lines before the bad one have already been printed when it stops.
    """

    def __init__(self, path: str, *, skip_invalid: bool) -> None:
        self.path = path
        self.source = "<stdin>" if path == "-" else path
        self.skip_invalid = skip_invalid
        self.n_read = 0
        self.errors: list[Any] = []

    def __iter__(self) -> Any:
        from embedder.errors import InvalidInputError

        # utf-8-sig: a byte-order mark (Windows editors write one) is read as nothing, as
        # `profile-embed predict` and `embed` read it
        stream = sys.stdin if self.path == "-" else open(self.path, encoding="utf-8-sig")
        seen: dict[str, int] = {}
        with stream:
            try:
                for line_no, line in enumerate(stream, 1):
                    if not line.strip():
                        continue
                    self.n_read += 1
                    try:
                        profile = self._profile(line, line_no, seen)
                    except InvalidInputError as err:
                        if not self.skip_invalid:
                            raise
                        self._skip(err)
                        continue
                    seen[profile.id] = line_no
                    yield profile
            except UnicodeDecodeError as err:
                raise InvalidInputError(
                    f"not valid UTF-8 text ({err.reason}); save the input as UTF-8",
                    source=self.source,
                ) from None

    def _profile(self, line: str, line_no: int, seen: dict[str, int]) -> Any:
        from embedder.errors import InvalidInputError
        from embedder.profile import Profile

        where: dict[str, Any] = {"source": self.source, "line": line_no}
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InvalidInputError(
                f"malformed JSON at column {err.colno}: {err.msg}; expected one JSON object per "
                "line",
                **where,
            ) from None
        profile = Profile.from_dict(record, **where)[0]
        if profile.id in seen:
            raise InvalidInputError(
                f"duplicate id {profile.id!r}: first seen at line {seen[profile.id]}; ids must be "
                "unique within an input",
                field="id",
                **where,
            )
        return profile

    def _skip(self, err: Any) -> None:
        from server.commands.invalid_rows import MAX_LISTED, describe

        self.errors.append(err)
        if len(self.errors) <= MAX_LISTED:
            print(describe(err), file=sys.stderr)

    def report(self) -> None:
        """With ``--skip-invalid``: how many more were skipped, and the count line (stderr)."""
        from server.commands.invalid_rows import MAX_LISTED, count_line

        if not self.skip_invalid:
            return
        if len(self.errors) > MAX_LISTED:
            print(f"... and {len(self.errors) - MAX_LISTED} more invalid rows", file=sys.stderr)
        n_bad = len(self.errors)
        print(count_line(self.source, self.n_read, self.n_read - n_bad, n_bad), file=sys.stderr)


def _batches(items: Any, size: int) -> Any:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _embed(client: Any, reader: _Reader, batch_size: int) -> None:
    for batch in _batches(reader, batch_size):
        vectors = client.embed(batch)
        for p, v in zip(batch, vectors, strict=True):
            print(json.dumps({"id": p.id, "embedding": [round(float(x), 7) for x in v]}))


def _predict(client: Any, reader: _Reader, batch_size: int, heads: list[str]) -> None:
    from server.commands.predict import prediction_record

    for batch in _batches(reader, batch_size):
        for pid, predictions in client.predict_heads(batch, heads=heads):
            record = prediction_record(pid, predictions, client.head_labels())
            print(json.dumps(record, ensure_ascii=False))


def _read_token(path: Path) -> str:
    """The first token of ``--token-file``; an empty file is the user's mistake (exit 2)."""
    from embedder.errors import InvalidInputError

    try:
        words = path.read_text(encoding="utf-8").split()
    except UnicodeDecodeError as err:
        raise InvalidInputError(
            f"not valid UTF-8 text (byte {err.start}); allowed: a bearer token", source=str(path)
        ) from None
    if not words:
        raise InvalidInputError("got an empty file; allowed: a bearer token", source=str(path))
    return words[0]


def run(args: argparse.Namespace) -> int:
    """Run one client action; on an RPC error print the server's status and exit with its code.

    Exit 2 when the server refused the input (``INVALID_ARGUMENT``, ``NOT_FOUND``: a bad profile,
    an unknown head), as for bad input read here; 1 for any other RPC error, and when input rows
    were skipped (``--skip-invalid``).
    """
    import grpc

    from server.cli import EXIT_BAD_INPUT, EXIT_FAILED
    from server.client import ProfileEmbeddingClient

    token = _read_token(args.token_file) if args.token_file else None
    client = ProfileEmbeddingClient(
        args.target,
        token=token,
        tls=args.tls,
        root_certificates=args.ca,
        client_cert=args.cert,
        client_key=args.key,
        timeout=args.timeout,
    )
    if args.action == "info":
        reader = None
    else:
        reader = _Reader(args.input, skip_invalid=args.skip_invalid)
    try:
        with client:
            if reader is None:
                print(json.dumps(client.info(), ensure_ascii=False))
            elif args.action == "embed":
                _embed(client, reader, args.batch_size)
            else:
                _predict(client, reader, args.batch_size, [h for h in args.heads.split(",") if h])
    except grpc.RpcError as err:
        print(f"profile-embed client: {err.code().name}: {err.details()}", file=sys.stderr)
        bad_input = err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
        return EXIT_BAD_INPUT if bad_input else EXIT_FAILED
    if reader is None:
        return 0
    reader.report()
    return EXIT_FAILED if reader.errors else 0
