"""Recommendation workloads: DLRM-style models, datasets and the CPU baseline.

This package is a workload, not hardware: it knows nothing of CIM (no imports of
``cimflow.chip``, ``physics``, ``mapping``, ``compile``, ``sim`` or ``cost``).

* :mod:`~cimflow.recsys.jagged` — :class:`JaggedFeatures`, KeyedJaggedTensor-like bags.
* :mod:`~cimflow.recsys.models` — :class:`DLRMConfig`, :class:`DLRM` (dot or DCNv2),
  the :func:`criteo_kaggle` and :func:`mlperf_dlrm_v2` shapes, :func:`fx_trace`.
* :mod:`~cimflow.recsys.data` — :class:`RecDataset`, MovieLens-100k (from the recbole
  wheel), the Criteo TSV reader/writer, the synthetic Zipf generator, access profiles.
* :mod:`~cimflow.recsys.train` — :func:`train_movielens_dlrm`, :func:`evaluate_auc`,
  :func:`roc_auc`.
* :mod:`~cimflow.recsys.baseline` — :func:`measure_dlrm_cpu` (the scaled, repeated DLRM
  baseline) and :func:`measure_cpu_baseline` (any model).
* :mod:`~cimflow.recsys.traces` — :class:`AccessTrace`, :func:`load_trace`,
  :func:`save_trace`: bring-your-own lookups in the TorchRec/FBGEMM jagged layout.
"""

from cimflow.recsys.baseline import (
    PRESET_CPU_POWER_W,
    BatchMeasurement,
    CpuBaseline,
    ScaledBatchResult,
    ScaledCpuBaseline,
    measure_cpu_baseline,
    measure_dlrm_cpu,
)
from cimflow.recsys.criteo import CriteoRecords, iter_criteo_tsv, read_criteo_tsv, write_criteo_tsv
from cimflow.recsys.data import MovieLensSplits, RecDataset, load_movielens_100k, movielens_100k_dir
from cimflow.recsys.jagged import JaggedFeatures
from cimflow.recsys.models import (
    CRITEO_KAGGLE_TABLE_SIZES,
    DLRM,
    MLPERF_DLRM_V2_POOLING_FACTORS,
    MLPERF_DLRM_V2_TABLE_SIZES,
    DLRMConfig,
    criteo_kaggle,
    fx_trace,
    mlperf_dlrm_v2,
)
from cimflow.recsys.synthetic import (
    AccessProfile,
    RowPermutation,
    SyntheticCriteo,
    measure_access,
    sample_zipf_ranks,
    zipf_hit_fraction,
)
from cimflow.recsys.traces import AccessTrace, load_trace, save_trace
from cimflow.recsys.train import (
    TrainMetrics,
    TrainSettings,
    evaluate_auc,
    roc_auc,
    train_dlrm,
    train_movielens_dlrm,
)

__all__ = [
    "AccessProfile",
    "AccessTrace",
    "BatchMeasurement",
    "CRITEO_KAGGLE_TABLE_SIZES",
    "CpuBaseline",
    "CriteoRecords",
    "DLRM",
    "DLRMConfig",
    "JaggedFeatures",
    "MLPERF_DLRM_V2_POOLING_FACTORS",
    "MLPERF_DLRM_V2_TABLE_SIZES",
    "MovieLensSplits",
    "PRESET_CPU_POWER_W",
    "RecDataset",
    "RowPermutation",
    "ScaledBatchResult",
    "ScaledCpuBaseline",
    "SyntheticCriteo",
    "TrainMetrics",
    "TrainSettings",
    "criteo_kaggle",
    "evaluate_auc",
    "fx_trace",
    "iter_criteo_tsv",
    "load_movielens_100k",
    "load_trace",
    "measure_access",
    "measure_cpu_baseline",
    "measure_dlrm_cpu",
    "mlperf_dlrm_v2",
    "movielens_100k_dir",
    "read_criteo_tsv",
    "roc_auc",
    "sample_zipf_ranks",
    "save_trace",
    "train_dlrm",
    "train_movielens_dlrm",
    "write_criteo_tsv",
    "zipf_hit_fraction",
]
