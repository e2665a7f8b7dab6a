"""The crossbar engine: one weight matrix programmed onto arrays and read.

A :class:`CrossbarEngine` turns a weight matrix (in_features x out_features, rows of the
crossbar first) into a chip instance's programmed conductances, and computes
``y = x @ W`` the way the arrays do: per-vector input scaling, DAC or bit-serial input
planes, an analog partial sum per read group and weight slice, read noise sampled on the
column sums (equal in distribution to per-cell read noise, see :meth:`_read_noise`),
the ADC, and the digital shift-add. Digital-CIM arrays compute the exact integer matmul.

Fast by statistical equivalence (docs/architecture.md): conductances are programmed once and the
effective normalized weights cached; all tiles, slices and input planes are one batched
matmul; nothing loops over tiles in Python.

Also here, because they act on one programmed instance:

- **program-and-verify** (:meth:`CrossbarEngine.program` with ``verify_iterations``): cells
  whose programmed conductance misses the target by more than a tolerance are programmed
  again, up to N times; every programming operation is one write pulse, counted in
  :attr:`CrossbarEngine.write_pulses` for the cost model;
- **drift compensation** (:meth:`CrossbarEngine.set_compensation`): a reference read with
  every row driven at full input measures each column's conductance sum at programming
  time and again at ``t``; the ratio rescales the digitized outputs (one factor per layer,
  ``global``, or one per output column, ``per_column``);
- an optional **learned input range** (:meth:`CrossbarEngine.enable_learned_input_range`),
  a parameter trained with the layer (LSQ-style gradient through the DAC).
"""

from __future__ import annotations

import math

import torch

from cimflow.chip.spec import ArraySpec
from cimflow.errors import SimulationError
from cimflow.mapping import TileGrid, encode_weights, tile_grid, weight_scales
from cimflow.physics import (
    adc_quantize,
    dac_quantize,
    ir_drop_attenuate,
    ir_drop_path_cells,
    quantize_symmetric,
)
from cimflow.physics.hashing import counter_normal, stream_key
from cimflow.sim import fastmm, fused_read
from cimflow.sim.array_state import (
    COMPENSATION_MODES,
    EPS,
    ArrayInstance,
    InstanceSource,
    check_compensation_mode,
    drifted,
    effective_weights,
    expected_full_scale,
    moment_full_scale,
    percentile_values,
    program_matrix,
    reference_sums,
    stuck_codes,
)
from cimflow.sim.readout import AdcStraightThrough, ReadStats, StraightThroughWeight, input_planes
from cimflow.sim.single_read import compiled_read_applies, read_op, single_read

_EPS = EPS


#: Read-noise modes of :meth:`CrossbarEngine.set_read_noise_mode` (the first is the default).
READ_NOISE_MODES = ("fast", "exact", "column_mean")


class CrossbarEngine(ArrayInstance):
    """State and arithmetic of one weight matrix on one array kind.

    The instance's lifecycle (seed, time, program-and-verify settings, write pulses, drift
    compensation, calibration) is :class:`cimflow.sim.array_state.ArrayInstance`'s.
    Buffers are non-persistent: they follow ``.to(device)`` but stay out of the
    ``state_dict`` (which holds only the owning layer's ordinary parameters). The one
    exception is opt-in: :meth:`enable_learned_input_range` adds the parameter
    ``input_range_log`` (state-dict key ``<layer>.engine.input_range_log``).
    """

    # buffers registered as None in __init__, set once programmed (None for what does not apply)
    read_var: torch.Tensor | None
    _read_var_bf16: torch.Tensor | None  # read_var[0] in bfloat16 (fast mode, fastmm), a cache
    _gather_index: torch.Tensor | None  # row layout of non-contiguous read groups
    read_counter: torch.Tensor  # int32 draw counter of the compiled read-noise stream

    def __init__(self, spec: ArraySpec, in_features: int, out_features: int, name: str = "") -> None:
        super().__init__()
        self._init_instance(spec, name, f"layer {name!r}")
        self.name = name
        self.grid: TileGrid = tile_grid(in_features, out_features, spec)
        self.read_noise_mode = "fast"
        self.collect_stats = False
        self.stats = ReadStats()
        self._calib_inputs: list[torch.Tensor] = []
        self._weight_version: int | None = None  # the weight tensor's _version when programmed
        self._read_key = 0  # stream key of the counter-based read noise drawn under torch.compile
        self.input_range: float | None = None  # calibrated input range (input_encoding.range == "calibrated")
        self.input_range_log: torch.nn.Parameter | None = None  # learned input range (opt-in), log of the range
        for name_ in ("w_eff", "w_ref", "g_pos", "g_neg", "nu_pos", "nu_neg", "path_pos", "path_neg", "read_var", "adc_range",
                      "_read_var_bf16", "_gather_index"):
            self.register_buffer(name_, None, persistent=False)
        self.register_buffer("read_counter", torch.zeros((), dtype=torch.int32), persistent=False)
        sizes = self.grid.group_sizes()
        if not self.grid.contiguous:
            idx, start = [], 0
            for size in sizes:
                idx += list(range(start, start + size)) + [in_features] * (self.grid.group_rows - size)
                start += size
            self._gather_index = torch.tensor(idx, dtype=torch.long)

    # ------------------------------------------------------------------ programming
    @property
    def programmed(self) -> bool:
        return self.w_eff is not None

    def _is_programmed(self) -> bool:
        return self.programmed

    def _grouped(self, m: torch.Tensor) -> torch.Tensor:
        """Lay an (in, ...) tensor out as (read_groups, group_rows, ...), zero-padded."""
        g, gr = self.grid.read_groups, self.grid.group_rows
        if self._gather_index is None:
            pad = g * gr - m.shape[0]
            if pad:
                m = torch.cat([m, m.new_zeros((pad,) + tuple(m.shape[1:]))])
            return m.reshape((g, gr) + tuple(m.shape[1:]))
        m = torch.cat([m, m.new_zeros((1,) + tuple(m.shape[1:]))])
        return m[self._gather_index].reshape((g, gr) + tuple(m.shape[1:]))

    def _col_tile_expand(self, per_tile: torch.Tensor) -> torch.Tensor:
        """Expand a (..., col_tiles) tensor to (..., out) (each column takes its array's value)."""
        wc = self.grid.weight_columns
        return per_tile.repeat_interleave(wc, dim=-1)[..., : self.grid.out_features]

    def _col_tile_max(self, per_col: torch.Tensor) -> torch.Tensor:
        """Max over the columns of each array: (..., out) -> (..., out), constant per array."""
        out, wc = self.grid.out_features, self.grid.weight_columns
        pad = self.grid.col_tiles * wc - out
        if pad:
            per_col = torch.cat([per_col, per_col.new_zeros(per_col.shape[:-1] + (pad,))], dim=-1)
        tiles = per_col.reshape(per_col.shape[:-1] + (self.grid.col_tiles, wc)).amax(dim=-1)
        return self._col_tile_expand(tiles)

    def program(self, weight_in_out: torch.Tensor, seed: int, draws: InstanceSource | None = None,
                t_seconds: float | None = None) -> None:
        """Program a chip instance: sample programming noise, stuck cells and drift exponents
        once (seeded by (seed, layer name, purpose)) and cache the effective weights.

        With program-and-verify on (:meth:`set_program_verify`) badly programmed cells are
        programmed again. :attr:`write_pulses` counts every programming operation: one pulse
        per cell, plus one per re-programmed cell and verify iteration.

        ``draws``: take every cell's draws from this source instead of the instance's seeded
        generators (:class:`cimflow.sim.array_state.InstanceSource`; differential or
        bit-sliced encoding, no array-yield defects). ``t_seconds``: the time after
        programming to leave the instance at (default ``t0``); the same as ``set_time``
        afterwards, with the cached weights computed once."""
        w = weight_in_out.detach()
        self._start_programming(seed)
        self._read_key = stream_key(int(seed), self.name, "read", "counter")
        self.read_counter.zero_()
        dev = self.spec.device
        self.w_scale = weight_scales(w, self.spec.weight_scaling)
        w_norm = w / self.w_scale
        if self.is_digital:
            bits = self.spec.weight_bits or 8
            self.w_eff = quantize_symmetric(w_norm, bits, 1.0).unsqueeze(0)
            self.write_pulses = w.numel() * bits  # one write per bit cell
            self.output_gain = None
            return
        targets = encode_weights(w_norm, self.spec, self.grid.col_tiles)
        (self.g_pos, self.g_neg, self.nu_pos, self.nu_neg), pulses = program_matrix(
            targets, dev, self.seed or 0, self.name, (self.spec.rows, self.grid.weight_columns), self._col_tile_expand, draws,
            self.verify_iterations, self.verify_tolerance, self._what)
        self.significance = torch.tensor(targets.significance, dtype=w.dtype, device=w.device)
        self.denominator = targets.denominator
        self.write_pulses = pulses
        if self.spec.wire_resistance > 0:
            self.path_pos, self.path_neg = self._ir_paths(w.device)
        self._settle(t_seconds)
        self._update_gain()

    def _settle(self, t_seconds: float | None) -> None:
        """After programming: the ADC ranges from the instance at t0, the cached weights at
        ``t_seconds`` (default t0), with one full refresh (at another time the ranges come from
        the effective weights at t0 alone: no drift, no read-noise variances)."""
        t0 = self.spec.device.drift.t0_s
        if t_seconds is None or float(t_seconds) == t0:
            self._refresh(set_adc_range=True)
            return
        adc = self.spec.adc
        if adc is not None:
            w0 = None
            if adc.range != "fixed":
                g_pos, g_neg = self._conductances_now(t0)
                w0 = self._grouped(((g_pos - g_neg) / self.denominator).permute(1, 0, 2)).permute(2, 0, 1, 3)
            self.adc_range = self._initial_adc_range(w0)
        self.t_seconds = float(t_seconds)
        self._refresh()

    def stuck_masks(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Which cells of this instance are stuck, (positive, negative) boolean tensors shaped
        like ``g_pos`` / ``g_neg`` (re-drawn from the instance seed, nothing is stored); None
        for digital arrays or before programming. Offset-encoded arrays report their shared
        reference cells expanded per column."""
        if self.is_digital or self.g_pos is None:
            return None
        dev = self.spec.device
        seed, device = self.seed or 0, self.g_pos.device

        def side_mask(side: str, shape: tuple[int, ...]) -> torch.Tensor:
            lines = None if side == "ref" else (self.spec.rows, self.grid.weight_columns)  # array yield (dead lines)
            return stuck_codes(tuple(shape), dev, seed, self.name, side, lines, device) != 0

        if self.spec.weight_encoding.scheme == "offset":
            ref_shape = (self.g_neg.shape[0], self.g_neg.shape[1], self.grid.col_tiles)
            return side_mask("pos", self.g_pos.shape), self._col_tile_expand(side_mask("ref", ref_shape))
        return side_mask("pos", self.g_pos.shape), side_mask("neg", self.g_neg.shape)

    def _ir_paths(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Wire segments in series with each weight's two cells, shape (in, out)."""
        rows, cols = self.spec.rows, self.spec.cols
        r = torch.arange(self.grid.in_features, device=device) % rows
        c = torch.arange(self.grid.out_features, device=device) % self.grid.weight_columns
        scheme = self.spec.weight_encoding.scheme
        if scheme == "offset":
            pos_col, neg_col = c, torch.full_like(c, cols - 1)
        else:
            pos_col, neg_col = 2 * c, 2 * c + 1
        # only the cells in use: a whole 65536 x 65536 array would take 16 GiB
        return (
            ir_drop_path_cells(rows, cols, device=device, row_index=r, col_index=pos_col.clamp_max(cols - 1)),
            ir_drop_path_cells(rows, cols, device=device, row_index=r, col_index=neg_col.clamp_max(cols - 1)),
        )

    def _conductances_now(self, t_seconds: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Conductances at ``t_seconds`` (default: now), drift and IR drop applied."""
        t, dev = self.t_seconds if t_seconds is None else t_seconds, self.spec.device
        g_pos, g_neg = drifted(self.g_pos, self.nu_pos, t, dev), drifted(self.g_neg, self.nu_neg, t, dev)
        if self.path_pos is not None:
            r = self.spec.wire_resistance
            g_pos, g_neg = ir_drop_attenuate(g_pos, self.path_pos, r), ir_drop_attenuate(g_neg, self.path_neg, r)
        return g_pos, g_neg

    def _refresh(self, set_adc_range: bool = False) -> None:
        """Recompute the cached effective weights (and read-noise variances) at ``t_seconds``."""
        g_pos, g_neg = self._conductances_now()
        self._read_var_bf16 = None  # re-made from the new variances on the next fast read
        w_eff, var = effective_weights(g_pos, g_neg, self.denominator, self.spec.device.read_noise)  # (S, in, out), normalized
        self.w_eff = self._grouped(w_eff.permute(1, 0, 2)).permute(2, 0, 1, 3).contiguous()  # (S, G, gr, out)
        if var is not None:
            var = self._grouped(var.permute(1, 0, 2)).permute(2, 0, 1, 3)  # (S, G, gr, out)
            if self.read_noise_mode != "column_mean":
                self.read_var = var.contiguous()
            else:  # mean over the rows each group really holds (padding carries no cell)
                sizes = torch.tensor(self.grid.group_sizes(), dtype=var.dtype, device=var.device).view(1, -1, 1, 1)
                self.read_var = (var.sum(dim=2, keepdim=True) / sizes).contiguous()
        else:
            self.read_var = None
        if set_adc_range:
            self.adc_range = self._initial_adc_range()

    def _initial_adc_range(self, w_eff: torch.Tensor | None = None) -> torch.Tensor:
        """ADC full scale per (slice, read group, column), constant within an array, from the
        effective weights at t0 (``w_eff``, (S, G, gr, out); default: the cached ones;
        unused by a ``fixed`` range, which takes the layout from the programmed cells)."""
        adc = self.spec.adc
        assert adc is not None
        if adc.range == "fixed":
            like = self.g_pos if self.g_pos is not None else self.w_eff
            return torch.full((like.shape[0], self.grid.read_groups, 1, self.grid.out_features),
                              adc.full_scale * self.grid.group_rows, dtype=like.dtype, device=like.device)
        w_eff = self.w_eff if w_eff is None else w_eff
        if adc.range == "expected":  # (S, G, out): mean + k sigma of each column sum
            col = expected_full_scale(w_eff, 2, adc.sigmas, self.spec.input_encoding)
        else:
            col = w_eff.abs().sum(dim=2)  # (S, G, out): the largest |psum| any |x| <= 1 can give
        rng = self._col_tile_max(col).unsqueeze(2)
        if adc.range in ("percentile", "expected") and self.adc_range_calibrated is not None:
            rng = self.adc_range_calibrated
        return rng.clamp_min(_EPS)

    def _after_time_change(self) -> None:
        if not self.is_digital:
            self._refresh()
            self._update_gain()

    # ------------------------------------------------------------------ drift compensation
    @torch.no_grad()
    def reference_read(self, t_seconds: float | None = None) -> torch.Tensor | None:
        """The reference read: every row driven at full input, each physical column's current
        measured (the G+ and G- columns of a pair, or a weight column and its reference column,
        each on its own), in units of ``denominator``; slices are combined with their
        significance. Uses the instance's conductances at ``t_seconds`` (default: now;
        programming noise, stuck cells, drift and IR drop included); the read is averaged over
        many repetitions, so read noise is left out. Shape (out,); None for digital arrays."""
        if self.is_digital or self.g_pos is None:
            return None
        return reference_sums(*self._conductances_now(t_seconds), self.significance, self.denominator)

    def _reference_reads(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.reference_read_t0 is None:  # the read right after programming (taken when first needed)
            self.reference_read_t0 = self.reference_read(self.spec.device.drift.t0_s)
        now, ref = self.reference_read(), self.reference_read_t0
        return None if now is None or ref is None else (ref, now)

    # ------------------------------------------------------------------ learned input range
    def enable_learned_input_range(self, initial_range: float) -> torch.nn.Parameter:
        """Give this layer a learned input (DAC) range, a parameter holding ``log(range)``.

        From then on the layer scales its inputs by this one range, whatever
        ``input_encoding.range`` says (a fixed range per layer, as ``calibrated``), and the
        gradient reaches it through the DAC (inputs beyond the range clip: LSQ-style). The
        parameter is part of the layer's ``state_dict`` (``engine.input_range_log``)."""
        if not (initial_range > 0 and math.isfinite(initial_range)):
            raise SimulationError(f"layer {self.name!r}: the initial input range must be a positive number, got {initial_range!r}")
        device = self.w_eff.device if self.w_eff is not None else None
        if self.input_range_log is None:
            self.input_range_log = torch.nn.Parameter(torch.tensor(math.log(initial_range), device=device))
        else:
            with torch.no_grad():
                self.input_range_log.fill_(math.log(initial_range))
        return self.input_range_log

    @property
    def learned_input_range(self) -> float | None:
        """The learned input range (None when not enabled)."""
        return None if self.input_range_log is None else float(self.input_range_log.detach().exp())

    def set_read_noise_mode(self, mode: str) -> None:
        """How a read's noise variance is computed (every mode samples it on the column sums):
        ``fast`` (default) the exact per-cell formula, on the CPU's bfloat16 matrix units where
        it has them (:mod:`cimflow.sim.fastmm`; each variance within ~0.4 %), else as ``exact``;
        ``exact`` the formula as a float32 matmul; ``column_mean`` each column's mean cell
        variance (an approximation unless a column's cells share one conductance)."""
        if mode not in READ_NOISE_MODES:
            raise SimulationError(f"read_noise_mode must be one of {', '.join(map(repr, READ_NOISE_MODES))}, got {mode!r}")
        self.read_noise_mode = mode
        if self.programmed and not self.is_digital:
            self._refresh()

    # ------------------------------------------------------------------ reading
    def _input_scale(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.spec.input_encoding
        if self.input_range_log is not None:
            return self.input_range_log.exp().to(x.dtype)
        if enc.range == "calibrated" and self.input_range is not None:
            return torch.as_tensor(self.input_range, dtype=x.dtype, device=x.device)
        x = x.detach()
        if x.shape[-1] <= 64:  # short rows: one |x| pass and one reduction beat two short-row reductions
            return x.abs().amax(dim=-1, keepdim=True).clamp_min_(_EPS)
        # max |x| per vector from max and min: no |x| copy
        return torch.maximum(x.amax(dim=-1, keepdim=True), x.amin(dim=-1, keepdim=True).neg_()).clamp_min_(_EPS)

    def forward(self, x: torch.Tensor, weight_in_out: torch.Tensor | None = None) -> torch.Tensor:
        """``y = x @ W`` on the arrays. ``x``: (N, in). ``weight_in_out``: the live weight, used
        for straight-through gradients when autograd needs them."""
        if not self.programmed:
            raise SimulationError(f"layer {self.name!r} is not programmed: call cimflow.program(model, seed=...) first")
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or (weight_in_out is not None and weight_in_out.requires_grad)
            or (self.input_range_log is not None and self.input_range_log.requires_grad))
        if not needs_grad and not self._calibrating and self._input_planes_count() == 1 and (
            self.is_digital or self.w_eff.shape[:2] == (1, 1)
            or (self.w_eff.shape[0] == 1 and self._gather_index is None and (self.output_gain is None or self.output_gain.dim() <= 1))
        ):
            return self._forward_single_read(x)
        scale_x = self._input_scale(x)
        enc = self.spec.input_encoding
        x_q = dac_quantize(x / scale_x, enc.bits, 1.0)
        w_eff = self.w_eff
        if needs_grad and weight_in_out is not None and weight_in_out.requires_grad:
            # straight-through: the programmed weights forward, the live weights' gradient back
            w_eff = StraightThroughWeight.apply(weight_in_out, w_eff, self)
        if self.collect_stats:
            self._record_stats(x_q)
        if self.is_digital:
            y = x_q @ w_eff[0]
        else:
            y = self._analog(x_q, w_eff)
        return y * scale_x * self.w_scale

    def _input_planes_count(self) -> int:
        return 1 if self.is_digital else self.spec.input_encoding.pulses

    def _forward_single_read(self, x: torch.Tensor) -> torch.Tensor:  # single_read runs without autograd
        """Inference fast path for one slice and one pulse (any number of contiguous read
        groups, as one batched matmul): :func:`cimflow.sim.single_read.single_read`, the same
        arithmetic as the general path, kept in integer DAC codes and fused in place."""
        if torch.compiler.is_compiling() and compiled_read_applies(x):  # the fused read whole, as one op
            return read_op(id(self), x)
        return single_read(self, x)[0]

    def _read_variance(self, xi: torch.Tensor) -> torch.Tensor:
        """Read-noise variance (G, N, out) of each group's column sums for DAC codes ``xi``
        (N, in), over each group's true rows: bfloat16 cell variances in ``fast`` mode on a
        CPU with matrix units (:mod:`cimflow.sim.fastmm`), float32 otherwise."""
        assert self.read_var is not None  # called only when reads are noisy
        rows = self.grid.in_features
        if self.read_noise_mode == "column_mean":  # (1, G, 1, out): mean cell variance per group
            ones = xi.new_ones(self.read_var.shape[1], self.w_eff.shape[2], 1)
            return fastmm.grouped_products(xi.square(), ones, rows) * self.read_var[0]
        cell = self.read_var[0]
        if (self.read_noise_mode == "fast" and xi.device.type == "cpu" and self.spec.input_encoding.bits <= 9
                and not torch.compiler.is_compiling()  # the compiler fuses the float32 form
                and xi.shape[0] * cell.shape[-2] * cell.shape[0] * cell.shape[-1] >= fastmm.BF16_MIN_MACS
                and fastmm.matrix_units_available()):  # codes |c| <= 255 are exact in bfloat16
            if self._read_var_bf16 is None or self._read_var_bf16.device != cell.device or self._read_var_bf16.dtype != torch.bfloat16:
                self._read_var_bf16 = cell.to(torch.bfloat16)
            cell = self._read_var_bf16
        return fastmm.variance_products(xi, cell, rows)

    def has_fixed_input_range(self) -> bool:
        """True when inputs are scaled by one range per layer (calibrated or learned), not per vector."""
        return self.input_range_log is not None or (self.spec.input_encoding.range == "calibrated" and self.input_range is not None)

    def can_read_columns(self) -> bool:
        """Whether :meth:`read_columns` applies: programmed, one slice, one pulse, one read group,
        no calibration or statistics collection under way."""
        return (self.programmed and not self._calibrating and not self.collect_stats and self._input_planes_count() == 1
                and (self.is_digital or self.w_eff.shape[:2] == (1, 1))
                and (self.output_gain is None or self.output_gain.dim() <= 1))

    @torch.no_grad()
    def read_columns(self, cols: torch.Tensor, scale: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        """Inference on im2col columns without transposing them: ``cols`` (N, in, L) -> (N, out, L).
        ``cols`` may also be the patches as a strided view (N, C, kh, kw, Ho, Wo)
        (:func:`cimflow.sim.layers.patch_view`): quantizing it writes the columns once.

        ``scale`` (N, 1, L) is each patch's absolute maximum (the per-vector input range; a
        convolution gets it from a max-pool over the input, far cheaper than from the columns),
        or None for a fixed per-layer range. The arithmetic is :meth:`_forward_single_read`'s,
        laid out channel-first so the result is already a feature map, written into ``out``
        when given (the rows of a larger batch's output: a convolution reads in batch chunks).
        """
        per_patch = scale is not None  # each patch's own maximum: its codes are within range
        n = cols.shape[0]
        length = cols.shape[-1] if cols.dim() == 3 else cols.shape[-2] * cols.shape[-1]
        if scale is None:
            scale = self._input_scale(cols).reshape(1, 1, 1)
        per_element = scale.view(n, 1, 1, 1, cols.shape[-2], cols.shape[-1]) if per_patch and cols.dim() == 6 else scale
        enc = self.spec.input_encoding
        steps_in = float((1 << (enc.bits - 1)) - 1) if enc.bits > 1 else 1.0
        if torch.compiler.is_compiling():  # functional form: an ``out=`` tensor would take ``cols``' strides there
            xi = cols * (steps_in / per_element) if enc.bits > 1 else torch.sign(cols)
        else:
            xi = torch.empty(cols.shape, dtype=cols.dtype, device=cols.device)  # the columns, written once
            torch.mul(cols, per_element.reciprocal().mul_(steps_in), out=xi) if enc.bits > 1 else torch.sign(cols, out=xi)
        if enc.bits > 1:
            (xi if per_patch else xi.clamp_(-steps_in, steps_in)).round_()  # |cols| <= scale: no clamp needed
        xi = xi.reshape(n, -1, length)  # a view, but for the compiled form's copy
        w = self.w_eff[0] if self.is_digital else self.w_eff[0, 0]
        if xi.shape[1] != w.shape[0]:
            xi = torch.nn.functional.pad(xi, (0, 0, 0, w.shape[0] - xi.shape[1]))
        acc = torch.matmul(w.t(), xi)  # (N, out, L), DAC-code units
        per_out = (self.w_scale / steps_in).view(1, -1, 1)
        if not self.is_digital:
            if self.read_var is not None:
                sq = xi.square_()  # the codes are not needed after the signal matmul
                if self.read_var.shape[2] > 1:
                    var = torch.matmul(self.read_var[0, 0].t(), sq)
                else:
                    var = sq.sum(1, keepdim=True) * self.read_var[0, 0, 0].view(1, -1, 1)
                acc.addcmul_(self._read_normal(acc), var.sqrt_())
            if self.output_gain is not None:
                acc.mul_(self.output_gain.view(1, -1, 1) if self.output_gain.dim() == 1 else self.output_gain)
            bits = self.spec.analog_adc().bits
            rng = (self.adc_range[0, 0, 0] * steps_in).view(1, -1, 1)
            if bits > 1:
                steps_adc = float((1 << (bits - 1)) - 1)
                acc.mul_(steps_adc / rng).clamp_(-steps_adc, steps_adc).round_()
                per_out = per_out * rng / steps_adc
            else:
                acc = torch.sign(acc)
                per_out = per_out * rng
        acc.mul_(per_out)
        return acc.mul_(scale) if out is None else torch.mul(acc, scale, out=out)

    def _analog(self, x_q: torch.Tensor, w_eff: torch.Tensor) -> torch.Tensor:
        planes, plane_w = input_planes(x_q, self.spec.input_encoding)  # (P, N, in)
        n = x_q.shape[0]
        s_count, g, gr, out = w_eff.shape
        p_count = planes.shape[0]
        adc = self.spec.analog_adc()
        if p_count == 1 and s_count == 1 and g == 1:
            xg = planes[0]
            if xg.shape[-1] != gr:
                xg = torch.nn.functional.pad(xg, (0, gr - xg.shape[-1]))
            psum = (xg @ w_eff[0, 0]).view(1, 1, 1, n, out)
            xg = xg.view(1, 1, 1, n, gr)
        else:
            xg = self._grouped(planes.permute(2, 0, 1))  # (G, gr, P, N)
            xg = xg.permute(2, 0, 3, 1).unsqueeze(1)  # (P, 1, G, N, gr)
            psum = torch.matmul(xg, w_eff.unsqueeze(0))  # (P, S, G, N, out)
        if self._calibrating:
            a = psum.detach().permute(1, 2, 0, 3, 4)  # (S, G, P, N, out), signed
            self._calib_psums.append(a.reshape(a.shape[0], a.shape[1], -1, a.shape[-1]))
        if self.read_var is not None:
            psum = psum + self._read_noise(xg.detach(), psum.shape)
        if self.output_gain is not None:
            psum = psum * self.output_gain  # drift compensation, ahead of the ADC
        if psum.requires_grad:
            q = AdcStraightThrough.apply(psum, adc.bits, self.adc_range.unsqueeze(0))
        else:
            q = adc_quantize(psum, adc.bits, self.adc_range.unsqueeze(0))
        coef = self.significance.view(1, -1, 1, 1, 1)
        if p_count > 1:
            coef = coef * torch.tensor(plane_w, dtype=q.dtype, device=q.device).view(-1, 1, 1, 1, 1)
        if q.shape[0] * q.shape[1] * q.shape[2] == 1:
            return q[0, 0, 0] * coef.reshape(())
        return (q * coef).sum(dim=(0, 1, 2))

    def _read_noise_variance(self, xg: torch.Tensor) -> torch.Tensor:
        """Variance of each column sum's read noise for inputs ``xg`` (P, 1, G, N, gr)."""
        assert self.read_var is not None  # called only when reads are noisy
        sq = xg.square()
        if self.read_noise_mode != "column_mean":
            return torch.matmul(sq, self.read_var.unsqueeze(0))
        return sq.sum(dim=-1, keepdim=True) * self.read_var.unsqueeze(0)

    def _read_noise(self, xg: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Per-read noise on each column sum.

        Per-cell read noise ``G (1 + r N(0,1))`` makes a column sum Gaussian with variance
        ``sum_i x_i^2 r^2 (G+_i^2 + G-_i^2)`` given the inputs: sampling that on the sum is
        equal in distribution and costs one draw per column instead of one per cell.
        ``exact`` computes the variance with a second matmul; ``column_mean`` uses the
        column's mean cell variance times ``sum_i x_i^2`` (exact when a column's cells share
        one conductance, an approximation otherwise, and cheaper).
        """
        var = self._read_noise_variance(xg)
        return self._read_normal(var.new_empty(shape)).mul_(var.sqrt_())

    def _read_normal(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normals shaped like ``like``, the read noise's draw, from the counter-based
        stream (seed, layer, "read") at the draw number :attr:`read_counter`, advanced by every
        draw. Eager on a CPU in float32: the fused read's stream
        (:func:`cimflow.sim.fused_read.normals`, compiled: ~0.6 ns a value, ``torch.randn``
        ~3.5 ns on a Zen 4 core). Under ``torch.compile`` (a generator object cannot enter a
        graph): :func:`~cimflow.physics.hashing.counter_normal`, which the compiler fuses.
        Elsewhere (another device or dtype, no numba): the instance's seeded read generator.
        Equal in distribution, seeded just the same."""
        if torch.compiler.is_compiling():
            noise = counter_normal(self.read_counter, self._read_key, tuple(like.shape), like.dtype)
            self.read_counter.add_(1)
            return noise
        if like.device.type == "cpu" and like.dtype == torch.float32 and fused_read.available():
            noise = fused_read.normals(self._read_key, int(self.read_counter), tuple(like.shape))
            self.read_counter.add_(1)
            return noise
        return torch.randn(like.shape, generator=self._read_generator(like.device), device=like.device, dtype=like.dtype)

    def _record_stats(self, x_q: torch.Tensor) -> None:
        st = self.stats
        n = x_q.shape[0]
        st.vectors += n
        nz = int((x_q != 0).sum())
        st.nonzero_inputs += nz
        st.input_elements += x_q.numel()
        pulses = self.spec.input_encoding.pulses if not self.is_digital else max(self.spec.input_encoding.bits - 1, 1)
        st.pulses += n * pulses
        st.reads += n * pulses * self.grid.read_groups
        st.bit_density_sum += n * pulses * (nz / max(x_q.numel(), 1))

    # ------------------------------------------------------------------ calibration
    def begin_calibration(self) -> None:
        super().begin_calibration()
        self._calib_inputs = []

    def record_input(self, x: torch.Tensor) -> None:
        if self._calibrating:
            self._calib_inputs.append(x.detach().abs().amax(dim=-1))

    def _finish_calibration(self) -> None:
        """Calibrated input range and percentile ADC ranges from what was recorded."""
        if self.spec.input_encoding.range == "calibrated" and self._calib_inputs:
            self.input_range = float(torch.cat(self._calib_inputs).amax().clamp_min(_EPS))
        self._calib_inputs = []
        percentile = self._calibrating_percentile()
        if percentile is not None:
            # per (slice, group, column): percentile over vectors and pulses, then max per array
            q = percentile_values(torch.cat(self._calib_psums, dim=2).abs(), percentile, dim=2)  # (S, G, reads, out) -> (S, G, out)
            self.adc_range_calibrated = self._col_tile_max(q).unsqueeze(2).clamp_min(_EPS)
            self.adc_range = self.adc_range_calibrated
        sigmas = self._calibrating_sigmas()
        if sigmas is not None:  # mean + k sigma of the partial sums seen, per column, then max per array
            q = moment_full_scale(torch.cat(self._calib_psums, dim=2), dim=2, sigmas=sigmas)
            self.adc_range_calibrated = self._col_tile_max(q).unsqueeze(2).clamp_min(_EPS)
            self.adc_range = self.adc_range_calibrated

    def adc_error_bound(self) -> torch.Tensor:
        """Largest ADC error on an in-range partial sum (normalized units), per (S, G, 1, out)."""
        bits = self.spec.analog_adc().bits
        return self.adc_range / (2 * ((1 << (bits - 1)) - 1)) if bits > 1 else self.adc_range


def arrays_needed(spec: ArraySpec, in_features: int, out_features: int) -> int:
    """Arrays one (in x out) weight matrix occupies on ``spec``."""
    return tile_grid(in_features, out_features, spec).arrays


def input_pulses(spec: ArraySpec) -> int:
    return spec.input_encoding.pulses if spec.kind == "analog" else max(spec.input_encoding.bits - 1, 1)


__all__ = ["COMPENSATION_MODES", "READ_NOISE_MODES", "CrossbarEngine", "ReadStats", "arrays_needed", "check_compensation_mode",
           "input_pulses"]
