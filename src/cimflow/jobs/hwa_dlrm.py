"""The HWA-fine-tuned DLRM of ``cimflow run``: MovieLens-100k on the hybrid RRAM/SRAM chip.

:func:`hwa_movielens_dlrm` starts from the cached float DLRM
(:func:`cimflow.recsys.train.train_movielens_dlrm`) and fine-tunes it with
:func:`cimflow.train.hwa_finetune` on the chip its tables are programmed on: a fresh chip
instance per step aged to a log-uniform time up to 1 day, global drift compensation,
embedding columns clipped to 2.5 sigma, the L2 penalty on the rows a batch touches that
DLRM training uses, a small learning rate (the float model sits at its validation
optimum: a fresh Adam at a large rate first makes it worse), and selection of the step
with the best on-chip validation AUC (4 instances at 1 day, the same instances at every
check). The result is cached next to the float checkpoint (:mod:`cimflow.recsys.cache`:
checksummed, a bad entry is warned about and discarded), keyed by the float model's key
(its data, config, settings and seed), these settings, the chip description and the code
version; ``cimflow train-hwa`` (or ``cimflow run --hwa``) produces it, and ``cimflow run``
uses it when it is there.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cimflow.chip.io import resolve_chip
from cimflow.recsys.cache import cache_key, discard_entry, entry_path, read_entry, write_entry
from cimflow.recsys.data import load_movielens_100k
from cimflow.recsys.models import DLRM, table_weights
from cimflow.recsys.train import evaluate_auc, movielens_dlrm_cache_entry, train_movielens_dlrm
from cimflow.sim.convert import (
    compensate_model,
    convert_model,
    drift_model,
    program_model,
)
from cimflow.train.hwa import hwa_finetune
from cimflow.units import parse_duration

#: info fields a cached HWA model must have finite (else the entry is discarded)
FINITE_INFO = ("fp32_test_auc", "base_fp32_test_auc")


@dataclass(frozen=True)
class HWASettings:
    """Settings of the DLRM fine-tuning (see the module docstring)."""

    chip: str = "hybrid-rram-sram-28nm"
    epochs: float = 2.0
    batch_size: int = 512
    lr: float = 3e-5
    clip_sigma: float = 2.5
    t_max: str = "1d"
    compensation: str | None = "global"
    embedding_weight_decay: float = 1e-2
    validate_every: int = 35
    validation_instances: int = 4
    validation_time: str = "1d"


@dataclass
class HWAInfo:
    """What the fine-tuning measured (stored with the checkpoint)."""

    fp32_test_auc: float = float("nan")  # the fine-tuned model in float
    base_fp32_test_auc: float = float("nan")  # the float model it started from
    validation_auc_on_chip: float = float("nan")  # best on-chip validation AUC (selection score)
    best_step: int = 0
    steps: int = 0
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    cache_path: str | None = None


def embedding_penalty(weight_decay: float) -> Callable[[nn.Module, tuple[Any, ...]], torch.Tensor]:
    """``weight_decay x sum of squares of the embedding rows a batch reads / batch size``
    (the penalty :func:`cimflow.recsys.train.train_dlrm` trains with)."""

    def penalty(model: nn.Module, inputs: tuple[Any, ...]) -> torch.Tensor:
        dense, pairs = inputs
        total = torch.zeros(())
        for weight, (values, _) in zip(table_weights(model), pairs, strict=True):
            total = total + weight[values].pow(2).sum()
        return weight_decay * total / dense.shape[0]

    return penalty


def on_chip_auc(model: nn.Module, dataset: Any, chip: Any, seeds: list[int], t: float | str, compensation: str | None = None,
                plan: Any = None, hot_rows: Any = None) -> list[float]:
    """Test AUC of ``model`` on chip instances ``seeds`` at ``t`` after programming."""

    cim, _ = convert_model(model, chip, plan=plan, hot_rows=hot_rows)
    compensate_model(cim, compensation)
    out = []
    for seed in seeds:
        program_model(cim, seed)
        drift_model(cim, parse_duration(t))
        out.append(evaluate_auc(cim, dataset))
    return out


def _hwa_entry(seed: int, settings: HWASettings, cache_dir: str | Path | None,
               hwa_cache_dir: str | Path | None) -> tuple[Path, str, DLRM]:
    """``(path, key, an untrained model of the right shape)`` of the fine-tuned checkpoint."""
    _, base_key, config, _, _ = movielens_dlrm_cache_entry(seed=seed, cache_dir=cache_dir)
    chip = resolve_chip(settings.chip)
    key = cache_key("movielens_dlrm_hwa", base=hashlib.sha256(base_key.encode()).hexdigest(), settings=asdict(settings),
                    chip=hashlib.sha256(chip.model_dump_json().encode()).hexdigest())
    folder = hwa_cache_dir if hwa_cache_dir is not None else cache_dir
    with torch.random.fork_rng(devices=[]):  # the shape only: leave the global generator alone
        model = DLRM(config)
    return entry_path(folder, "movielens_dlrm_hwa", key), key, model


def hwa_cache_path(seed: int = 0, settings: HWASettings = HWASettings(), cache_dir: str | Path | None = None,
                   hwa_cache_dir: str | Path | None = None) -> tuple[Path, str]:
    """Where the fine-tuned checkpoint of the float model trained with ``seed`` (cached in
    ``cache_dir``) lives - in ``hwa_cache_dir``, default the same folder - and its key.
    Nothing is trained to answer."""

    path, key, _ = _hwa_entry(seed, settings, cache_dir, hwa_cache_dir)
    return path, key


def load_hwa_movielens_dlrm(seed: int = 0, settings: HWASettings = HWASettings(), cache_dir: str | Path | None = None,
                            hwa_cache_dir: str | Path | None = None) -> tuple[nn.Module, HWAInfo] | None:
    """The cached fine-tuned DLRM and its info, or None when it has not been trained yet (or
    its entry was bad: then a :class:`~cimflow.recsys.cache.CacheWarning` names it)."""

    path, key, model = _hwa_entry(seed, settings, cache_dir, hwa_cache_dir)
    checkpoint = read_entry(path, key, model, FINITE_INFO)
    if checkpoint is None:
        return None
    try:
        info = HWAInfo(**checkpoint["record"])
    except TypeError as error:
        discard_entry(path, f"its info does not match this version: {error}")
        return None
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    info.cached, info.cache_path = True, str(path)
    return model, info


def hwa_movielens_dlrm(
    seed: int = 0, settings: HWASettings = HWASettings(), cache: bool = True, cache_dir: str | Path | None = None,
    threads: int | None = 1, progress: Callable[[int, int], None] | None = None, retrain: bool = False,
    hwa_cache_dir: str | Path | None = None,
) -> tuple[nn.Module, HWAInfo]:
    """Fine-tune the MovieLens DLRM for its chip (or load it from the cache unless ``retrain``);
    see the module docstring."""
    if cache and not retrain:
        cached = load_hwa_movielens_dlrm(seed, settings, cache_dir, hwa_cache_dir)
        if cached is not None:
            return cached
    base, _ = train_movielens_dlrm(seed=seed, cache=cache, cache_dir=cache_dir)
    splits = load_movielens_100k(seed=seed)
    chip = resolve_chip(settings.chip)
    seeds = [10_000 + k for k in range(settings.validation_instances)]

    def validate(cim: nn.Module) -> float:
        compensate_model(cim, settings.compensation)
        scores = []
        for s in seeds:
            program_model(cim, s)
            drift_model(cim, parse_duration(settings.validation_time))
            scores.append(evaluate_auc(cim, splits.validation))
        return statistics.fmean(scores)

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        result = hwa_finetune(
            base, chip, splits.train, epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
            t_max=settings.t_max, clip_sigma=settings.clip_sigma, compensation=settings.compensation, seed=seed,
            regularizer=embedding_penalty(settings.embedding_weight_decay), validate=validate,
            validate_every=settings.validate_every, progress=progress,
        )
        info = HWAInfo(
            fp32_test_auc=evaluate_auc(result.model, splits.test), base_fp32_test_auc=evaluate_auc(base, splits.test),
            validation_auc_on_chip=float(result.best_score or float("nan")), best_step=int(result.best_step or result.steps),
            steps=result.steps, seconds=result.seconds, settings=asdict(settings),
        )
    finally:
        torch.set_num_threads(previous)
    model = result.model
    if cache:
        path, key = hwa_cache_path(seed, settings, cache_dir, hwa_cache_dir)
        stored = asdict(info)
        stored.pop("cached"), stored.pop("cache_path")
        if write_entry(path, key, model.state_dict(), stored, FINITE_INFO):
            info.cache_path = str(path)
    return model, info


__all__ = ["HWAInfo", "HWASettings", "embedding_penalty", "hwa_cache_path", "hwa_movielens_dlrm", "load_hwa_movielens_dlrm", "on_chip_auc"]
