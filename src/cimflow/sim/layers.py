"""CIM layers: drop-in replacements for nn.Linear, nn.Conv1d and nn.Conv2d.

Each keeps its ordinary ``weight`` and ``bias`` parameters under the same names as the
layer it replaces (so ``state_dict`` keys, ``torch.save``, optimizers and ``.to(device)``
keep working) and owns a :class:`~cimflow.sim.engine.CrossbarEngine` that holds the
programmed chip instance. Bias is added in digital.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cimflow.chip.spec import ArraySpec
from cimflow.sim import single_read
from cimflow.sim.array_state import InstanceSource, instance_op, live_instance, refresh_before_forward
from cimflow.sim.engine import CrossbarEngine

#: Bytes of im2col columns an inference convolution reads at a time on a CPU: the batch is
#: read in chunks whose columns stay in the caches through the passes over them (quantize,
#: round, the signal and read-noise variance matmuls); a chunk's read noise is drawn from the
#: same generator in turn, so the draws are distributed as one read of the whole batch.
COLUMN_CHUNK_BYTES = 4 << 20


def patch_max(a: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]) -> torch.Tensor:
    """Each convolution patch's maximum of ``a`` (N, 1, H, W), as ``F.max_pool2d(a, kernel,
    stride, dilation=dilation)`` gives it, computed separably (rows, then columns) on strided
    views: a max is exact in any order, and this is ~7x faster than the stride-1 max-pool."""
    for dim, k, s, d in ((3, kernel[1], stride[1], dilation[1]), (2, kernel[0], stride[0], dilation[0])):
        a = a.unfold(dim, d * (k - 1) + 1, s)[..., ::d].amax(dim=-1)
    return a


def patch_view(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]) -> torch.Tensor:
    """The convolution patches of ``x`` (N, C, H, W) as a strided view (N, C, kh, kw, Ho, Wo),
    no copy; ``.reshape(N, C*kh*kw, Ho*Wo)`` of it is ``F.unfold(x, kernel, dilation, 0,
    stride)``. Quantizing the view writes the columns once (unfold, then quantize, twice)."""
    for dim, k, s, d in ((2, kernel[0], stride[0], dilation[0]), (3, kernel[1], stride[1], dilation[1])):
        x = x.unfold(dim, d * (k - 1) + 1, s)[..., ::d]
    return x.permute(0, 1, 4, 5, 2, 3)


def out_size(h: int, w: int, kernel: tuple[int, ...] | list[int], stride: tuple[int, ...] | list[int],
             dilation: tuple[int, ...] | list[int]) -> tuple[int, int]:
    """A convolution's output height and width from its padded input's."""
    return (h - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1, (w - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1


def read_patches(engine: CrossbarEngine, x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...],
                 dilation: tuple[int, ...]) -> torch.Tensor:
    """A convolution's inference read of the padded input ``x`` (N, C, H, W) on ``engine``
    (:meth:`CrossbarEngine.read_columns`, which must apply): the patches as a view, quantized
    straight into channel-first columns, each patch's range from a separable max (none for a
    fixed range); on a CPU in batch chunks whose columns stay in the caches. Returns (N, out,
    Ho Wo), bias not added."""
    n, _, h, w = x.shape
    ho, wo = out_size(h, w, kernel, stride, dilation)
    scale = None
    if not engine.has_fixed_input_range():
        scale = patch_max(x.detach().abs().amax(dim=1, keepdim=True), kernel, stride, dilation)
        scale = scale.flatten(2).clamp_min(1e-12)  # (N, 1, L)
    patches = patch_view(x, kernel, stride, dilation)
    step = n
    if x.device.type == "cpu" and not torch.compiler.is_compiling():  # a batch chunk's columns stay in the caches
        step = max(1, COLUMN_CHUNK_BYTES // (engine.grid.in_features * ho * wo * x.element_size()))
    if step >= n:
        return engine.read_columns(patches, scale)
    y = x.new_empty((n, engine.grid.out_features, ho * wo))
    for i in range(0, n, step):  # each chunk written straight into its rows of the output
        engine.read_columns(patches[i : i + step], None if scale is None else scale[i : i + step], out=y[i : i + step])
    return y


def _conv_read_kernel(key: int, x: torch.Tensor, kernel: list[int], stride: list[int], dilation: list[int]) -> torch.Tensor:
    """:func:`read_patches` of the engine ``key`` names, as one op: a compiled model runs the
    eager read (its kernels, reads and draws) instead of tracing it."""
    return read_patches(live_instance(key, CrossbarEngine), x, tuple(kernel), tuple(stride), tuple(dilation))


def _conv_read_shape(key: int, x: torch.Tensor, kernel: list[int], stride: list[int], dilation: list[int]) -> torch.Tensor:
    n, _, h, w = x.shape
    ho, wo = out_size(h, w, kernel, stride, dilation)
    return x.new_empty((n, live_instance(key, CrossbarEngine).grid.out_features, ho * wo))


conv_read_op = instance_op("conv_read", "(int key, Tensor x, int[] kernel, int[] stride, int[] dilation) -> Tensor", "cpu",
                           _conv_read_kernel, _conv_read_shape)


class CIMLayer(nn.Module):
    """Common part of the CIM layers: the engine, programming and drift."""

    weight: torch.Tensor  # the wrapped layer's nn.Parameter
    bias: torch.Tensor | None

    def _init_engine(self, spec: ArraySpec, array_kind: str, in_features: int, out_features: int, name: str) -> None:
        self.array_kind = array_kind
        self.layer_name = name
        self.engine = CrossbarEngine(spec, in_features, out_features, name=name)
        # re-programming after a weight change happens before forward, never inside it
        self.register_forward_pre_hook(refresh_before_forward)

    def weight_matrix(self) -> torch.Tensor:
        """The weight as the crossbar holds it: (in_features, out_features)."""
        return self.weight.reshape(self.weight.shape[0], -1).t()

    def program(self, seed: int, draws: InstanceSource | None = None, t_seconds: float | None = None) -> None:
        """Program instance ``seed`` (:meth:`CrossbarEngine.program`: ``draws`` a draw source
        in place of the seeded generators, ``t_seconds`` the time to leave it at)."""
        self.engine.program(self.weight_matrix(), seed, draws=draws, t_seconds=t_seconds)
        self.engine._weight_version = self.weight._version

    def set_time(self, t_seconds: float) -> None:
        """Age this layer's chip instance to ``t_seconds`` after programming."""
        self.engine.set_time(t_seconds)

    def refresh(self) -> bool:
        """Program this layer again if its weights changed since programming (an optimizer
        step): same instance seed, same time after programming. Returns whether it did.

        Eager forwards call it first (a forward pre-hook); a model compiled with
        ``torch.compile`` does not (programming is not part of the compiled graph): call
        ``cimflow.program`` or this method after changing the weights of a compiled model."""
        if not self.engine.programmed or self.engine._weight_version == self.weight._version:
            return False
        t = self.engine.t_seconds
        self.program(self.engine.seed or 0)
        if t != self.engine.t_seconds:
            self.engine.set_time(t)
        return True

    def mvm(self, x2d: torch.Tensor) -> torch.Tensor:
        self.engine.record_input(x2d)
        if not (torch.is_grad_enabled() and (x2d.requires_grad or self.weight.requires_grad)):
            return self.engine(x2d, None)  # no gradient: the live weight is not needed
        weight = self.weight_matrix()
        if single_read.applies(self.engine):
            # training: the noisy read forward, straight-through gradients in closed form
            return single_read.SingleReadStraightThrough.apply(x2d, weight, self.engine)
        return self.engine(x2d, weight)

    def extra_repr(self) -> str:
        g = self.engine.grid
        return f"{super().extra_repr()}, array={self.array_kind!r}, tiles={g.row_tiles}x{g.col_tiles}"


class CIMLinear(CIMLayer):
    """``nn.Linear`` computed on CIM arrays."""

    def __init__(self, linear: nn.Linear, spec: ArraySpec, array_kind: str, name: str = "") -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self._init_engine(spec, array_kind, self.in_features, self.out_features, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.mvm(x.reshape(-1, self.in_features))
        if self.bias is not None:
            y = y + self.bias if y.requires_grad else y.add_(self.bias)  # the read's output is a fresh tensor
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        g = self.engine.grid
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"array={self.array_kind!r}, tiles={g.row_tiles}x{g.col_tiles}")


class CIMConv(CIMLayer):
    """``nn.Conv1d`` / ``nn.Conv2d`` computed on CIM arrays as an im2col MVM (groups=1)."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d, spec: ArraySpec, array_kind: str, name: str = "") -> None:
        super().__init__()
        self.dims = 1 if isinstance(conv, nn.Conv1d) else 2
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        self.padding, self.padding_mode = conv.padding, conv.padding_mode
        # F.pad order (last dim first), as nn.ConvNd computes it for every padding form
        self._pad = tuple(int(p) for p in conv._reversed_padding_repeated_twice)
        self.weight = conv.weight
        self.bias = conv.bias
        in_features = self.weight[0].numel()
        self._init_engine(spec, array_kind, in_features, self.out_channels, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = self.dims == 1
        if squeeze:
            x = x.unsqueeze(-2)
        k = self.kernel_size if self.dims == 2 else (1, self.kernel_size[0])
        stride = self.stride if self.dims == 2 else (1, self.stride[0])
        dilation = self.dilation if self.dims == 2 else (1, self.dilation[0])
        if any(self._pad):
            x = F.pad(x, self._pad, mode="constant" if self.padding_mode == "zeros" else self.padding_mode)
        n, _, h, w = x.shape
        ho, wo = out_size(h, w, k, stride, dilation)
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if not needs_grad and self.engine.can_read_columns():  # inference, the columns channel-first
            if torch.compiler.is_compiling() and single_read.compiled_read_applies(x):  # the eager read whole, as one op
                y = conv_read_op(id(self.engine), x, list(k), list(stride), list(dilation))
            else:
                y = read_patches(self.engine, x, k, stride, dilation)
            if self.bias is not None:
                y.add_(self.bias.view(1, -1, 1))  # no-grad read: a fresh tensor
            y = y.reshape(n, self.out_channels, ho, wo)
            return y.squeeze(-2) if squeeze else y
        cols = F.unfold(x, k, dilation=dilation, stride=stride)  # (N, C*kh*kw, L)
        y = self.mvm(cols.transpose(1, 2).reshape(-1, cols.shape[1]))
        if self.bias is not None:
            y = y + self.bias
        y = y.reshape(n, ho * wo, self.out_channels).transpose(1, 2).reshape(n, self.out_channels, ho, wo)
        return y.squeeze(-2) if squeeze else y

    def extra_repr(self) -> str:
        g = self.engine.grid
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"array={self.array_kind!r}, tiles={g.row_tiles}x{g.col_tiles}")
