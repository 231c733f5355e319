"""Linear probe before fine-tuning (LP-FT): start the heads fitted, not random.

Why: fine-tuning an encoder under a randomly initialised head sends large, arbitrary gradients
into the pretrained features for the first steps, and those features are what carries over to
text unlike the training data (Kumar et al., "Fine-Tuning can Distort Pretrained Features and
Underperform Out-of-Distribution", ICLR 2022). Fitting each head first as a linear probe on the
untrained encoder's embeddings, then fine-tuning both, changes the features less. Here the
training data is simulated and the judge is real posts, the shift that paper is about.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from embedder.profile import Profile
from heads.training.data import MISSING

if TYPE_CHECKING:
    from embedder.encoder import ProfileEncoder

logger = logging.getLogger(__name__)

#: L2 penalty of the probe on standardised embeddings (the value ``train-head`` picks for the
#: geolocation head on the default model's validation rows).
PROBE_L2 = 1e-2


def probe_heads(
    encoder: ProfileEncoder,
    modules: Mapping[str, nn.Sequential],
    profiles: Sequence[Profile],
    targets: Mapping[str, np.ndarray],
    class_weights: Mapping[str, np.ndarray | None],
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit each linear logits module on the encoder's embeddings of ``profiles``, in place.

    Each head is fitted on the rows that carry its label, with the class weights its fine-tuning
    loss uses, so the probe starts fine-tuning at that loss's minimum for the frozen features.

    Args:
        encoder: the untrained ``ProfileEncoder`` (its assembly settings are the run's).
        modules: head name -> its ``nn.Sequential`` with one ``nn.Linear`` (a linear head).
        profiles: the training profiles to probe on.
        targets: head name -> ``(len(profiles),)`` class indices, ``MISSING`` where unlabelled.
        class_weights: head name -> ``(k,)`` weights of the fine-tuning loss, or None.
        progress: a progress bar while embedding.

    Returns:
        What was done, for ``training.json``: rows embedded, seconds, each head's labelled rows.

    Raises:
        ValueError: a head is not a single linear layer (a hidden layer has no closed probe).
    """
    from heads.softmax import fit_standardised_linear

    layers: dict[str, nn.Linear] = {}
    for name, module in modules.items():
        first = module[0] if len(module) == 1 else None
        if not isinstance(first, nn.Linear):
            raise ValueError(f"the probe fits linear heads only; {name!r} has a hidden layer")
        layers[name] = first
    start = time.perf_counter()
    x = encoder.encode(list(profiles), show_progress=progress).astype(np.float64)
    embed_s = time.perf_counter() - start
    info: dict[str, Any] = {"rows": len(profiles), "embed_seconds": round(embed_s, 1), "heads": {}}
    for name, layer in layers.items():
        y = np.asarray(targets[name])
        rows = y != MISSING
        k = layer.out_features
        w_k = class_weights.get(name)
        weights = np.ones(k) if w_k is None else np.asarray(w_k, dtype=np.float64)
        w, b = fit_standardised_linear(x[rows], y[rows], k, weights, PROBE_L2)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(w).to(layer.weight.dtype))
            layer.bias.copy_(torch.from_numpy(b).to(layer.bias.dtype))
        info["heads"][name] = {"rows": int(rows.sum())}
        logger.info("probe: head %s fitted on %d embedded profiles", name, int(rows.sum()))
    info["seconds"] = round(time.perf_counter() - start, 1)
    return info
