"""DLRM-style recommendation models (plain PyTorch; nothing here knows of CIM).

The DLRM of Naumov et al. 2019 (facebookresearch/dlrm)::

    dense [B, n_dense] ──bottom MLP──▶ x [B, D] ─┐
    sparse bags ──EmbeddingBag(sum) per table──▶ e_1..e_K [B, D] ─┴─▶ interaction ─▶ top MLP ─▶ logit [B]

* ``interaction="dot"``: the pairwise dot products of the K+1 vectors ``(x, e_1..e_K)``,
  the strict upper triangle of their Gram matrix in row-major order (pairs (i, j),
  i < j, vector 0 being ``x``), concatenated after ``x``: width ``D + (K+1)K/2``.
* ``interaction="dcn"``: DCNv2 cross layers (Wang et al., WWW 2021) on
  ``x0 = concat(x, e_1..e_K)``: ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l``, with
  ``W_l = U_l V_l`` of rank ``cross_rank`` when given (the low-rank form MLPerf
  DLRM-v2 uses); width ``(K+1) D``.

**The model returns logits.** The sigmoid of DLRM's last layer is a separate step,
:meth:`DLRM.predict_proba` (or ``torch.sigmoid``), so training can use
``BCEWithLogitsLoss`` and a compiler sees the sigmoid as its own operator.

Layer widths in :class:`DLRMConfig` are *output* widths: ``bottom_mlp`` starts after
the ``dense_features`` inputs, ``top_mlp`` after the interaction output
(:attr:`DLRMConfig.top_input_dim`; 367 for the Criteo Kaggle shape). Every layer is
followed by a ReLU except the last layer of the top MLP (the logit).

Inputs: ``forward(dense, sparse)`` takes ``sparse`` as a
:class:`~cimflow.recsys.jagged.JaggedFeatures` (checked against the table sizes) or
as a list of one ``(values, offsets [B+1])`` pair per table. The list form is what
``torch.fx.symbolic_trace(model)`` traces (the ``sparse`` placeholder is indexed
``sparse[k][0]``, ``sparse[k][1]``); see :func:`fx_trace`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from cimflow.errors import CimflowError, DataError
from cimflow.recsys.jagged import FeaturePair, JaggedFeatures

__all__ = [
    "CRITEO_KAGGLE_TABLE_SIZES",
    "MLPERF_DLRM_V2_TABLE_SIZES",
    "MLPERF_DLRM_V2_POOLING_FACTORS",
    "DLRMConfig",
    "DLRM",
    "DotInteraction",
    "CrossNetwork",
    "criteo_kaggle",
    "mlperf_dlrm_v2",
    "fx_trace",
    "table_weights",
]

#: Rows of the 26 tables of Criteo Kaggle (Display Advertising Challenge) after the
#: facebookresearch/dlrm preprocessing (one row per distinct value, no hashing cap);
#: 33,762,577 rows in all.
CRITEO_KAGGLE_TABLE_SIZES: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip

#: Rows of the 26 tables of MLPerf DLRM-v2 (Criteo 1TB, values capped at 40M rows per
#: table, `--num_embeddings_per_feature` of the MLPerf training reference,
#: recommendation_v2/torchrec_dlrm); 204,184,588 rows in all.
MLPERF_DLRM_V2_TABLE_SIZES: tuple[int, ...] = (
    40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10,
    2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36,
)  # fmt: skip

#: Lookups per sample and table of the MLPerf DLRM-v2 synthetic multi-hot dataset
#: (`--multi_hot_sizes` of the same reference); 214 lookups per sample in all.
MLPERF_DLRM_V2_POOLING_FACTORS: tuple[int, ...] = (
    3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1,
)  # fmt: skip

Interaction = Literal["dot", "dcn"]


def _int_tuple(name: str, values: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise CimflowError(f"DLRMConfig.{name} must be a list of integers, got {values!r}") from exc
    return out


@dataclass(frozen=True)
class DLRMConfig:
    """Sizes of a DLRM. Lists are stored as tuples (the config is hashable).

    Attributes:
        dense_features: number of dense (continuous) inputs.
        table_sizes: rows of each embedding table, one table per sparse feature.
        embedding_dim: width D of every embedding row (and of the bottom MLP output).
        bottom_mlp: output widths of the bottom MLP layers; the last must equal
            ``embedding_dim``.
        top_mlp: output widths of the top MLP layers; the last must be 1 (the logit).
        interaction: ``"dot"`` (pairwise dot products) or ``"dcn"`` (DCNv2 cross layers).
        cross_layers: number of cross layers (``"dcn"`` only).
        cross_rank: rank of the low-rank cross weights, or None for full rank (``"dcn"``).
        pooling_factors: typical lookups per sample and table (multi-hot bag sizes);
            used by synthetic data and cost estimates, not by the forward pass.
        feature_names: names of the sparse features (default ``cat_0..cat_{K-1}``).
    """

    dense_features: int
    table_sizes: tuple[int, ...]
    embedding_dim: int
    bottom_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]
    interaction: Interaction = "dot"
    cross_layers: int = 3
    cross_rank: int | None = None
    pooling_factors: tuple[int, ...] | None = None
    feature_names: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "table_sizes", _int_tuple("table_sizes", self.table_sizes))
        set_(self, "bottom_mlp", _int_tuple("bottom_mlp", self.bottom_mlp))
        set_(self, "top_mlp", _int_tuple("top_mlp", self.top_mlp))
        if self.pooling_factors is not None:
            set_(self, "pooling_factors", _int_tuple("pooling_factors", self.pooling_factors))
        if self.feature_names is not None:
            set_(self, "feature_names", tuple(str(n) for n in self.feature_names))
        self._check()

    def _check(self) -> None:
        k = len(self.table_sizes)
        if self.dense_features < 1:
            raise CimflowError(f"DLRMConfig.dense_features must be >= 1, got {self.dense_features}")
        if k < 1:
            raise CimflowError("DLRMConfig.table_sizes must list at least one table")
        if min(self.table_sizes) < 1:
            raise CimflowError(f"DLRMConfig.table_sizes must all be >= 1, got {list(self.table_sizes)}")
        if self.embedding_dim < 1:
            raise CimflowError(f"DLRMConfig.embedding_dim must be >= 1, got {self.embedding_dim}")
        if not self.bottom_mlp or self.bottom_mlp[-1] != self.embedding_dim:
            raise CimflowError(
                f"DLRMConfig.bottom_mlp {list(self.bottom_mlp)} must end at embedding_dim = "
                f"{self.embedding_dim} (the bottom MLP output joins the embeddings)"
            )
        if not self.top_mlp or self.top_mlp[-1] != 1:
            raise CimflowError(f"DLRMConfig.top_mlp {list(self.top_mlp)} must end at 1 (the logit)")
        if min(self.bottom_mlp + self.top_mlp) < 1:
            raise CimflowError("DLRMConfig MLP widths must all be >= 1")
        if self.interaction not in ("dot", "dcn"):
            raise CimflowError(f"DLRMConfig.interaction must be 'dot' or 'dcn', got {self.interaction!r}")
        if self.interaction == "dcn" and self.cross_layers < 1:
            raise CimflowError(f"DLRMConfig.cross_layers must be >= 1 for 'dcn', got {self.cross_layers}")
        if self.cross_rank is not None and self.cross_rank < 1:
            raise CimflowError(f"DLRMConfig.cross_rank must be >= 1 or None, got {self.cross_rank}")
        if self.pooling_factors is not None and (
            len(self.pooling_factors) != k or min(self.pooling_factors) < 1
        ):
            raise CimflowError(
                f"DLRMConfig.pooling_factors needs {k} entries >= 1 (one per table), "
                f"got {list(self.pooling_factors)}"
            )
        if self.feature_names is not None and (
            len(self.feature_names) != k or len(set(self.feature_names)) != k
        ):
            raise CimflowError(
                f"DLRMConfig.feature_names needs {k} unique names (one per table), "
                f"got {list(self.feature_names)}"
            )

    # ------------------------------------------------------------------ derived sizes
    @property
    def num_tables(self) -> int:
        """Number of sparse features / embedding tables K."""
        return len(self.table_sizes)

    @property
    def keys(self) -> list[str]:
        """Sparse feature names, in table order."""
        if self.feature_names is not None:
            return list(self.feature_names)
        return [f"cat_{k}" for k in range(self.num_tables)]

    @property
    def interaction_dim(self) -> int:
        """Width of the interaction output, the input of the top MLP."""
        d, k = self.embedding_dim, self.num_tables
        if self.interaction == "dot":
            return d + (k + 1) * k // 2
        return (k + 1) * d

    @property
    def top_input_dim(self) -> int:
        """Input width of the top MLP (= :attr:`interaction_dim`)."""
        return self.interaction_dim

    @property
    def total_rows(self) -> int:
        """Embedding rows over all tables."""
        return sum(self.table_sizes)

    def embedding_bytes(self, bytes_per_value: int = 4) -> int:
        """Bytes of all embedding tables at ``bytes_per_value`` (4 for fp32)."""
        return self.total_rows * self.embedding_dim * bytes_per_value

    @property
    def lookups_per_sample(self) -> int:
        """Embedding rows read per sample (sum of pooling factors; 1 per table if unset)."""
        return sum(self.pooling_factors) if self.pooling_factors else self.num_tables

    def to_dict(self) -> dict[str, object]:
        """Plain-JSON form (lists, not tuples)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def replace(self, **changes: object) -> DLRMConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def criteo_kaggle() -> DLRMConfig:
    """The facebookresearch/dlrm Criteo Kaggle shape: 13 dense, 26 tables (33.8M rows),
    dim 16, bottom 13-512-256-64-16, top 367-512-256-1, dot interaction, single-hot."""
    return DLRMConfig(
        dense_features=13,
        table_sizes=CRITEO_KAGGLE_TABLE_SIZES,
        embedding_dim=16,
        bottom_mlp=(512, 256, 64, 16),
        top_mlp=(512, 256, 1),
        interaction="dot",
        pooling_factors=(1,) * 26,
        feature_names=tuple(f"C{i}" for i in range(1, 27)),
    )


def mlperf_dlrm_v2() -> DLRMConfig:
    """The MLPerf DLRM-v2 shape (Criteo 1TB multi-hot, DCNv2): 13 dense, 26 tables
    (204M rows, ~97 GiB fp32), dim 128, bottom 13-512-256-128, 3 low-rank (512) cross
    layers, top 1024-1024-512-256-1, 214 lookups per sample. Build it on
    ``device="meta"`` unless you have the memory."""
    return DLRMConfig(
        dense_features=13,
        table_sizes=MLPERF_DLRM_V2_TABLE_SIZES,
        embedding_dim=128,
        bottom_mlp=(512, 256, 128),
        top_mlp=(1024, 1024, 512, 256, 1),
        interaction="dcn",
        cross_layers=3,
        cross_rank=512,
        pooling_factors=MLPERF_DLRM_V2_POOLING_FACTORS,
        feature_names=tuple(f"C{i}" for i in range(1, 27)),
    )


def _mlp(
    in_features: int,
    widths: Sequence[int],
    relu_last: bool,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> nn.Sequential:
    layers: list[nn.Module] = []
    previous = in_features
    for i, width in enumerate(widths):
        layers.append(nn.Linear(previous, width, device=device, dtype=dtype))
        if relu_last or i < len(widths) - 1:
            layers.append(nn.ReLU())
        previous = width
    return nn.Sequential(*layers)


class DotInteraction(nn.Module):
    """Pairwise dot products of ``num_vectors`` vectors (the bottom output first).

    Output ``[B, D + n(n-1)/2]``: the bottom vector, then ``<v_i, v_j>`` for i < j in
    row-major order ((0,1), (0,2), ..., (1,2), ...).
    """

    def __init__(self, num_vectors: int) -> None:
        super().__init__()
        self.num_vectors = num_vectors

    def forward(self, bottom: Tensor, embedded: list[Tensor]) -> Tensor:
        stacked = torch.stack([bottom, *embedded], dim=1)  # [B, n, D]
        gram = torch.bmm(stacked, stacked.transpose(1, 2))  # [B, n, n]
        pairs = torch.triu_indices(self.num_vectors, self.num_vectors, 1, device=bottom.device)
        return torch.cat([bottom, gram[:, pairs[0], pairs[1]]], dim=1)


class CrossNetwork(nn.Module):
    """DCNv2 cross layers on ``x0 = concat(bottom, embeddings)``.

    ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l``; with ``rank`` given, ``W_l = U_l V_l``
    (``down[l]``: dim→rank without bias, ``up[l]``: rank→dim with bias).
    """

    def __init__(
        self,
        dim: int,
        layers: int,
        rank: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dim, self.num_layers, self.rank = dim, layers, rank
        if rank is None:
            self.full = nn.ModuleList(nn.Linear(dim, dim, device=device, dtype=dtype) for _ in range(layers))
        else:
            self.down = nn.ModuleList(
                nn.Linear(dim, rank, bias=False, device=device, dtype=dtype) for _ in range(layers)
            )
            self.up = nn.ModuleList(nn.Linear(rank, dim, device=device, dtype=dtype) for _ in range(layers))

    def forward(self, bottom: Tensor, embedded: list[Tensor]) -> Tensor:
        x0 = torch.cat([bottom, *embedded], dim=1)
        x = x0
        for layer in range(self.num_layers):
            if self.rank is None:
                mixed = self.full[layer](x)
            else:
                mixed = self.up[layer](self.down[layer](x))
            x = x0 * mixed + x
        return x


class DLRM(nn.Module):
    """DLRM with sum-pooled embedding bags and a dot or DCNv2 interaction.

    Args:
        config: the sizes.
        device: where parameters live; ``"meta"`` allocates nothing (for shapes such as
            :func:`mlperf_dlrm_v2`; use ``to_empty(device=...)`` then
            :meth:`reset_parameters` to materialize).
        dtype: parameter dtype (default: torch's default, fp32).

    ``forward(dense [B, n_dense], sparse) -> logits [B]`` (no sigmoid; see
    :meth:`predict_proba`).
    """

    def __init__(
        self,
        config: DLRMConfig,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.bottom_mlp = _mlp(config.dense_features, config.bottom_mlp, True, device, dtype)
        self.embeddings = nn.ModuleList(
            nn.EmbeddingBag(
                rows, config.embedding_dim, mode="sum", include_last_offset=True, device=device, dtype=dtype
            )
            for rows in config.table_sizes
        )
        self.interaction: nn.Module
        if config.interaction == "dot":
            self.interaction = DotInteraction(config.num_tables + 1)
        else:
            self.interaction = CrossNetwork(
                config.interaction_dim, config.cross_layers, config.cross_rank, device, dtype
            )
        self.top_mlp = _mlp(config.interaction_dim, config.top_mlp, False, device, dtype)
        self._init_embeddings()

    @property
    def num_tables(self) -> int:
        """Number of embedding tables."""
        return self.config.num_tables

    def _init_embeddings(self) -> None:
        # facebookresearch/dlrm convention: rows ~ U(-sqrt(1/n), sqrt(1/n)) for n rows.
        with torch.no_grad():
            for weight in table_weights(self):
                bound = math.sqrt(1.0 / weight.shape[0])
                weight.uniform_(-bound, bound)

    def reset_parameters(self) -> None:
        """Re-initialize every parameter (e.g. after ``to_empty`` from meta)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
        self._init_embeddings()

    def _check_inputs(self, dense: Tensor, sparse: JaggedFeatures | Sequence[FeaturePair]) -> None:
        if dense.dim() != 2 or dense.shape[1] != self.config.dense_features:
            raise DataError(
                f"dense input must be [batch, {self.config.dense_features}], got {tuple(dense.shape)}"
            )
        if isinstance(sparse, JaggedFeatures):
            expected = self.config.keys if self.config.feature_names is not None else None
            if expected is not None and sparse.keys != expected:
                raise DataError(f"sparse keys {sparse.keys} do not match the model's features {expected}")
            sparse.validate(self.config.table_sizes)
            batch = sparse.batch_size
        else:
            if len(sparse) != self.num_tables:
                raise DataError(
                    f"sparse input has {len(sparse)} (values, offsets) pairs; the model has "
                    f"{self.num_tables} tables"
                )
            batch = sparse[0][1].numel() - 1
        if batch != dense.shape[0]:
            raise DataError(f"dense batch is {dense.shape[0]} but sparse batch is {batch}")

    def pooled_embeddings(self, sparse: JaggedFeatures | Sequence[FeaturePair]) -> list[Tensor]:
        """Sum-pooled embedding of every table, each ``[B, D]``."""
        pairs = sparse.per_feature() if isinstance(sparse, JaggedFeatures) else sparse
        pooled = []
        for k in range(self.num_tables):
            pair = pairs[k]
            pooled.append(self.embeddings[k](pair[0], pair[1]))
        return pooled

    def forward(self, dense: Tensor, sparse: JaggedFeatures | Sequence[FeaturePair]) -> Tensor:
        """Logits ``[B]`` for dense ``[B, n_dense]`` and sparse bags (see module doc)."""
        if isinstance(dense, Tensor) and isinstance(sparse, (JaggedFeatures, list, tuple)):
            self._check_inputs(dense, sparse)  # eager only; skipped under fx tracing
        bottom = self.bottom_mlp(dense)
        pooled = self.pooled_embeddings(sparse)
        interacted = self.interaction(bottom, pooled)
        return self.top_mlp(interacted).squeeze(1)

    @torch.no_grad()
    def predict_proba(self, dense: Tensor, sparse: JaggedFeatures | Sequence[FeaturePair]) -> Tensor:
        """Click probabilities ``sigmoid(forward(...))``, ``[B]``."""
        return torch.sigmoid(self.forward(dense, sparse))


def table_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weight (rows x dim) of each embedding table of a DLRM, in table order; also of a
    DLRM whose tables were replaced by other modules that keep a ``weight`` parameter."""
    return [bag.get_parameter("weight") for bag in model.get_submodule("embeddings").children()]


def fx_trace(model: DLRM) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace`` of a DLRM; call the result as
    ``graph_module(dense, [(values_k, offsets_k) for each table])``.

    The graph has placeholders ``dense`` and ``sparse``; each table's bag is
    ``sparse[k][0]`` / ``sparse[k][1]`` (getitem nodes) feeding the call_module node
    ``embeddings.k`` (an ``nn.EmbeddingBag``).
    """
    return torch.fx.symbolic_trace(model)
