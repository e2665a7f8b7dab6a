"""The HWA-fine-tuned DLRM of ``cimflow run``: trained, cached under a key of its settings,
loaded back identical."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cimflow.jobs.hwa_dlrm import (
    HWASettings,
    hwa_cache_path,
    hwa_movielens_dlrm,
    load_hwa_movielens_dlrm,
)


@pytest.mark.slow
def test_hwa_dlrm_is_trained_cached_and_loaded(tmp_path):
    settings = HWASettings(epochs=0.03, validate_every=1000, validation_instances=1)
    assert load_hwa_movielens_dlrm(0, settings, hwa_cache_dir=tmp_path) is None
    model, info = hwa_movielens_dlrm(0, settings, hwa_cache_dir=tmp_path)
    assert not info.cached and info.steps == 5 and Path(info.cache_path).parent == tmp_path
    assert abs(info.fp32_test_auc - info.base_fp32_test_auc) < 0.005  # a few small steps barely move the float model
    loaded, again = load_hwa_movielens_dlrm(0, settings, hwa_cache_dir=tmp_path)
    assert again.cached and again.steps == info.steps
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    # other settings (or another chip description) are another checkpoint
    other, _ = hwa_cache_path(0, HWASettings(epochs=0.03, validate_every=1000, validation_instances=1, lr=1e-4), hwa_cache_dir=tmp_path)
    assert other != Path(info.cache_path)
