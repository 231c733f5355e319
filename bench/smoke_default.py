"""Smoke check of a served model through server reflection only (no proto files on the client side).

Start the server first (``make serve``), then::

    .venv/bin/python bench/smoke_default.py --target localhost:50051

Sends a few real-looking profiles (a French bio with 📍 Lyon among them) to ``Predict`` through
``grpc_requests``' reflection client and prints each geolocation answer. Exits 1 when the Lyon bio
is not labelled FR, so it can gate a release.
"""

from __future__ import annotations

import argparse
import json
import sys

SERVICE = "profile_embedding.v1.ProfileEmbeddingService"

PROFILES = [
    {
        "id": "lyon",
        "username": "camille.patisserie",
        "biography": "Pâtissière passionnée 🍰 📍 Lyon\nCommandes en DM ✉️",
        "captions": ["Nouvelle tarte aux fraises pour ce week-end 🍓 #patisserie #lyon"],
    },
    {"id": "rio", "biography": "carioca 🇧🇷 | Rio de Janeiro", "captions": ["praia hoje 🌊"]},
    {"id": "tokyo", "biography": "東京在住 📷 カフェ巡り", "captions": []},
    {"id": "plain", "biography": "", "captions": ["good morning ☕"]},
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="localhost:50051")
    args = parser.parse_args(argv)
    from grpc_requests import Client

    client = Client.get_by_endpoint(args.target)
    info = client.request(SERVICE, "Info", {})
    print(f"model {info.get('embeddingVersion') or info.get('embedding_version')}", file=sys.stderr)
    result = client.request(SERVICE, "Predict", {"profiles": PROFILES, "top_k": 3})
    answers = {}
    for row in result["results"]:
        geo = next(p for p in row["predictions"] if p["head"] == "geolocation")
        answers[row["id"]] = geo
        print(json.dumps({"id": row["id"], "geolocation": geo}, ensure_ascii=False))
    lyon = answers["lyon"]
    label = lyon.get("label") or ""
    if label != "FR":
        argmax = lyon.get("argmax")
        print(f"FAIL: the Lyon bio got label {label!r} (argmax {argmax!r})", file=sys.stderr)
        return 1
    print("OK: the Lyon bio is FR", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
