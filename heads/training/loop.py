"""Joint fine-tuning of the encoder and its heads: the training loop.

``MultiTaskTrainer`` trains a SentenceTransformer (the encoder's ``st_model``) together with one
logits module per head. The loss is the sum over heads of class-weighted cross-entropy, each head
masked to the rows that carry its label. Batches are length-bucketed and padded per batch; profiles
are augmented on the fly per epoch (``heads.training.augment``). Each epoch ends with validation
metrics and a checkpoint (weights, optimizer, scheduler, RNG, history) from which ``resume``
continues exactly where the run stopped.

The end-to-end run (encoder build, calibration, model folder) is ``heads.training.run``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from embedder.errors import ArtifactError
from embedder.profile import Profile
from heads.training.augment import augment_profiles
from heads.training.config import LoopConfig
from heads.training.data import MISSING, bucketed_batches, staged_batches

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "state.pt"
BEST_FILE = "best_weights.pt"


def resolve_device(spec: str = "auto") -> torch.device:
    """``embedder.devices.choose_device`` as a ``torch.device`` (on CPU: torch threads = cores).

    Raises:
        InvalidInputError: a malformed value, or CUDA asked for where torch sees no GPU.
    """
    from embedder.devices import choose_device

    device = choose_device(spec)
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def multitask_loss(
    logits: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor | None],
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of per-head class-weighted cross-entropies, each over the rows that have its label.

    A head whose batch rows all lack a label adds nothing (its parameters get no gradient).

    Args:
        logits: head name -> ``(n, k)`` logits.
        targets: head name -> ``(n,)`` int64 targets, ``MISSING`` (-1) where the row has no label.
        weights: head name -> ``(k,)`` class weights, or None.

    Returns:
        The total loss (a 0-d tensor) and each head's loss value (NaN when the head had no row).
    """
    total: torch.Tensor | None = None
    parts: dict[str, float] = {}
    for name, z in logits.items():
        y = targets[name]
        mask = y != MISSING
        if not bool(mask.any()):
            parts[name] = float("nan")
            continue
        w = weights.get(name)
        loss = F.cross_entropy(
            z[mask].float(), y[mask], weight=None if w is None else w.to(z.device)
        )
        parts[name] = float(loss.detach())
        total = loss if total is None else total + loss
    if total is None:
        any_z = next(iter(logits.values()))
        total = any_z.sum() * 0.0
    return total, parts


class MultiTaskNet(nn.Module):
    """The encoder (a SentenceTransformer) plus one logits module per head."""

    def __init__(self, st_model: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.encoder = st_model
        self.heads = nn.ModuleDict(dict(heads))

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        """Return the sentence embeddings and each head's logits."""
        emb = self.encoder(features)["sentence_embedding"]
        return emb, {name: head(emb) for name, head in self.heads.items()}


def _param_groups(net: MultiTaskNet, cfg: LoopConfig) -> list[dict[str, Any]]:
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for pname, p in net.named_parameters():
        if not p.requires_grad:
            continue
        part = "heads" if pname.startswith("heads.") else "encoder"
        no_decay = p.ndim < 2 or "LayerNorm" in pname or "layer_norm" in pname
        groups.setdefault((part, no_decay), []).append(p)
    out = []
    for (part, no_decay), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "lr": cfg.head_lr if part == "heads" else cfg.lr,
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                "name": f"{part}{'-nodecay' if no_decay else ''}",
            }
        )
    return out


def _linear_schedule(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _staged_schedule(first: int, rest: int, warmup_ratio: float) -> Callable[[int], float]:
    """Two linear warm-up + decay cycles: ``first`` steps, then ``rest`` steps."""
    one = _linear_schedule(first, int(first * warmup_ratio))
    two = _linear_schedule(rest, int(rest * warmup_ratio))

    def factor(step: int) -> float:
        return one(step) if step < first else two(step - first)

    return factor


def validation_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 and n of the labelled rows (``heads.evaluation.metrics``'s scorer)."""
    from heads.evaluation.metrics import score_predictions

    mask = y != MISSING
    if not mask.any():
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "n": 0}
    scores = score_predictions(y[mask], logits[mask])
    return {k: scores[k] for k in ("accuracy", "macro_f1", "n")}


class MultiTaskTrainer:
    """Trains an encoder and its heads jointly, with per-epoch validation, checkpoints and resume.

    Args:
        st_model: the encoder's trainable SentenceTransformer.
        assemble: turns profiles into encoder input texts (``ProfileEncoder.assemble``).
        heads: head name -> logits module (``Head.logits_module()``).
        train_profiles: training profiles.
        train_targets: head name -> int64 targets aligned with ``train_profiles`` (-1 = missing).
        val_profiles: validation profiles (never augmented).
        val_targets: head name -> validation targets.
        class_weights: head name -> class weights (numpy) or None.
        config: loop settings.
        device: where to train.
        checkpoint_dir: where epoch checkpoints go (created; None = no checkpoints).
        run_info: JSON-ready facts stored in checkpoints and compared on resume (e.g. data hashes).
        first_stage: optional boolean mask over the training rows: in the first epoch these rows
            are trained before all others (place snippets first, then the profiles that carry
            every head's label, so heads missing from the snippets are not left to drift between
            snippet batches), each stage with its own learning-rate warm-up and decay.
        validate_unopposed_last_epoch: False skips the validation pass of a last epoch that no
            earlier validated epoch competes with (a one-epoch run): its weights are kept
            whatever it scores, so the pass would only fill the history. For callers that
            embed the validation rows again anyway, read another way (``train_model`` when the
            saved encoder reads the text differently from fine-tuning).
    """

    def __init__(
        self,
        st_model: nn.Module,
        assemble: Callable[[Sequence[Profile]], list[str]],
        heads: Mapping[str, nn.Module],
        train_profiles: Sequence[Profile],
        train_targets: Mapping[str, np.ndarray],
        val_profiles: Sequence[Profile],
        val_targets: Mapping[str, np.ndarray],
        *,
        class_weights: Mapping[str, np.ndarray | None] | None = None,
        config: LoopConfig | None = None,
        device: torch.device | str = "cpu",
        checkpoint_dir: str | Path | None = None,
        run_info: Mapping[str, Any] | None = None,
        first_stage: np.ndarray | None = None,
        progress: bool = True,
        validate_unopposed_last_epoch: bool = True,
    ) -> None:
        self.cfg = config or LoopConfig()
        self.validate_unopposed_last_epoch = validate_unopposed_last_epoch
        self.progress = progress
        self.first_stage = None if first_stage is None else np.asarray(first_stage, dtype=bool)
        if self.first_stage is not None and len(self.first_stage) != len(train_profiles):
            raise ValueError(
                f"first_stage has {len(self.first_stage)} entries for {len(train_profiles)} rows"
            )
        self.device = torch.device(device)
        self.net = MultiTaskNet(st_model, heads).to(self.device)
        self.assemble = assemble
        self.train_profiles = list(train_profiles)
        self.val_profiles = list(val_profiles)
        self.train_targets = {k: np.asarray(v, dtype=np.int64) for k, v in train_targets.items()}
        self.val_targets = {k: np.asarray(v, dtype=np.int64) for k, v in val_targets.items()}
        cw = class_weights or {}
        self.weights = {
            k: None if cw.get(k) is None else torch.tensor(cw[k], dtype=torch.float32)
            for k in heads
        }
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.run_info = dict(run_info or {})
        self.steps_per_epoch = math.ceil(len(self.train_profiles) / self.cfg.batch_size)
        total = self.steps_per_epoch * self.cfg.epochs
        ratio = self.cfg.warmup_ratio
        if self.first_stage is None:
            schedule = _linear_schedule(total, int(total * ratio))
        else:
            # Each stage gets its own warm-up and decay: the profiles, which carry every head's
            # label, train at full learning rate instead of in the tail of the snippets' decay.
            first = math.ceil(int(self.first_stage.sum()) / self.cfg.batch_size)
            rest = math.ceil(int((~self.first_stage).sum()) / self.cfg.batch_size)
            rest += self.steps_per_epoch * (self.cfg.epochs - 1)
            schedule = _staged_schedule(first, rest, ratio)
        self.optimizer = torch.optim.AdamW(_param_groups(self.net, self.cfg))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_score = -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.loss_trace: list[float] = []
        self.train_lengths = self._lengths(self.train_profiles)
        self.val_lengths = self._lengths(self.val_profiles)
        self.tokens_seen = 0
        self.rows_seen = 0
        self.last_val_embeddings: np.ndarray | None = None
        self.train_seconds = 0.0

    # ---- data -------------------------------------------------------------------------------
    def _lengths(self, profiles: Sequence[Profile]) -> list[int]:
        texts = self.assemble(profiles)
        tok = self._tokenizer()
        return [len(ids) for ids in tok(texts, add_special_tokens=True, verbose=False)["input_ids"]]

    def _tokenizer(self) -> Any:
        return self.net.encoder.tokenizer

    def _features(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encoder: Any = self.net.encoder  # the SentenceTransformer (Tensor | Module to mypy)
        feats = encoder.preprocess(texts)
        return {k: v.to(self.device) if hasattr(v, "to") else v for k, v in feats.items()}

    def _autocast(self) -> Any:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    # ---- one epoch --------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        """Run one epoch of training; return mean total loss and per-head losses."""
        cfg, epoch = self.cfg, self.epoch
        self.net.train()
        rng = np.random.default_rng([cfg.seed, epoch])
        if self.first_stage is not None and epoch == 0:
            batches = staged_batches(self.train_lengths, cfg.batch_size, rng, self.first_stage)
        else:
            batches = bucketed_batches(self.train_lengths, cfg.batch_size, rng)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        bar = tqdm(
            batches,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            leave=False,
            disable=not self.progress,
        )
        start = time.perf_counter()
        running = None
        for idx in bar:
            profiles = augment_profiles(
                self.train_profiles, idx.tolist(), seed=cfg.seed, epoch=epoch, config=cfg.augment
            )
            feats = self._features(self.assemble(profiles))
            self.tokens_seen += int(feats["attention_mask"].sum())
            self.rows_seen += len(idx)
            targets = {
                k: torch.from_numpy(v[idx]).to(self.device) for k, v in self.train_targets.items()
            }
            with self._autocast():
                _, logits = self.net(feats)
            loss, parts = multitask_loss(logits, targets, self.weights)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            value = float(loss.detach())
            self.loss_trace.append(value)
            running = value if running is None else 0.95 * running + 0.05 * value
            bar.set_postfix(loss=f"{running:.4f}")
            for k, v in {"loss": value, **parts}.items():
                if not math.isnan(v):
                    sums[k] = sums.get(k, 0.0) + v
                    counts[k] = counts.get(k, 0) + 1
        self.train_seconds += time.perf_counter() - start
        return {k: sums[k] / counts[k] for k in sums}

    @torch.no_grad()
    def predict_logits(
        self, profiles: Sequence[Profile], lengths: Sequence[int] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Embeddings and head logits for ``profiles`` (eval mode, no augmentation), input order."""
        self.net.eval()
        lengths = self._lengths(profiles) if lengths is None else lengths
        order = np.argsort(np.asarray(lengths), kind="stable")
        bs = self.cfg.eval_batch_size
        embs: list[np.ndarray] = []
        logits: dict[str, list[np.ndarray]] = {k: [] for k in self.net.heads}
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            feats = self._features(self.assemble([profiles[i] for i in idx]))
            with self._autocast():
                emb, out = self.net(feats)
            embs.append(emb.float().cpu().numpy())
            for k, z in out.items():
                logits[k].append(z.float().cpu().numpy())
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        emb_all = np.concatenate(embs)[inv] if embs else np.zeros((0, 0), np.float32)
        return emb_all, {k: np.concatenate(v)[inv] for k, v in logits.items() if v}

    def validate(self) -> dict[str, dict[str, float]]:
        """Accuracy and macro-F1 per head on the validation set."""
        emb, logits = self.predict_logits(self.val_profiles, self.val_lengths)
        self.last_val_embeddings = emb
        return {k: validation_metrics(logits[k], self.val_targets[k]) for k in logits}

    # ---- the run ----------------------------------------------------------------------------
    def fit(self, *, stop_after: int | None = None) -> list[dict[str, Any]]:
        """Train until ``epochs`` or early stop; keep the best epoch's weights in ``self.net``.

        Args:
            stop_after: stop (as if interrupted, best weights not restored) once this many epochs
                are done; for tests and time-boxed runs that ``resume`` later.

        Returns:
            The per-epoch history (losses, validation metrics, time).
        """
        cfg = self.cfg
        while self.epoch < cfg.epochs:
            if stop_after is not None and self.epoch >= stop_after:
                return self.history
            if cfg.patience and self.bad_epochs >= cfg.patience:
                break
            t0 = time.perf_counter()
            losses = self.train_epoch()
            unopposed = self.epoch + 1 == cfg.epochs and self.best_epoch < 0
            if unopposed and not self.validate_unopposed_last_epoch:
                val, score = None, None  # kept whatever it scores; the caller validates
            else:
                val = self.validate()
                score = float(np.mean([m["macro_f1"] for m in val.values()]))
            record = {
                "epoch": self.epoch + 1,
                "train_loss": losses,
                "val": val,
                "val_score": score,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            self.history.append(record)
            logger.info(
                "epoch %d: loss %.4f; %s",
                self.epoch + 1,
                losses.get("loss", float("nan")),
                "; ".join(
                    f"{k} acc {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f}"
                    for k, m in val.items()
                )
                if val is not None
                else "validated after training, as the saved encoder reads the text",
            )
            improved = score is None or score > self.best_score
            if improved:
                self.best_epoch, self.bad_epochs = self.epoch + 1, 0
                self.best_score = self.best_score if score is None else score
            else:
                self.bad_epochs += 1
            self.epoch += 1
            self._checkpoint(improved)
            if cfg.patience and self.bad_epochs >= cfg.patience and self.epoch < cfg.epochs:
                logger.info("early stop: no improvement for %d epoch(s)", self.bad_epochs)
                break
        self._restore_best()
        return self.history

    # ---- checkpoints ------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "epoch": self.epoch,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "history": self.history,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "loss_trace": self.loss_trace,
            "tokens_seen": self.tokens_seen,
            "rows_seen": self.rows_seen,
            "train_seconds": self.train_seconds,
            "loop_config": self.cfg.to_dict(),
            "run_info": self.run_info,
        }

    def _checkpoint(self, improved: bool) -> None:
        if self.checkpoint_dir is None:
            if improved:
                self._best_in_memory = {
                    k: v.detach().clone() for k, v in self.net.state_dict().items()
                }
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if improved:
            torch.save(self.net.state_dict(), self.checkpoint_dir / BEST_FILE)
        target = self.checkpoint_dir / f"epoch-{self.epoch:03d}"
        target.mkdir(exist_ok=False)
        tmp = target / (CHECKPOINT_FILE + ".tmp")
        torch.save(self._state(), tmp)
        tmp.rename(target / CHECKPOINT_FILE)
        (target / "history.json").write_text(json.dumps(self.history, indent=2) + "\n")
        for old in self.checkpoint_dir.glob("epoch-*"):
            if old != target and (old / CHECKPOINT_FILE).exists():
                (old / CHECKPOINT_FILE).unlink()  # keep the history, drop the heavy state
        logger.info("checkpoint: %s", target)

    def _restore_best(self) -> None:
        if self.best_epoch < 0 or self.best_epoch == self.epoch:
            return
        if self.checkpoint_dir is not None and (self.checkpoint_dir / BEST_FILE).exists():
            state = torch.load(self.checkpoint_dir / BEST_FILE, map_location=self.device)
        else:
            state = getattr(self, "_best_in_memory", None)
        if state is not None:
            self.net.load_state_dict(state)
            logger.info("restored the weights of the best epoch (%d)", self.best_epoch)

    def resume(self, path: str | Path) -> None:
        """Load a checkpoint (an ``epoch-NNN`` folder, or a checkpoint root: its latest epoch).

        Raises:
            ArtifactError: no checkpoint there, or it was written for other data or settings.
        """
        path = Path(path)
        if path.is_dir() and not (path / CHECKPOINT_FILE).exists():
            epochs = sorted(p for p in path.glob("epoch-*") if (p / CHECKPOINT_FILE).exists())
            if not epochs:
                raise ArtifactError(f"no checkpoint ({CHECKPOINT_FILE}) under {path}")
            path = epochs[-1]
        if not (path / CHECKPOINT_FILE).exists():
            raise ArtifactError(f"no checkpoint file {path / CHECKPOINT_FILE}")
        state = torch.load(path / CHECKPOINT_FILE, map_location=self.device, weights_only=False)
        for key in ("data", "heads"):
            if key in self.run_info and state["run_info"].get(key) != self.run_info[key]:
                raise ArtifactError(
                    f"checkpoint {path} was written for {key} {state['run_info'].get(key)!r}, "
                    f"this run has {self.run_info[key]!r}; resume needs the same inputs"
                )
        saved_cfg = dict(state["loop_config"])
        if saved_cfg != self.cfg.to_dict():
            diff = {
                k: (saved_cfg.get(k), v)
                for k, v in self.cfg.to_dict().items()
                if saved_cfg.get(k) != v
            }
            raise ArtifactError(
                f"checkpoint {path} used other loop settings (checkpoint, now): {diff}"
            )
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.loss_trace = list(state["loss_trace"])
        self.tokens_seen = int(state["tokens_seen"])
        self.rows_seen = int(state["rows_seen"])
        self.train_seconds = float(state["train_seconds"])
        if self.checkpoint_dir is None:
            self.checkpoint_dir = path.parent
        logger.info("resumed from %s (epoch %d done)", path, self.epoch)
