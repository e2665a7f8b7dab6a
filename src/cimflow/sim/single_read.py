"""The single read of a crossbar layer, for inference and for training.

:func:`single_read` is the fast read of one weight slice and one input pulse (any number of
read groups of consecutive rows, as one batched matmul): DAC codes, the partial sums, read
noise sampled on the column sums, drift compensation and the ADC, fused in place. Inference
(:meth:`cimflow.sim.engine.CrossbarEngine.forward` without autograd) calls it directly.

Training calls it through :class:`SingleReadStraightThrough`: the forward is the same noisy
read (no autograd graph through the noise, the ADC or the in-place arithmetic; the noise's
normals from the engine's pool where :func:`cimflow.sim.draw_pool.use_pooled_read_noise`
turned one on, as hardware-aware training does), and the
backward applies the straight-through estimator of the general path in closed form - the
gradient of ``y = sum_g ADC(x_q W_g + noise) * scale_x * w_scale`` with the DAC's and the
ADC's rounding passed straight through, zero where the ADC (or a fixed-range DAC) clips:

- ``grad_x = sum_g ((grad_y * gain * w_scale) [ADC_g inside]) @ W_g^T``, times the DAC's
  in-range mask (the per-vector input scale cancels);
- ``grad_weight = sum_g (x_q * scale_x)_g^T @ ((grad_y * gain) [ADC_g inside])``, laid out
  (in, out) - the programmed weights' gradient divided by the weight scale.

When no partial sum clipped (the usual case: the ADC's full scale is the largest column
sum) each is one matmul, as in the float layer's backward. ``tests/sim/test_single_read.py``
pins both against the general path's autograd.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from cimflow.sim import fastmm, fused_read
from cimflow.sim.array_state import instance_op, live_instance
from cimflow.sim.draw_pool import training_read_normal

if TYPE_CHECKING:
    from cimflow.sim.engine import CrossbarEngine

#: Use the fused training read where it applies (tests turn it off to compare with the general path).
ENABLED = True
#: Multiply-adds from which a digital array's inference read takes the int8 units
#: (:func:`_fused_int_digital`) rather than a float32 matmul. Measured on a Zen 4 core (AVX-512
#: VNNI), 1 thread, median of 7: 1024 x (4 -> 64) (0.26 M) 29 against 23 us, 1 x (256 -> 256)
#: 14 against 11 us; 1024 x (64 -> 16) (1.05 M) 27 against 43 us, 1024 x (44 -> 64) 43 against
#: 85 us, 256 x (784 -> 256) 158 against 1,041 us.
DIGITAL_INT_MIN_MACS = 1 << 19


def dac_steps(engine: CrossbarEngine) -> float:
    """Input DAC steps per side (1 for a 1-bit, sign-only DAC)."""
    bits = engine.spec.input_encoding.bits
    return float((1 << (bits - 1)) - 1) if bits > 1 else 1.0


def digital_weights(engine: CrossbarEngine, steps_in: float) -> torch.Tensor:
    """A digital array's weights for :func:`single_read`: the quantized weights times the
    weight scale over the DAC steps, (in, out), so that one matmul of the integer input codes
    gives the output up to the per-vector input scale.

    A digital CIM array streams the input codes bit-serially and holds the weight codes
    bit-sliced; its adder tree and accumulator are exact integer arithmetic (the spec gives
    them no width limit, so nothing saturates), so the shift-added sum of every (input bit,
    weight bit) product is the integer product of the codes: one matmul, no loop over bits
    (``tests/sim/test_single_read.py`` checks it against the bit-by-bit sum). Cached on the
    engine for the weights it was made from (a new programming or ``.to(device)`` makes new
    weights, and a new cache on the next read); made afresh under ``torch.compile``."""
    if torch.compiler.is_compiling():
        return engine.w_eff[0] * (engine.w_scale / steps_in)
    return fastmm.cached(engine, "_digital_read", lambda: (engine.w_eff[0] * (engine.w_scale / steps_in)).contiguous())


def _int_digital_operands(engine: CrossbarEngine, steps_in: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A digital array's int8 weight codes (in, out) and the weight scale over the DAC and
    weight steps (1, out), cached."""
    steps_w = float((1 << ((engine.spec.weight_bits or 8) - 1)) - 1)

    def make() -> tuple[torch.Tensor, torch.Tensor]:
        w_codes = (engine.w_eff[0] * steps_w).round_().to(torch.int8)
        return w_codes, (engine.w_scale / (steps_in * steps_w)).reshape(1, -1)

    return fastmm.cached(engine, "_int_digital", make)


def _int_digital(engine: CrossbarEngine, codes: torch.Tensor, steps_in: float) -> torch.Tensor:
    """A digital array's read on the int8 matrix units: the exact integer product of the codes,
    then the weight scale over the DAC and weight steps. (N, out) float32."""
    w_codes, per_out = _int_digital_operands(engine, steps_in)
    return torch._int_mm(codes, w_codes).to(torch.float32).mul_(per_out)


def _fused_int_digital(engine: CrossbarEngine, x: torch.Tensor, steps_in: float) -> tuple[torch.Tensor, torch.Tensor]:
    """An inference read of a digital array on the int8 matrix units in three calls: the DAC
    writing int8 codes, their integer product, and one kernel for the scales
    (:func:`cimflow.sim.fused_read.scale_products`); the same values as :func:`_int_digital`
    after the float32 DAC (the codes are integers, the scales the same two products). Returns
    the output (N, out) and the input scale (N, 1)."""
    codes, scale_x = fused_read.dac(x, steps_in, fastmm.workspace(engine), torch.int8)
    w_codes, per_out = _int_digital_operands(engine, steps_in)
    return fused_read.scale_products(torch._int_mm(codes, w_codes), per_out, scale_x), scale_x


def _int_analog_operands(engine: CrossbarEngine) -> tuple[fastmm.SignalPlanes, torch.Tensor | None]:
    """The weights' int8 planes and the read-noise cell variances over their scale squared
    in bfloat16 (the variance of partial sums in the planes' units), cached."""
    def make() -> tuple[fastmm.SignalPlanes, torch.Tensor | None]:
        planes = fastmm.int8_planes(engine.w_eff[0])
        var = None if engine.read_var is None else (engine.read_var[0] / planes.scale.square()).to(torch.bfloat16)
        return planes, var

    return fastmm.cached(engine, "_int_analog", make)


def single_read(engine: CrossbarEngine, x: torch.Tensor, keep: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """:func:`read_once` with gradients off (entered only where they are on)."""
    if torch.is_grad_enabled():
        with torch.no_grad():
            return read_once(engine, x, keep)
    return read_once(engine, x, keep)


def read_once(engine: CrossbarEngine, x: torch.Tensor, keep: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """``y = x @ W`` read once (see the module docstring); ``x`` (N, in) -> (N, out); run
    with gradients off (:func:`single_read`).

    With ``keep`` (training) also returns what the backward needs: the DAC codes ``xi``, the
    input scale, the ADC's in-range mask per (group, vector, column) (None when nothing
    clipped) and the fixed-range DAC's in-range mask (None for per-vector ranges)."""
    steps_in = dac_steps(engine)
    if fused_read.applies(engine, x):
        return fused_read.read(engine, x, steps_in, keep)
    dac_inside = None
    if (engine.is_digital and not keep and not engine.collect_stats and fused_read.dac_applies(engine, x)
            and fastmm.int_read_applies(engine, x, min_macs=DIGITAL_INT_MIN_MACS)):
        y, scale_x = _fused_int_digital(engine, x, steps_in)
        return y, {"xi": None, "scale_x": scale_x, "adc_inside": None, "dac_inside": None}
    if fused_read.dac_applies(engine, x):  # one kernel: the per-vector range and the codes
        xi, scale_x = fused_read.dac(x, steps_in, None if keep else fastmm.workspace(engine))
    elif engine.spec.input_encoding.bits > 1:
        scale_x = engine._input_scale(x)
        # not steps_in / scale_x: Tensor.__rdiv__ is Python; in the workspace unless training keeps it
        xi = torch.mul(x, scale_x.reciprocal().mul_(steps_in),
                       out=None if keep or x.device.type != "cpu" or torch.compiler.is_compiling()
                       else fastmm.workspace(engine).get("xi", x.shape, x.dtype))
        if engine.has_fixed_input_range():  # a per-vector range holds every |x| <= scale_x: no clamp
            if keep:
                dac_inside = xi.abs() <= steps_in
            xi.clamp_(-steps_in, steps_in)
        xi.round_()  # DAC codes
    else:
        scale_x = engine._input_scale(x)
        xi = torch.sign(x)
    if engine.collect_stats:
        engine._record_stats(xi)
    kept: dict[str, torch.Tensor | None] = {"xi": xi, "scale_x": scale_x, "adc_inside": None, "dac_inside": dac_inside}
    codes = None
    if fastmm.int_read_applies(engine, xi):
        codes = fastmm.workspace(engine).get("codes", xi.shape, torch.int8)
        codes.copy_(xi)
    if engine.is_digital:
        if codes is not None:
            return _int_digital(engine, codes, steps_in).mul_(scale_x), kept
        return torch.mm(xi, digital_weights(engine, steps_in)).mul_(scale_x), kept
    w = engine.w_eff[0]  # (G, gr, out): one slice, G read groups
    g = w.shape[0]
    rows = engine.grid.in_features
    # partial sums in DAC-code units, (G, N, out): each group over its true rows, no padding;
    # on the integer units in units of the planes' per-column scale, folded into the ADC below
    unit = None
    if codes is not None:
        planes, cell_var = _int_analog_operands(engine)
        acc, unit = fastmm.int_signal_products(codes, planes, rows), planes.scale
        var = None if cell_var is None else fastmm.variance_products(codes, cell_var, rows)
    else:
        acc = fastmm.grouped_products(xi, w, rows)
        var = None if engine.read_var is None else engine._read_variance(xi)
    if var is not None:  # one normal draw for all groups
        acc.addcmul_(training_read_normal(engine, acc) if keep else engine._read_normal(acc), var.sqrt_())
    bits = engine.spec.analog_adc().bits
    rng = engine.adc_range[0] * steps_in  # (G, 1, out): full scale in DAC-code units
    if bits > 1:
        steps_adc = float((1 << (bits - 1)) - 1)
        ahead = rng.reciprocal().mul_(steps_adc)
        if unit is not None:
            ahead = ahead.mul_(unit)
        if engine.output_gain is not None:
            ahead = ahead * engine.output_gain  # drift compensation, ahead of the ADC
        acc.mul_(ahead)
        if keep:
            # on a CPU a host check is cheap: two reductions, and no mask (a one-matmul backward) when nothing clipped
            clipped = acc.device.type != "cpu" or float(torch.maximum(acc.amax(), acc.amin().neg_())) > steps_adc
            kept["adc_inside"] = acc.abs() <= steps_adc if clipped else None
        acc.clamp_(-steps_adc, steps_adc).round_()
        acc.mul_(rng * (engine.w_scale / (steps_adc * steps_in)))  # ADC step and weight scale in one pass
    else:
        if engine.output_gain is not None:
            acc.mul_(engine.output_gain)
        acc = torch.sign(acc).mul_(rng * (engine.w_scale / steps_in))
    y = acc[0] if g == 1 else acc.sum(dim=0)
    return y.mul_(scale_x), kept


def compiled_read_applies(x: torch.Tensor) -> bool:
    """Whether a read of ``x`` traced by torch.compile runs as :func:`read_op` (the fused read
    whole: float32 on a CPU where it runs) rather than as traced torch operations."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and fused_read.available()


def _read_kernel(key: int, x: torch.Tensor) -> torch.Tensor:
    """:func:`single_read` of the engine ``key`` names (its ``id``) as one op: torch.compile
    keeps it whole, so a compiled model runs the fused read's kernels (which it cannot trace)
    with the reads, draws and values of the eager forward."""
    from cimflow.sim.engine import CrossbarEngine  # (the engine module imports this one)

    return single_read(live_instance(key, CrossbarEngine), x)[0]


def _read_shape(key: int, x: torch.Tensor) -> torch.Tensor:
    from cimflow.sim.engine import CrossbarEngine

    return x.new_empty((x.shape[0], live_instance(key, CrossbarEngine).grid.out_features))


read_op = instance_op("crossbar_read", "(int key, Tensor x) -> Tensor", "cpu", _read_kernel, _read_shape)


def applies(engine: CrossbarEngine) -> bool:
    """Whether a training forward of ``engine`` can take :class:`SingleReadStraightThrough`:
    an analog array read once (one slice, one pulse, consecutive read groups, a multi-bit
    ADC), no learned input range (its gradient needs the general path), no calibration under
    way, not inside ``torch.compile`` (the general path traces)."""
    return (ENABLED and not engine.is_digital and engine.programmed and not engine._calibrating
            and engine._input_planes_count() == 1 and engine.w_eff.shape[0] == 1 and engine._gather_index is None
            and engine.input_range_log is None and engine.spec.analog_adc().bits > 1
            and (engine.output_gain is None or engine.output_gain.dim() <= 1)
            and not torch.compiler.is_compiling())


class SingleReadStraightThrough(torch.autograd.Function):
    """Forward: :func:`single_read` (noisy, in place, no graph). Backward: the general path's
    straight-through gradients to the input and the live weight (in, out) in closed form
    (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight_in_out: torch.Tensor | None, engine: CrossbarEngine) -> torch.Tensor:  # noqa: ANN001
        y, kept = single_read(engine, x.detach(), keep=True)
        ctx.engine = engine
        ctx.save_for_backward(kept["xi"], kept["scale_x"], engine.w_eff[0], engine.w_scale, kept["adc_inside"],
                              kept["dac_inside"], engine.output_gain)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:  # noqa: ANN001
        xi, scale_x, w, w_scale, adc_inside, dac_inside, gain = ctx.saved_tensors
        engine: CrossbarEngine = ctx.engine
        rows = engine.grid.in_features
        groups, group_rows, out = w.shape
        gy = grad_y if gain is None else grad_y * gain
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = grad_w = None
        if adc_inside is None:  # nothing clipped: one matmul each, as the float layer's backward
            flat = w.reshape(groups * group_rows, out)[:rows]
            if want_x:
                grad_x = (gy * w_scale) @ flat.t()
            if want_w:  # the per-vector input scale on the (N, out) side: fewer elements than (N, in)
                # made (out, in), the live weight's own layout, and handed back transposed: autograd's
                # transpose back to the weight is then contiguous (no strided copy into .grad; the
                # matmul's operands as in the float layer's backward)
                grad_w = ((gy * (scale_x / dac_steps(engine))).t() @ xi).t()
        else:
            gyg = gy * adc_inside  # (G, N, out)
            n = gy.shape[0]
            if want_x:
                gx = torch.matmul(gyg * w_scale, w.transpose(1, 2))  # (G, N, gr)
                grad_x = gx.transpose(0, 1).reshape(n, groups * group_rows)[:, :rows]
            if want_w:
                xq = xi * (scale_x / dac_steps(engine))
                pad = groups * group_rows - rows
                if pad:
                    xq = torch.nn.functional.pad(xq, (0, pad))
                gw = torch.matmul(xq.view(n, groups, group_rows).permute(1, 2, 0), gyg)  # (G, gr, out)
                grad_w = gw.reshape(groups * group_rows, out)[:rows]
        if grad_x is not None and dac_inside is not None:
            grad_x = grad_x * dac_inside
        return grad_x, grad_w, None


__all__ = ["ENABLED", "SingleReadStraightThrough", "applies", "compiled_read_applies", "dac_steps", "digital_weights", "read_op",
           "single_read"]
