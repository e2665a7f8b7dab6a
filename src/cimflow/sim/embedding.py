"""Embedding tables in CIM arrays: sum-pooling as an in-array multi-row read.

A table mapped onto arrays stores its rows as conductances. Pooling a bag is one analog
MVM: the bag's rows are driven together and the column currents are the pooled vector,
digitized by the ADC. An array may drive at most ``max_active_rows`` rows at once, so a
bag with more rows in one array takes several reads, each digitized, then accumulated in
digital. Rows of a *hot tier* (SRAM / digital lookup) are read exactly and added in digital.

Programming noise, stuck cells and drift exponents of every cell come from a
counter-based hash of (seed, table, row, cell, side) in int32 / float32 arithmetic
(:func:`cimflow.physics.hashing.cell_draws`): a table of 10^8 rows never has a noisy copy.
Tables of up to :data:`CACHE_CELLS` cells are programmed once and cached (the same values
the hash gives), which makes them fast.

Speed (``benchmarks/embedding_pooling.py``): a lookup that is the only row of its bag in
its array is read alone; its codes have a fixed distribution per instance state, so it is
served from an outcome table (:mod:`cimflow.sim.pooling`: one ``F.embedding_bag`` over
noise-free pooled values, one uniform per lookup, and draws for the noise-sensitive cells of
the few lookups whose codes move). The other lookups are grouped into reads by one sort of
(bag, array) keys; every read's partial sums and read-noise variances come from one
``F.embedding_bag`` over the cached rows (an uncached table keeps the rows it hashed for
them); reads are converted in cache-sized blocks, one clamped normal per partial sum. On a
CPU all of it is one compiled pass (:mod:`cimflow.sim.fused_table`).

As for matrix layers (:mod:`cimflow.sim.engine`): program-and-verify
(:meth:`CIMEmbeddingBag.set_program_verify`; its re-programming draws are hashed per
iteration), write-pulse counting (:attr:`CIMEmbeddingBag.write_pulses`), drift
compensation from a reference read (:meth:`CIMEmbeddingBag.set_compensation`) and
percentile ADC calibration (:func:`cimflow.calibrate`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cimflow.chip.spec import ArraySpec
from cimflow.errors import SimulationError
from cimflow.mapping import encode_weights
from cimflow.physics import adc_quantize, quantize_symmetric
from cimflow.physics.hashing import stream_key
from cimflow.sim import fused_table, hugepages, pooling
from cimflow.sim.array_state import (
    ArrayInstance,
    drifted,
    effective_weights,
    instance_op,
    live_instance,
    moment_full_scale,
    percentile_values,
    program_hashed_cells,
    reference_sums,
    refresh_before_forward,
    table_dead_cells,
)
from cimflow.sim.tables import HashedTable, ParameterTable, TableSource, TensorTable

__all__ = ["CACHE_CELLS", "CIMEmbeddingBag", "HashedTable", "NOISE_TAIL", "READ_BLOCK", "REFERENCE_ROWS", "TableSource", "TensorTable"]

#: Tables with at most this many cells are programmed once and cached (8 bytes per cell with
#: read noise: 256 MiB at the limit, e.g. 10^5 rows x 64 x 4 cells = 205 MB). Reads that
#: share an array in an uncached table hash their rows on every forward (~16 us per row).
CACHE_CELLS = 1 << 25
#: Rows of an uncached table that its drift-compensation reference read drives (the first
#: this many), and from which its program-and-verify pulses are extrapolated.
REFERENCE_ROWS = 4096
#: Read noise is drawn from a normal clamped at this many standard deviations (a larger
#: draw has probability 2e-9). An ADC input farther than that from every decision boundary
#: therefore converts to the same code with or without noise: the outcome table of lone
#: reads (:mod:`cimflow.sim.pooling`) keeps only the cells within reach of a boundary.
NOISE_TAIL = 6.0
#: Reads converted per block on a CPU (a block's sums, noise and codes stay in cache).
READ_BLOCK = 1024


class CIMEmbeddingBag(ArrayInstance):
    """``nn.EmbeddingBag`` (mode sum or mean) or ``nn.Embedding`` whose table lives in arrays.

    ``weight`` stays an ordinary parameter (when the table is in memory). ``hot_rows``
    (sorted row ids) are served exactly from a digital tier. The instance's lifecycle (seed,
    time, program-and-verify, write pulses, drift compensation, calibration) is
    :class:`cimflow.sim.array_state.ArrayInstance`'s.
    """

    # buffers registered in __init__ (None when absent or not built yet)
    hot_rows: torch.Tensor | None
    pool_cache: torch.Tensor | None
    mode: str  # "sum" or "mean"
    # the latest forward's lookups (set by _flatten)
    _out_shape: tuple[int, ...]
    _one_per_bag: bool

    def __init__(self, source: nn.EmbeddingBag | nn.Embedding | TableSource, spec: ArraySpec, array_kind: str, name: str = "",
                 hot_rows: torch.Tensor | None = None) -> None:
        super().__init__()
        self._init_instance(spec, name, f"embedding {name!r}")
        self.array_kind, self.layer_name = array_kind, name
        self.is_bag = isinstance(source, nn.EmbeddingBag)
        if isinstance(source, (nn.EmbeddingBag, nn.Embedding)):
            if self.is_bag and source.mode not in ("sum", "mean"):
                raise SimulationError(f"embedding bag {name!r}: mode {source.mode!r} cannot be pooled in an array (sum or mean only); "
                                      "keep it on the host")
            self.mode = str(source.mode) if self.is_bag else "sum"
            self.include_last_offset = bool(getattr(source, "include_last_offset", False))
            self.padding_idx = source.padding_idx
            self.num_embeddings, self.embedding_dim = source.num_embeddings, source.embedding_dim
            self.weight = source.weight
            self.table: TableSource = ParameterTable(self)
        else:
            self.is_bag, self.mode, self.include_last_offset, self.padding_idx = True, "sum", True, None
            self.num_embeddings, self.embedding_dim = source.num_embeddings, source.embedding_dim
            self.table = source
        hot = None if hot_rows is None else torch.as_tensor(hot_rows, dtype=torch.int64).sort().values
        self.register_buffer("hot_rows", hot, persistent=False)
        # pool_cache: every row's effective weights, then (with read noise) their read-noise
        # variances, (rows, S * dim) each side by side; w_cache / var_cache are views of it
        self.register_buffer("pool_cache", None, persistent=False)
        self._reference_hint: tuple[torch.Tensor, ...] | None = None  # the reference rows' state while refreshing
        self._adc_range_expected: float | None = None  # ADC range "expected", set by program()
        self._read_key, self._read_draw = 0, 0  # counter-based read-noise stream of the fused read (sim/fused_table.py)
        # re-programming after a weight change happens before forward, never inside it
        self.register_forward_pre_hook(refresh_before_forward)
        self.collect_stats = False
        self.stats = {"bags": 0, "lookups": 0, "reads": 0, "hot_lookups": 0}

    # ----------------------------------------------------------------- dtype
    def _apply(self, fn, recurse: bool = True):
        """``.to(device)`` moves the instance state; ``.double()`` / ``.half()`` / ``.to(dtype)``
        convert only ``weight``: the simulated state (cached conductances, scales,
        compensation, calibrated ranges) stays float32 whatever the module's dtype, so the
        statistics do not depend on it; :meth:`forward` returns the weight's dtype."""
        state = {name: buf for name, buf in self._buffers.items() if buf is not None and buf.is_floating_point()
                 and name != "_anchor"}
        for name in state:
            self._buffers[name] = None
        try:
            super()._apply(fn, recurse)  # the weight, and the anchor: where the state goes
        finally:
            for name, buf in state.items():
                self._buffers[name] = buf.to(self._anchor.device)
        return self

    @property
    def out_dtype(self) -> torch.dtype:
        """The dtype of :meth:`forward`'s output: the weight's (as ``nn.EmbeddingBag``), float32
        for a table described by a :class:`~cimflow.sim.tables.TableSource`."""
        w = getattr(self, "weight", None)
        return w.dtype if isinstance(w, torch.Tensor) and w.is_floating_point() else torch.float32

    # ----------------------------------------------------------------- programming
    @property
    def w_cache(self) -> torch.Tensor | None:
        """Cached effective weights (rows, S, dim) in units of the conductance span (None: lazy)."""
        c = self.pool_cache
        return None if c is None else c[:, : self._cache_width].view(c.shape[0], -1, self.embedding_dim)

    @w_cache.setter
    def w_cache(self, value: None) -> None:
        if value is not None:
            raise SimulationError("w_cache can only be cleared (set to None); program() fills it")
        self.pool_cache = None

    @property
    def var_cache(self) -> torch.Tensor | None:
        """Cached per-cell read-noise variances (rows, S, dim), None without read noise."""
        c = self.pool_cache
        if c is None or c.shape[1] == self._cache_width:
            return None
        return c[:, self._cache_width :].view(c.shape[0], -1, self.embedding_dim)

    @property
    def _significance(self) -> torch.Tensor:
        """The slice significances (the :attr:`significance` buffer, set by :meth:`program`)."""
        return self.significance

    @property
    def _denominator(self) -> float:
        return self.denominator

    @property
    def group_rows(self) -> int:
        return min(self.spec.rows, self.spec.max_active_rows or self.spec.rows)

    @property
    def cells(self) -> int:
        return self.num_embeddings * self.embedding_dim * self.spec.cells_per_weight

    def program(self, seed: int) -> None:
        self._start_programming(seed)
        self._read_key, self._read_draw = stream_key(int(seed), self.layer_name, "read", "counter"), 0
        device = self._device()
        self.w_scale = self.table.column_scale().to(device)
        if self.spec.kind != "digital":  # slice significances and span, known before any row is read
            targets = encode_weights(torch.zeros(1, self.embedding_dim), self.spec, 1)
            self.significance = torch.tensor(targets.significance, device=device)
            self.denominator = targets.denominator
        self.pool_cache = None
        self._refresh_cache()
        self._adc_range_expected = self._expected_adc_range()
        self._programmed_version = self._weight_version()
        self.write_pulses = self._base_pulses()
        if self.verify_iterations and self.spec.kind != "digital":
            self._verify_pulses = 0
            rows = self._reference_rows()
            self._programmed(rows, count_pulses=True)
            self.write_pulses += round(self._verify_pulses * self.num_embeddings / rows.numel())

    def _expected_adc_range(self) -> float | None:
        """ADC range ``expected`` (None otherwise): mean + ``sigmas`` standard deviations of a
        read's column sum when a read drives ``group_rows`` rows (one for a plain Embedding)
        drawn at random from the table, from the programmed rows at t0 (every row of a cached
        table, the reference rows of an uncached one), the largest over columns and slices,
        never above the worst case."""
        adc = self.spec.adc
        if adc is None or adc.range != "expected":
            return None
        rows = self.group_rows if self.is_bag else 1
        w = self.w_cache if self.w_cache is not None else self._rows_effective(self._reference_rows())[0]  # (n, S, dim)
        mean, var = w.mean(dim=0), w.var(dim=0, unbiased=False)
        full = (mean * rows).abs() + adc.sigmas * (var * rows).sqrt()
        return min(max(float(full.max()), 1e-12), float(rows))

    def _base_pulses(self) -> int:
        """One write per cell (per bit cell for a digital table)."""
        if self.spec.kind == "digital":
            return self.num_embeddings * self.embedding_dim * (self.spec.weight_bits or 8)
        return self.num_embeddings * self.embedding_dim * self.spec.cells_per_weight

    def _reference_rows(self) -> torch.Tensor:
        """Every row of a cached table, the first :data:`REFERENCE_ROWS` of an uncached one."""
        rows = self.num_embeddings if self.cells <= CACHE_CELLS else min(self.num_embeddings, REFERENCE_ROWS)
        return torch.arange(rows, device=self.w_scale.device)

    # ----------------------------------------------------------------- drift compensation
    def _reference_sums(self, programmed: tuple[torch.Tensor, ...], t_seconds: float) -> torch.Tensor:
        g_pos, g_neg, nu_pos, nu_neg = programmed
        dev = self.spec.device
        return reference_sums(drifted(g_pos, nu_pos, t_seconds, dev), drifted(g_neg, nu_neg, t_seconds, dev), self._significance,
                              self.denominator)

    @torch.no_grad()
    def reference_read(self, t_seconds: float | None = None) -> torch.Tensor | None:
        """The reference read at ``t_seconds`` (default: now): each physical column's current
        with the table's rows driven (every row of a cached table, the first
        :data:`REFERENCE_ROWS` of an uncached one), slices combined by significance, in units
        of the conductance span; shape (dim,). None for digital tables or before programming.
        See :meth:`cimflow.sim.engine.CrossbarEngine.reference_read`."""
        if self.spec.kind == "digital" or self.seed is None:
            return None
        programmed = self._programmed(self._reference_rows())
        return self._reference_sums(programmed, self.t_seconds if t_seconds is None else float(t_seconds))

    def _reference_reads(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        programmed = self._reference_hint
        if programmed is None:
            programmed = self._programmed(self._reference_rows())
        return self._reference_sums(programmed, self.spec.device.drift.t0_s), self._reference_sums(programmed, self.t_seconds)

    # ----------------------------------------------------------------- calibration
    def _finish_calibration(self) -> None:
        """ADC range from the |partial sums| seen: their percentile (``adc.range == "percentile"``)
        or their mean + ``sigmas`` standard deviations (``expected``)."""
        percentile, sigmas = self._calibrating_percentile(), self._calibrating_sigmas()
        if percentile is not None:
            allp = torch.cat(self._calib_psums)
            self.adc_range_calibrated = percentile_values(allp, percentile, dim=0).clamp_min(1e-12)
        elif sigmas is not None:
            self.adc_range_calibrated = moment_full_scale(torch.cat(self._calib_psums), dim=0, sigmas=sigmas).clamp_min(1e-12)

    def _device(self) -> torch.device:
        """Where to program: the weight's device, else where the instance was moved."""
        w = getattr(self, "weight", None)
        device = w.device if isinstance(w, torch.Tensor) else self.instance_device
        return device if device.type != "meta" else torch.device("cpu")

    def refresh(self) -> bool:
        """Program this table again if its weight changed since programming (same seed and time)."""
        if self.seed is None or self._programmed_version is None or self._weight_version() == self._programmed_version:
            return False
        t = self.t_seconds
        self.program(self.seed)
        if t != self.t_seconds:
            self.set_time(t)
        return True

    def _weight_version(self) -> int | None:
        w = getattr(self, "weight", None)
        return w._version if isinstance(w, torch.Tensor) else None

    def _after_time_change(self) -> None:
        self._refresh_cache()

    def _programmed(self, idx: torch.Tensor, count_pulses: bool = False) -> tuple[torch.Tensor, ...]:
        """Programmed conductances (S, n, dim) and drift exponents of rows ``idx``, from the hash
        (program-and-verify included; with ``count_pulses`` its re-programming pulses are added
        to ``_verify_pulses``)."""
        dev, spec = self.spec.device, self.spec
        w = (self.table.rows(idx).to(self.w_scale.device) / self.w_scale).clamp(-1, 1)
        if spec.kind == "digital":
            q = quantize_symmetric(w, spec.weight_bits or 8, 1.0).unsqueeze(0)
            return q, torch.zeros_like(q), torch.zeros_like(q), torch.zeros_like(q)
        targets = encode_weights(w, spec, 1)
        pos, neg = torch.stack(targets.positive), torch.stack(targets.negative)
        if targets.reference_per_col_tile:
            neg = neg.expand(-1, -1, self.embedding_dim)
        out = []
        for side, target in (("pos", pos), ("neg", neg)):
            dead = None if side == "neg" and targets.reference_per_col_tile else table_dead_cells(  # array yield: dead lines
                idx, target.shape[0], self.embedding_dim, dev, self.seed or 0, self.layer_name, side, (spec.rows, spec.weight_columns))
            g, nu, pulses = program_hashed_cells(target, dev, idx, self.seed or 0, self.layer_name, side,
                                                 self.verify_iterations, self.verify_tolerance, dead)
            if count_pulses:
                self._verify_pulses += pulses
            out.append((g, nu))
        return out[0][0], out[1][0], out[0][1], out[1][1]

    def _effective(self, g_pos, g_neg, nu_pos, nu_neg) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalized effective weights (S, n, dim) and per-cell read-noise variance at ``t_seconds``."""
        if self.spec.kind == "digital":
            return g_pos, None
        dev = self.spec.device
        gp, gn = drifted(g_pos, nu_pos, self.t_seconds, dev), drifted(g_neg, nu_neg, self.t_seconds, dev)
        return effective_weights(gp, gn, self.denominator, dev.read_noise)

    def _refresh_cache(self) -> None:
        """Small tables: every row's effective weights at ``t_seconds``, from the same hash
        the lazy path uses (so both paths give identical values); big tables: nothing."""
        self.pool_cache = None
        if self.cells > CACHE_CELLS:
            self._update_gain()
            return
        idx = torch.arange(self.num_embeddings, device=self.w_scale.device)
        programmed = self._programmed(idx)
        w, var = self._effective(*programmed)
        parts = [w.permute(1, 0, 2).reshape(idx.numel(), -1)] + ([] if var is None else [var.permute(1, 0, 2).reshape(idx.numel(), -1)])
        self._cache_width = parts[0].shape[1]
        cache = hugepages.empty(idx.numel(), sum(p.shape[1] for p in parts), dtype=parts[0].dtype, device=parts[0].device)
        self.pool_cache = torch.cat(parts, dim=1, out=cache)  # (rows, S*dim [+ S*dim]); read at random rows: 2 MiB pages
        self._reference_hint = programmed  # every row: the reference rows
        try:
            self._update_gain()
        finally:
            self._reference_hint = None

    def _rows_effective(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(n, S, dim) effective weights and variances of the rows ``idx``."""
        if self.w_cache is not None:
            return self.w_cache[idx], None if self.var_cache is None else self.var_cache[idx]
        w, var = self._effective(*self._programmed(idx))
        return w.permute(1, 0, 2), None if var is None else var.permute(1, 0, 2)

    # ----------------------------------------------------------------- reading
    def _flatten(self, input: torch.Tensor, offsets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Flat indices, the bag of each index, and the number of bags (checked against the
        table in one host sync, :func:`cimflow.sim.pooling.flatten_bags`); sets the output
        shape and ``_one_per_bag`` (no bag holds two indices)."""
        flat = pooling.flatten_bags(input, offsets, self.is_bag, self.include_last_offset, self.num_embeddings, self.layer_name)
        self.__dict__.update(_out_shape=flat.out_shape, _one_per_bag=flat.one_per_bag, _per_bag=flat.per_bag,
                             _n_flat=flat.idx.numel())  # plain attributes (no Module.__setattr__)
        return flat.idx, flat.bags, flat.n_bags

    def forward(self, input: torch.Tensor, offsets: torch.Tensor | None = None,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        if self.seed is None:
            raise SimulationError(f"embedding {self.layer_name!r} is not programmed: call cimflow.program(model, seed=...) first")
        if per_sample_weights is not None:
            raise SimulationError(f"embedding bag {self.layer_name!r}: per_sample_weights are not pooled in arrays yet; "
                                  "keep this table on the host")
        if offsets is not None and not torch.is_grad_enabled():  # a cached table's read, its state unchanged since the last
            fast = fused_table.read_prepared(self, input, offsets, NOISE_TAIL)
            if fast is not None:
                return fast
        if torch.compiler.is_compiling():  # one opaque op in the graph (its shapes depend on the indices' values)
            pooled = _pool_op(id(self), input, offsets)
        elif torch.is_grad_enabled():
            pooled = self.pooled(input, offsets)
        else:  # (no no_grad context to enter)
            pooled = self._pooled(input, offsets)
        pooled = pooled.to(self.out_dtype)
        w = getattr(self, "weight", None)
        if isinstance(w, nn.Parameter) and w.requires_grad and torch.is_grad_enabled():
            # straight-through: the gradient of the exact pooling reaches the table
            if self.is_bag:
                exact = F.embedding_bag(input, w, offsets, mode=self.mode, include_last_offset=self.include_last_offset,
                                        padding_idx=self.padding_idx)
            else:
                exact = F.embedding(input, w, padding_idx=self.padding_idx)
            pooled = exact + (pooled - exact).detach()
        return pooled

    @torch.no_grad()
    def pooled(self, input: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """The simulated pooling of ``input`` (float32, no gradient), shaped as the output;
        indices and offsets checked (a DataError names what is wrong)."""
        return self._pooled(input, offsets)

    def _pooled(self, input: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
        """:meth:`pooled`, run where gradients are off."""
        if offsets is not None:  # a 1-D input: one kernel call (a lazy table's once its rows are at hand)
            flat = self._pool_flat(input, offsets)
            if flat is not None:
                return flat
        idx, bags, n_bags = self._flatten(input, offsets)  # indices checked against the table
        if self.padding_idx is not None:
            keep = idx != self.padding_idx
            idx, bags = idx[keep], bags[keep]
        pooled = self._pool(idx, bags, n_bags)  # float32, the state's dtype
        if self.mode == "mean":
            pooled = pooled / torch.bincount(bags, minlength=n_bags).clamp_min(1).to(pooled.dtype).unsqueeze(1)
        return pooled.reshape(*self._out_shape, self.embedding_dim)

    def _pool_flat(self, input: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor | None:
        """:meth:`pooled` of a summed bag table without padding or hot rows, read by
        :func:`cimflow.sim.fused_table.pool_flat`; None where that does not apply."""
        if (not self.is_bag or self.mode != "sum" or self.padding_idx is not None or self._calibrating
                or (self.hot_rows is not None and self.hot_rows.numel() > 0) or self.spec.kind == "digital"
                or not fused_table.applies(self.w_scale.device, False, self.spec.analog_adc().bits)):
            return None
        done = fused_table.pool_flat(self, input, offsets, self._single_reads(), NOISE_TAIL)
        if done is None:
            return None
        out, reads = done
        if self.collect_stats:
            self.stats["bags"] += out.shape[0]
            self.stats["lookups"] += int(input.numel() if not self.include_last_offset else offsets[-1])
            self.stats["reads"] += reads
        return out

    def output_shape(self, input: torch.Tensor, offsets: torch.Tensor | None) -> tuple[int, ...]:
        """The output's shape, from the input's and the offsets' shapes alone."""
        if not self.is_bag:
            lead: tuple[int, ...] = tuple(input.shape)
        elif input.dim() == 2 or offsets is None:
            lead = tuple(input.shape[:1])
        else:
            lead = (offsets.shape[0] - int(self.include_last_offset),)
        return (*lead, self.embedding_dim)

    def _pool(self, idx: torch.Tensor, bags: torch.Tensor, n_bags: int) -> torch.Tensor:
        out = torch.zeros(n_bags, self.embedding_dim, device=self.w_scale.device)
        out_is_zero = True  # nothing added yet (the lone reads' sums may then replace it)
        if self.collect_stats:
            self.stats["bags"] += n_bags
            self.stats["lookups"] += int(idx.numel())
        if idx.numel() == 0:
            return out
        if self.hot_rows is not None and self.hot_rows.numel():
            pos = torch.searchsorted(self.hot_rows, idx).clamp_max(self.hot_rows.numel() - 1)
            hot = self.hot_rows[pos] == idx
            if bool(hot.any()):
                out.index_add_(0, bags[hot], self.table.rows(idx[hot]).to(out.dtype))
                out_is_zero = False
                if self.collect_stats:
                    self.stats["hot_lookups"] += int(hot.sum())
                idx, bags = idx[~hot], bags[~hot]
            if idx.numel() == 0:
                return out
        if self.spec.kind == "digital":
            w, _ = self._rows_effective(idx)
            return out.index_add_(0, bags, w[:, 0] * self.w_scale)  # the hot tier's rows are already in table units
        singles = None if self._calibrating else self._single_reads()
        if fused_table.applies(out.device, self._calibrating, self.spec.analog_adc().bits):  # one compiled pass
            reads = fused_table.pool(self, idx, bags, out, singles, NOISE_TAIL)
            if self.collect_stats:
                self.stats["reads"] += reads
            return out
        if singles is not None:  # lookups read alone: from the outcome table (sim/pooling.py)
            gate = singles.ensure(idx, self._effective_rows)
            per_bag = self.__dict__.get("_per_bag") if idx.numel() == self.__dict__.get("_n_flat") else None
            lone_sums, shared = pooling.pool_lone(singles, idx, bags, n_bags, per_bag, self._one_per_bag, self.spec.rows,
                                                  -(-self.num_embeddings // self.spec.rows), self.group_rows, gate,
                                                  self._read_generator(out.device))
            out = lone_sums if out_is_zero else out.add_(lone_sums)
            if self.collect_stats:
                self.stats["reads"] += idx.numel() - (0 if shared is None else shared.numel())
            if shared is None:
                return out
            idx, bags = idx[shared], bags[shared]
        idx_s, read_starts, read_bags = pooling.group_reads(idx, bags, self.spec.rows, self.num_embeddings // self.spec.rows + 1,
                                                            self.group_rows)
        if self.collect_stats:
            self.stats["reads"] += int(read_starts.numel())
        s_count, dim = self._significance.numel(), self.embedding_dim
        gain = None
        if self.output_gain is not None:  # drift compensation, ahead of the ADC (see set_compensation)
            gain = self.output_gain.to(out.device).reshape(-1).repeat(s_count) if self.output_gain.dim() else self.output_gain
        weights = (self._significance.to(out).view(-1, 1) * self.w_scale).view(1, s_count, dim)  # significance x column scale
        n_reads = read_starts.numel()
        # blocks of reads small enough that a block's partial sums, noise and codes stay in a
        # CPU core's cache through every pass (one block on a GPU)
        block = n_reads if out.device.type != "cpu" else READ_BLOCK
        cuts = [0] + (read_starts[block::block].tolist() if n_reads > block else []) + [idx_s.numel()]
        # codes summed per bag (reads come in bag order), slices combined once at the end
        bag_ids, read_slot = torch.unique_consecutive(read_bags, return_inverse=True)
        codes_per_bag = torch.zeros(bag_ids.numel(), s_count * dim, device=out.device)
        unit = 1.0
        for k, r0 in enumerate(range(0, n_reads, block)):
            r1 = min(r0 + block, n_reads)
            lookups, starts = idx_s[cuts[k] : cuts[k + 1]], read_starts[r0:r1] - cuts[k]
            if self.pool_cache is not None:
                sums = pooling.segment_sums(self.pool_cache, starts, lookups)
            elif singles is not None:  # lazy: rows once hashed are kept beside the outcome table
                values, where = singles.stored_rows(lookups, self._effective_rows)
                sums = pooling.segment_sums(values, starts, where)
            else:
                w, var = self._rows_effective(lookups)  # (n, S, dim)
                sums = pooling.segment_sums(w if var is None else torch.cat([w, var], dim=1), starts)
            psum, var = sums[:, : s_count * dim], (sums[:, s_count * dim :] if sums.shape[1] > s_count * dim else None)
            # (reads, S*dim); codes x unit = cell units; one-row reads rarely sit near a boundary
            codes, unit = self._convert(psum, var, gain, near_only=cuts[k + 1] - cuts[k] < 1.5 * (r1 - r0))
            codes_per_bag.index_add_(0, read_slot[r0:r1], codes)
        # each bag's codes, slices combined by significance, in table units
        return out.index_add_(0, bag_ids, (codes_per_bag.view(-1, s_count, dim) * weights).sum(1), alpha=unit)

    def _single_reads(self) -> pooling.SingleReads | None:
        """Outcome table of the single-row reads at the instance's current state (built when
        first needed, rebuilt when the programmed state, time, compensation, ADC range or device
        change); None for tables over :data:`cimflow.sim.pooling.SINGLE_READ_ENTRIES` entries."""
        if self.num_embeddings * self.embedding_dim > pooling.SINGLE_READ_ENTRIES or self.num_embeddings > pooling.SINGLE_READ_ROWS:
            return None
        if self.spec.analog_adc().bits <= 1:  # a 1-bit ADC keeps the sign of the noisy sum: the exact path
            return None
        held = self._buffers  # (the buffers themselves: no Module.__getattr__ per read)
        state = (held["pool_cache"], held["output_gain"], held["w_scale"], self.seed, self.t_seconds, self.adc_range,
                 self._programmed_version, self.verify_iterations, self.verify_tolerance)
        table = pooling.held_table(self, state)
        if table is not None:
            return table
        s_count, device = self._significance.numel(), self.w_scale.device
        gain = self.output_gain
        if gain is not None:
            gain = gain.to(device).reshape(-1).repeat(s_count) if gain.dim() else gain.to(device)
        # uncached tables hash a row's outcomes when it is first read (lazy), cached ones build them all at once
        table = pooling.SingleReads(self._effective_rows, self.num_embeddings, self._significance.to(device), self.w_scale, gain,
                                    self.spec.analog_adc().bits, self.adc_range, NOISE_TAIL, device, lazy=self.pool_cache is None)
        pooling.hold_table(self, state, table)
        return table

    def _effective_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(n, S * dim) effective weights and read-noise variances of ``rows``."""
        w, var = self._rows_effective(rows)
        return w.reshape(rows.numel(), -1), None if var is None else var.reshape(rows.numel(), -1)

    def _convert(self, psum: torch.Tensor, var: torch.Tensor | None, gain: torch.Tensor | None,
                 near_only: bool = False) -> tuple[torch.Tensor, float]:
        """ADC codes of the reads' partial sums ``psum`` (cell units, times the compensation
        ``gain``) with read noise of variance ``var`` (cell units squared), and the code's
        value in cell units (:func:`cimflow.sim.pooling.adc_codes`, noise clamped at
        :data:`NOISE_TAIL`). When calibrating, the noisy sums themselves are recorded."""
        bits, full = self.spec.analog_adc().bits, self.adc_range
        self._read_generator(psum.device)  # self._read_gen, seeded, on psum's device
        if var is None or bits <= 1 or self._calibrating:
            if gain is not None:
                psum = psum * gain
            if var is not None:
                sigma = var.clamp_min(0.0).sqrt() if gain is None else var.clamp_min(0.0).sqrt() * gain.abs()
                z = torch.randn(psum.shape, generator=self._read_gen, device=psum.device, dtype=psum.dtype)
                psum = psum + z.clamp_(-NOISE_TAIL, NOISE_TAIL) * sigma
            if self._calibrating:
                self._calib_psums.append(psum.detach().abs().reshape(-1))
            return adc_quantize(psum, bits, full), 1.0
        return pooling.adc_codes(psum, var, gain, bits, full, NOISE_TAIL, self._read_gen, near_only)

    @property
    def adc_range(self) -> float:
        """ADC full scale in cell units: ``full_scale x group_rows`` (fixed), the largest
        sum ``group_rows`` rows can give (per_array_max), the expected read's mean + sigmas
        standard deviations (expected, :meth:`_expected_adc_range`), or the calibrated one
        (percentile: per_array_max until calibrated)."""
        adc = self.spec.analog_adc()
        rows = self.group_rows if self.is_bag else 1  # a plain Embedding reads one row at a time
        if adc.range == "fixed":
            return adc.full_scale * rows
        if adc.range in ("percentile", "expected") and self.adc_range_calibrated is not None:
            return float(self.adc_range_calibrated)
        if adc.range == "expected" and self._adc_range_expected is not None:
            return self._adc_range_expected
        return float(rows)

    def extra_repr(self) -> str:
        hot = 0 if self.hot_rows is None else self.hot_rows.numel()
        return f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}, array={self.array_kind!r}, hot_rows={hot}"


# ---------------------------------------------------------------------- under torch.compile
def _pool_kernel(key: int, input: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
    """:meth:`CIMEmbeddingBag.pooled` as one op: torch.compile keeps it whole (the reads'
    grouping depends on the indices' values), so a model with tables traces without graph
    breaks; run eagerly inside the compiled graph (bad indices still raise a DataError)."""
    return live_instance(key, CIMEmbeddingBag).pooled(input, offsets)


def _pool_shape(key: int, input: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
    return input.new_empty(live_instance(key, CIMEmbeddingBag).output_shape(input, offsets), dtype=torch.float32)


_pool_op = instance_op("embedding_pool", "(int key, Tensor input, Tensor? offsets) -> Tensor", "CompositeExplicitAutograd",
                       _pool_kernel, _pool_shape)
