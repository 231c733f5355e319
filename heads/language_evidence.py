"""Language evidence for a country head: P(label | language) from CLDR, P(language | embedding).

Why: the geolocation head learns country from simulated text, and on real posts its posteriors
drift (real US English went to OTHER and IN). Which *language* a post is in survives that shift
far better, and where a language is spoken is public knowledge: CLDR's share of each country's
population that speaks it (babel), weighted by the head's country prior. So the head's logits get

    alpha * log( sum_lang P(lang | embedding) P(label | lang) )

added before temperature and thresholds (a product of experts; ``alpha`` says how much the
language's prior counts). ``P(lang | embedding)`` is a linear classifier fitted on the training
rows' language (the simulator writes it), so the head still reads embeddings only.

Measured on the real development sets (docs/TRAINING_EXPERIMENTS.md, "Language evidence"): at
``alpha`` 0.5 the global multilingual set gains 5 points (real English goes to US, not OTHER or
IN) and the two one-language sets lose (Arabic is pushed to SA, Spanish to MX: the table's
within-language split is the simulator's audience prior, not the set's). The default recipe uses
it for English only (``only``), added after the head's temperature and class biases are fitted
(``SoftmaxAbstainHead.fit(language_evidence_after_calibration=...)``): multilang +3.4 points, nadi
unchanged, tass -1.5 ("Seventeenth session"). With ``power`` 2 (English weighted by ``P(en | x)``
squared) tass got 1.2 of those points back for 0.2 on multilang ("Nineteenth session").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from embedder.errors import ArtifactError, InvalidInputError
from embedder.labels import OTHER

#: Languages with fewer training rows than this are not classes of the language classifier.
MIN_ROWS = 20
#: The data field that holds a row's language (written by the simulator).
LANGUAGE_FIELD = "language"


def label_given_language(
    languages: Sequence[str],
    labels: Sequence[str],
    *,
    alias: Mapping[str, str] | None = None,
    prior_percent: Mapping[str, float] | None = None,
    share_of: Literal["all", "given"] = "all",
) -> tuple[np.ndarray, np.ndarray]:
    """``P(label | language)`` from CLDR population shares and the simulator's country prior.

    Every country's prior mass (``embedder.simulator.priors``; countries outside ``labels`` count
    as OTHER) is spread over the languages CLDR says its people speak, in proportion to their
    population shares; each language's row is then normalised.

    Args:
        languages: language codes of the rows wanted (CLDR base codes such as ``"en"``).
        labels: the head's labels (country codes and ``OTHER``).
        alias: CLDR base code -> the caller's code, where they differ (e.g. ``fil`` -> ``tl``).
        prior_percent: the target countries' percents (default: the simulator's prior).
        share_of: a language's share of a country is of ``"all"`` the languages CLDR lists
            there (a language not asked for keeps its part of the country's mass), or of the
            ``"given"`` ones only (a text is in one of them: ``bench/real_eval.py``'s language-id
            anchor, whose detector knows those languages).

    Returns:
        ``(table, prior)``: ``(len(languages), len(labels))`` rows summing to 1 (a language no
        country speaks gets the prior), and the labels' prior.
    """
    from babel.core import get_global

    from embedder.simulator.priors import build_prior

    alias = alias or {}
    index = {lab: i for i, lab in enumerate(labels)}
    if OTHER not in index:
        raise InvalidInputError(f"labels must include {OTHER!r}, got {list(labels)}")
    rows: dict[str, int] = {}
    for j, code in enumerate(languages):
        rows.setdefault(code, j)
    table = build_prior(prior_percent)
    iso_mass = np.diff(np.r_[0.0, table.cum])
    joint = np.zeros((len(languages), len(labels)))
    territory = get_global("territory_languages")
    for iso, mass in zip(table.isos, iso_mass, strict=True):
        shares: dict[int, float] = {}
        total = 0.0
        for code, info in territory.get(iso, {}).items():
            base = code.split("_")[0]
            row = rows.get(alias.get(base, base))
            pct = float(info.get("population_percent") or 0.0)
            if row is not None and pct > 0:
                shares[row] = shares.get(row, 0.0) + pct
            if row is not None or share_of == "all":
                total += pct
        lab = index.get(iso, index[OTHER])
        for row, pct in shares.items():
            joint[row, lab] += mass * pct / total
    prior = joint.sum(axis=0)
    prior = prior / prior.sum()
    sums = joint.sum(axis=1, keepdims=True)
    out = np.where(sums > 0, joint / np.maximum(sums, 1e-300), 0.0)
    out[sums[:, 0] == 0] = prior
    return out, prior


def check_power(power: float) -> float:
    """``power`` of :class:`LanguageEvidence`: a number >= 1 (below 1 the weights could sum
    past 1)."""
    if not (1.0 <= power < float("inf")):
        raise InvalidInputError(
            f"language evidence power must be a number >= 1, got {power}",
            field="language_evidence_power",
        )
    return power


@dataclass
class LanguageEvidence:
    """A language classifier on embeddings and the table that turns languages into labels.

    Attributes:
        languages: the classifier's classes (language codes).
        weight: ``(len(languages), d)`` linear layer on raw embeddings.
        bias: ``(len(languages),)``.
        table: ``(len(languages), len(labels))`` ``P(label | language)``.
        alpha: weight of the evidence's log in the head's logits.
        n: training rows it was fitted on.
        only: the languages whose CLDR rows count (empty = all); every other language's row is
            flat, so a post in it gets no evidence.
        power: each language counts with ``P(language | embedding) ** power``, and the mass
            that leaves is flat (no evidence): at 2 a post the classifier gives 30% English
            counts 9% English, so only clearly English posts move (1 = the plain mixture).
    """

    languages: tuple[str, ...]
    weight: np.ndarray
    bias: np.ndarray
    table: np.ndarray
    alpha: float
    n: int
    only: tuple[str, ...] = ()
    power: float = 1.0

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        languages: Sequence[str | None],
        labels: Sequence[str],
        *,
        alpha: float,
        l2: float = 1e-3,
        only: Sequence[str] = (),
        power: float = 1.0,
    ) -> LanguageEvidence:
        """Fit the language classifier on rows with a language; build the label table.

        Args:
            embeddings: ``(n, d)`` training embeddings.
            languages: each row's language code (None or "" for rows without one).
            labels: the head's labels.
            alpha: weight of the evidence (> 0).
            l2: the classifier's penalty on standardised inputs.
            only: restrict the evidence to these languages (e.g. ``("en",)``: English is the
                language whose countries the head confuses most on real posts, and the one
                where the simulator's text is furthest from real); a post in another language
                gets a flat row, not the simulator prior's largest country of that language.
            power: how sharply a language must be recognised to count (see the class; >= 1).

        Raises:
            InvalidInputError: ``alpha`` <= 0, ``power`` < 1, fewer than two languages with
                ``MIN_ROWS`` rows, or a language of ``only`` that is not among them.
        """
        from heads.softmax import fit_standardised_linear

        if not alpha > 0:
            raise InvalidInputError(f"language evidence alpha must be > 0, got {alpha}")
        check_power(power)
        x = np.asarray(embeddings, dtype=np.float64)
        if len(languages) != len(x):
            raise InvalidInputError(f"{len(x)} embeddings but {len(languages)} language labels")
        counts: dict[str, int] = {}
        for lang in languages:
            if lang:
                counts[lang] = counts.get(lang, 0) + 1
        kept = tuple(sorted(lang for lang, c in counts.items() if c >= MIN_ROWS))
        if len(kept) < 2:
            raise InvalidInputError(
                f"language evidence needs >= 2 languages with >= {MIN_ROWS} rows in the "
                f"{LANGUAGE_FIELD!r} field; got {dict(sorted(counts.items()))}"
            )
        unknown = sorted(set(only) - set(kept))
        if unknown:
            raise InvalidInputError(
                f"language evidence restricted to {unknown}, which are not among the languages "
                f"with >= {MIN_ROWS} training rows: {list(kept)}"
            )
        pos = {lang: i for i, lang in enumerate(kept)}
        y = np.array([pos.get(lang or "", -1) for lang in languages])
        rows = y >= 0
        w, b = fit_standardised_linear(x[rows], y[rows], len(kept), np.ones(len(kept)), l2)
        table, _ = label_given_language(kept, labels)
        if only:
            # A flat row adds the same log to every label: no evidence where a post is in it.
            table[[lang not in only for lang in kept]] = 1.0 / table.shape[1]
        return cls(
            kept,
            w,
            b,
            table,
            float(alpha),
            int(rows.sum()),
            tuple(sorted(set(only))),
            float(power),
        )

    def language_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """``P(language | embedding)``, ``(n, len(languages))``."""
        z = np.asarray(embeddings, dtype=np.float64) @ self.weight.T + self.bias
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def log_evidence(self, embeddings: np.ndarray) -> np.ndarray:
        """``alpha * log P(label | embedding's language)``, ``(n, len(labels))``."""
        p = self.language_proba(embeddings)
        if self.power == 1.0:
            mix = p @ self.table
        else:  # sum(p ** power) <= 1: what is left is flat
            q = p**self.power
            mix = q @ self.table + (1.0 - q.sum(axis=1, keepdims=True)) / self.table.shape[1]
        return self.alpha * np.log(np.maximum(mix, 1e-12))

    def to_config(self) -> dict[str, Any]:
        return {
            "kind": "cldr_language_prior",
            "alpha": self.alpha,
            "languages": list(self.languages),
            "n": self.n,
            "only": list(self.only),
            "power": self.power,
        }

    def to_tensors(self) -> dict[str, np.ndarray]:
        # float64, as computed: rounded to float32 on disk, a row scored exactly at a
        # threshold or cutoff came back on the other side of it after loading.
        return {
            "language.weight": self.weight.astype(np.float64),
            "language.bias": self.bias.astype(np.float64),
            "language.table": self.table.astype(np.float64),
        }

    @classmethod
    def from_saved(cls, config: Mapping[str, Any], tensors: Mapping[str, Any]) -> LanguageEvidence:
        try:
            out = cls(
                tuple(config["languages"]),
                np.asarray(tensors["language.weight"], dtype=np.float64),
                np.asarray(tensors["language.bias"], dtype=np.float64),
                np.asarray(tensors["language.table"], dtype=np.float64),
                float(config["alpha"]),
                int(config["n"]),
                tuple(config.get("only") or ()),  # absent in heads saved before it existed
                float(config.get("power", 1.0)),  # likewise
            )
            check_power(out.power)
        except (KeyError, TypeError, ValueError, InvalidInputError) as err:
            raise ArtifactError(f"the head's language evidence is incomplete: {err}") from err
        if not (len(out.languages) == len(out.weight) == len(out.bias) == len(out.table)):
            raise ArtifactError(
                f"the head's language evidence has {len(out.languages)} languages but weights "
                f"of {len(out.weight)} rows and a table of {len(out.table)}"
            )
        return out
