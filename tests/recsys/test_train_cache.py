"""The trained-model cache: keyed by the data, config and code version; checksummed; bad
entries (flipped bytes, NaN weights or metrics, wrong shapes, foreign files) are warned
about by path, moved aside and rebuilt. Tiny synthetic data, one training step each."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cimflow
from cimflow.errors import CimflowError
from cimflow.recsys import cache as cache_module
from cimflow.recsys.cache import (
    CACHE_DIR_ENV,
    CacheWarning,
    cache_key,
    checksum_path,
    dataset_digest,
    default_cache_dir,
    read_entry,
    write_entry,
)
from cimflow.recsys.data import MovieLensSplits, RecDataset
from cimflow.recsys.jagged import JaggedFeatures
from cimflow.recsys.models import DLRM
from cimflow.recsys.train import TrainSettings, movielens_dlrm_cache_entry, movielens_dlrm_config, train_movielens_dlrm

needs_recbole = pytest.mark.skipif(
    importlib.util.find_spec("recbole") is None,
    reason="MovieLens-100k is read from the recbole wheel: pip install --no-deps recbole==1.2.1",
)

TABLES = [13, 7]
DENSE = 3


def _dataset(n: int, seed: int, name: str) -> RecDataset:
    rng = np.random.default_rng(seed)
    rows = [rng.integers(0, size, n) for size in TABLES]
    dense = rng.normal(size=(n, DENSE)).astype(np.float32)
    labels = ((dense[:, 0] + (rows[0] % 2) + rng.normal(0, 0.5, n)) > 0.5).astype(np.float32)
    sparse = JaggedFeatures(["a", "b"], torch.from_numpy(np.concatenate(rows)), lengths=torch.ones(2 * n, dtype=torch.int64))
    return RecDataset(torch.from_numpy(dense), sparse, torch.from_numpy(labels), list(TABLES),
                      [f"d{i}" for i in range(DENSE)], name)


def _splits(seed: int = 0) -> MovieLensSplits:
    return MovieLensSplits(
        train=_dataset(256, seed, "train"), validation=_dataset(64, seed + 1, "validation"),
        test=_dataset(128, seed + 2, "test"), split="random", seed=0, interactions={},
        dense_mean=np.zeros(DENSE), dense_std=np.ones(DENSE),
    )


def _with_label_flipped(data: MovieLensSplits, index: int = 5) -> MovieLensSplits:
    labels = data.train.labels.clone()
    labels[index] = 1.0 - labels[index]
    train = RecDataset(data.train.dense, data.train.sparse, labels, list(TABLES), list(data.train.dense_names), "train")
    return MovieLensSplits(train, data.validation, data.test, data.split, data.seed, {}, data.dense_mean, data.dense_std)


FAST = TrainSettings(batch_size=256, patience=1)


def _train(tmp_path: Path, data: MovieLensSplits | None = None, **kwargs):
    kwargs.setdefault("settings", FAST)
    return train_movielens_dlrm(seed=0, epochs=1, cache=True, cache_dir=tmp_path, data=data or _splits(), **kwargs)


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _write_raw(path: Path, checkpoint: object) -> None:
    """A checkpoint with a *correct* checksum beside it (so only its content can be bad)."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    path.write_bytes(buffer.getvalue())
    checksum_path(path).write_text(f"{hashlib.sha256(buffer.getvalue()).hexdigest()}  {path.name}\n")


def test_same_data_and_config_hit_the_cache(tmp_path: Path) -> None:
    model, metrics = _train(tmp_path)
    assert not metrics.cached and metrics.cache_path is not None
    path = Path(metrics.cache_path)
    # one checkpoint and its sha256sum-format checksum, no temporary files
    assert _entries(tmp_path) == [path.name, path.name + ".sha256"]
    recorded, name = checksum_path(path).read_text().split()
    assert recorded == hashlib.sha256(path.read_bytes()).hexdigest() and name == path.name
    # plain weights-only loading still works
    assert set(torch.load(path, weights_only=True)) == {"key", "state_dict", "record"}
    again, cached = _train(tmp_path)
    assert cached.cached and cached.cache_path == str(path) and cached.test_auc == metrics.test_auc
    for name, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name


def test_a_data_content_change_is_another_entry_and_retrains(tmp_path: Path) -> None:
    data = _splits()
    _, first = _train(tmp_path, data)
    changed = _with_label_flipped(data)
    assert dataset_digest(changed.train) != dataset_digest(data.train)
    _, second = _train(tmp_path, changed)
    assert not second.cached and second.cache_path != first.cache_path
    assert len(_entries(tmp_path)) == 4  # two checkpoints, two checksums
    # and each dataset still finds its own model
    assert _train(tmp_path, data)[1].cache_path == first.cache_path
    assert _train(tmp_path, changed)[1].cached


def test_settings_seed_split_and_code_version_are_in_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _splits()
    base, *_ = movielens_dlrm_cache_entry(seed=0, epochs=1, cache_dir=tmp_path, settings=FAST, data=data)
    variants = [
        movielens_dlrm_cache_entry(seed=1, epochs=1, cache_dir=tmp_path, settings=FAST, data=data)[0],
        movielens_dlrm_cache_entry(seed=0, epochs=2, cache_dir=tmp_path, settings=FAST, data=data)[0],
        movielens_dlrm_cache_entry(seed=0, epochs=1, cache_dir=tmp_path, split="time", settings=FAST, data=data)[0],
        movielens_dlrm_cache_entry(seed=0, epochs=1, cache_dir=tmp_path, data=data,
                                   settings=TrainSettings(batch_size=256, patience=1, learning_rate=1e-3))[0],
    ]
    monkeypatch.setattr(cimflow.version, "__version__", "999.0")
    variants.append(movielens_dlrm_cache_entry(seed=0, epochs=1, cache_dir=tmp_path, settings=FAST, data=data)[0])
    monkeypatch.undo()
    monkeypatch.setattr(cache_module, "CACHE_FORMAT", cache_module.CACHE_FORMAT + 1)
    variants.append(movielens_dlrm_cache_entry(seed=0, epochs=1, cache_dir=tmp_path, settings=FAST, data=data)[0])
    assert len({base, *variants}) == len(variants) + 1


def test_a_flipped_byte_is_warned_about_and_rebuilt(tmp_path: Path) -> None:
    model, metrics = _train(tmp_path)
    path = Path(metrics.cache_path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit, in the middle of the weights
    path.write_bytes(bytes(raw))
    with pytest.warns(CacheWarning, match=rf"{path.name}.*checksum mismatch"):
        rebuilt, again = _train(tmp_path)
    assert not again.cached and again.cache_path == str(path)
    assert (tmp_path / (path.name + ".bad")).read_bytes() == bytes(raw)  # moved aside, not lost
    for name, value in model.state_dict().items():  # retrained to the same weights (same seed)
        assert torch.equal(value, rebuilt.state_dict()[name]), name
    assert _train(tmp_path)[1].cached  # the rebuilt entry is good


def test_nan_weights_are_refused_and_rebuilt(tmp_path: Path) -> None:
    _, metrics = _train(tmp_path)
    path = Path(metrics.cache_path)
    checkpoint = torch.load(path, weights_only=True)
    name = next(iter(checkpoint["state_dict"]))
    checkpoint["state_dict"][name].view(-1)[0] = float("nan")
    _write_raw(path, checkpoint)
    with pytest.warns(CacheWarning, match=rf"{path.name}.*non-finite weights.*{name}"):
        model, again = _train(tmp_path)
    assert not again.cached and again.test_auc == metrics.test_auc
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_nan_metrics_are_refused(tmp_path: Path) -> None:
    _, metrics = _train(tmp_path)
    path = Path(metrics.cache_path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["record"]["test_auc"] = float("nan")
    _write_raw(path, checkpoint)
    with pytest.warns(CacheWarning, match=rf"{path.name}.*non-finite metrics.*test_auc"):
        _, again = _train(tmp_path)
    assert not again.cached and again.test_auc == metrics.test_auc


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("no checksum", "checksum file"),
        ("garbage", "unreadable checkpoint"),
        ("other key", "another key"),
        ("wrong shapes", "parameter"),
        ("not an entry", "not a cimflow cache entry"),
    ],
)
def test_bad_entries_are_discarded(tmp_path: Path, damage: str, reason: str) -> None:
    data = _splits()
    path, key, config, *_ = movielens_dlrm_cache_entry(seed=0, epochs=1, cache_dir=tmp_path, settings=FAST, data=data)
    model = DLRM(config)
    state = model.state_dict()
    if damage == "no checksum":
        assert write_entry(path, key, state, {"test_auc": 0.7})
        checksum_path(path).unlink()
    elif damage == "garbage":
        path.write_bytes(b"not a torch file")
        checksum_path(path).write_text(hashlib.sha256(b"not a torch file").hexdigest() + "  x\n")
    elif damage == "other key":
        assert write_entry(path, key + " ", state, {"test_auc": 0.7})
    elif damage == "wrong shapes":
        other = DLRM(movielens_dlrm_config([14, 7], DENSE, ["a", "b"]))
        assert write_entry(path, key, other.state_dict(), {"test_auc": 0.7})
    else:
        _write_raw(path, {"weights": torch.zeros(3)})
    with pytest.warns(CacheWarning, match=rf"{path.name}.*{reason}"):
        assert read_entry(path, key, model) is None
    assert not path.exists() and not checksum_path(path).exists() and (tmp_path / (path.name + ".bad")).exists()
    assert read_entry(path, key, model) is None  # now a plain miss: no second warning needed


def test_read_entry_returns_a_good_entry_without_warning(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    model = DLRM(movielens_dlrm_config(TABLES, DENSE, ["a", "b"]))
    path = tmp_path / "m.pt"
    assert write_entry(path, "k", model.state_dict(), {"test_auc": 0.75}, ("test_auc",))
    checkpoint = read_entry(path, "k", model, ("test_auc",))
    assert checkpoint is not None and checkpoint["record"] == {"test_auc": 0.75}
    assert not [w for w in recwarn if issubclass(w.category, CacheWarning)]


def test_non_finite_results_are_not_cached(tmp_path: Path) -> None:
    model = DLRM(movielens_dlrm_config(TABLES, DENSE, ["a", "b"]))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    next(iter(state.values())).view(-1)[0] = float("inf")
    with pytest.warns(CacheWarning, match="not caching"):
        assert not write_entry(tmp_path / "m.pt", "k", state, {})
    with pytest.warns(CacheWarning, match="not caching.*test_auc"):
        assert not write_entry(tmp_path / "m.pt", "k", model.state_dict(), {"test_auc": float("nan")}, ("test_auc",))
    assert _entries(tmp_path) == []


def test_an_unwritable_cache_costs_a_warning_not_the_result(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(CacheWarning, match="could not write"):
        model, metrics = train_movielens_dlrm(seed=0, epochs=1, cache=True, cache_dir=blocker / "cache",
                                              data=_splits(), settings=FAST)
    assert metrics.cache_path is None and 0.0 <= metrics.test_auc <= 1.0


def test_the_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    _, metrics = train_movielens_dlrm(seed=0, epochs=1, data=_splits(), settings=FAST)
    assert Path(metrics.cache_path).parent == tmp_path / "c"
    monkeypatch.setenv(CACHE_DIR_ENV, "")
    assert default_cache_dir().name == "recsys"


@settings(max_examples=40, deadline=None)
@given(
    split=st.sampled_from(["train", "validation", "test"]),
    field=st.sampled_from(["dense", "values", "labels"]),
    position=st.integers(0, 10_000),
)
def test_any_one_value_change_changes_the_data_digest(split: str, field: str, position: int) -> None:
    data = _splits()
    before = dataset_digest(data.train, data.validation, data.test)
    target: RecDataset = getattr(data, split)
    if field == "dense":
        flat = target.dense.view(-1)
        flat[position % flat.numel()] += 0.5
    elif field == "values":
        values = target.sparse.values
        i = position % values.numel()
        values[i] = (values[i] + 1) % 7  # every table has at least 7 rows
    else:
        labels = target.labels
        i = position % labels.numel()
        labels[i] = 1.0 - labels[i]
    assert dataset_digest(data.train, data.validation, data.test) != before
    # order matters too: the same splits in another order are other data
    assert dataset_digest(data.validation, data.train, data.test) != dataset_digest(data.train, data.validation, data.test)


def test_cache_key_is_canonical() -> None:
    assert cache_key("m", a=1, b=[1, 2]) == cache_key("m", b=[1, 2], a=1)
    assert cache_key("m", a=1) != cache_key("n", a=1)
    with pytest.raises(CimflowError, match="finite"):
        cache_key("m", settings={"learning_rate": float("nan")})


@needs_recbole
def test_half_of_the_movielens_file_is_another_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reported case: training on half of ml-100k.inter must not reuse the full-file model."""
    from cimflow.recsys import data as data_module

    full, *_ = movielens_dlrm_cache_entry(seed=0, cache_dir=tmp_path)
    source = data_module.movielens_100k_dir()
    half = tmp_path / "ml-100k"
    half.mkdir()
    for name in ("ml-100k.user", "ml-100k.item"):
        shutil.copyfile(source / name, half / name)
    lines = (source / "ml-100k.inter").read_text(encoding="utf-8").splitlines(keepends=True)
    (half / "ml-100k.inter").write_text("".join(lines[: 1 + (len(lines) - 1) // 2]), encoding="utf-8")
    monkeypatch.setattr(data_module, "movielens_100k_dir", lambda: half)
    halved, *_ = movielens_dlrm_cache_entry(seed=0, cache_dir=tmp_path)
    assert halved != full


@needs_recbole
def test_a_bad_hwa_entry_is_named_and_discarded(tmp_path: Path) -> None:
    from cimflow.jobs.hwa_dlrm import HWASettings, hwa_cache_path, load_hwa_movielens_dlrm

    hwa_settings = HWASettings()
    path, key = hwa_cache_path(0, hwa_settings, cache_dir=tmp_path)
    assert path.parent == tmp_path
    assert load_hwa_movielens_dlrm(0, hwa_settings, cache_dir=tmp_path) is None  # a plain miss
    path.write_bytes(b"\x00" * 64)
    checksum_path(path).write_text(hashlib.sha256(b"\x00" * 32).hexdigest() + "  x\n")
    with pytest.warns(CacheWarning, match=rf"{path.name}.*checksum mismatch"):
        assert load_hwa_movielens_dlrm(0, hwa_settings, cache_dir=tmp_path) is None
    assert not path.exists()
    # other HWA settings are another entry
    assert hwa_cache_path(0, HWASettings(lr=1e-4), cache_dir=tmp_path)[0] != path


def test_the_cli_says_where_the_cache_lives_and_can_bypass_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cimflow import cli
    from cimflow.jobs import recsys as recsys_job

    runner = CliRunner()
    shown = runner.invoke(cli.app, ["run", "--help"], env={"COLUMNS": "1000"})
    assert shown.exit_code == 0 and "--no-cache" in shown.output
    assert str(default_cache_dir()) in shown.output and CACHE_DIR_ENV in shown.output
    seen = []
    monkeypatch.setattr(recsys_job, "run_recsys", lambda config, console: seen.append(config.cache))
    for args in (["--no-cache"], []):
        result = runner.invoke(cli.app, ["run", *args, "--out", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html")])
        assert result.exit_code == 0, result.output
    assert seen == [False, True]
