"""Lookups grouped into array reads: parsing a forward's indices and offsets
(:func:`flatten_bags`, one host sync for every check), the test of lookups read alone
(:func:`alone_in_read`), grouping the others into reads (:func:`group_reads`), their
segment sums and the noisy ADC conversion of shared reads (:func:`adc_codes`).
Used by :class:`cimflow.sim.embedding.CIMEmbeddingBag` through :mod:`cimflow.sim.pooling`."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from cimflow.errors import DataError
from cimflow.sim import fused_read, fused_table


class Flat(NamedTuple):
    """Lookups of one forward: flat indices, the bag of each, the number of bags, the output's
    leading shape, whether no bag holds two indices, and the number of indices per bag
    (None: one each)."""

    idx: torch.Tensor
    bags: torch.Tensor
    n_bags: int
    out_shape: tuple[int, ...]
    one_per_bag: bool
    per_bag: torch.Tensor | None = None


def flatten_bags(input: torch.Tensor, offsets: torch.Tensor | None, is_bag: bool, include_last_offset: bool, rows: int,
                 name: str) -> Flat:
    """Parse an embedding (bag) input as ``nn.Embedding`` / ``nn.EmbeddingBag`` do: a 2-D input
    is one bag per row (or one lookup per entry for a plain embedding), a 1-D input is cut by
    ``offsets`` (with or without the closing one). Offsets, bag sizes and the index range
    against the table's ``rows`` are checked in one host sync; a violation is a DataError."""
    if not is_bag or input.dim() == 2:
        if offsets is not None and input.dim() == 2:
            raise DataError(f"embedding {name!r}: offsets must be None when the input is 2-D")
        shape = tuple(input.shape if not is_bag else input.shape[:1])
        per = 1 if not is_bag else input.shape[1]
        flat = input.reshape(-1)
        n_bags = int(math.prod(shape)) if shape else 1
        bags = torch.arange(n_bags, device=flat.device)
        bags = bags.repeat_interleave(per) if per != 1 else bags
        if flat.numel():
            lowest, highest = torch.stack(list(torch.aminmax(flat))).tolist()  # one host sync
            _check_indices(lowest, highest, rows, name)
        return Flat(flat, bags, n_bags, shape, per <= 1, None if per == 1 else torch.full((n_bags,), per, device=flat.device))
    if offsets is None:
        raise DataError(f"embedding bag {name!r}: a 1-D input needs offsets")
    offsets = offsets.to(torch.int64)
    if offsets.numel() == 0:
        raise _bad_offsets(name, input.numel())
    made: torch.Tensor | None = None
    if input.device.type == "cpu" and input.dtype in (torch.int64, torch.int32) and fused_read.available():
        # one compiled pass: sizes, extremes and each index's bag (the used indices' extremes)
        first, last, fewest, most, lowest, highest, counts, made = fused_table.bag_extents(input, offsets, include_last_offset)
    else:
        counts = offsets.diff()  # indices per bag
        if not include_last_offset:
            counts = torch.cat([counts, (input.numel() - offsets[-1]).reshape(1)])
        fewest_t, most_t = torch.aminmax(counts) if counts.numel() else (offsets[0], offsets[0])
        low, high = torch.aminmax(input) if input.numel() else (offsets[0], offsets[0])
        first, last, fewest, most, lowest, highest = torch.stack(
            [offsets[0], offsets[-1], fewest_t, most_t, low.to(torch.int64), high.to(torch.int64)]).tolist()  # one host sync
    if first != 0 or fewest < 0 or last > input.numel():
        raise _bad_offsets(name, input.numel())
    used = last if include_last_offset else input.numel()
    if used < input.numel() and (lowest < 0 or highest >= rows):  # the unused tail may hold anything
        lowest, highest = torch.stack(list(torch.aminmax(input[:used]))).tolist() if used else (0, 0)
    if input.numel():
        _check_indices(lowest, highest, rows, name)
    n_bags = counts.numel()
    if made is not None:
        bags = made
    else:
        bags = torch.arange(n_bags, device=input.device)
        if not (most <= 1 and used == n_bags):  # else one index per bag: bag i holds index i
            bags = torch.repeat_interleave(bags, counts, output_size=used)
    return Flat(input[:used], bags, n_bags, (n_bags,), most <= 1, counts)


def _bad_offsets(name: str, n_indices: int) -> DataError:
    return DataError(f"embedding bag {name!r}: offsets must start at 0, never decrease and stay within the {n_indices} indices")


def _check_indices(lowest: int, highest: int, rows: int, name: str) -> None:
    if lowest < 0 or highest >= rows:
        bad = lowest if lowest < 0 else highest
        raise DataError(f"embedding {name!r}: index {bad} is out of range; the table has {rows} rows (0..{rows - 1})")


def floor_div(values: torch.Tensor, divisor: int) -> torch.Tensor:
    """``values // divisor`` for non-negative int64 values: a shift when ``divisor`` is a
    power of two (int64 division is several times slower on a CPU)."""
    shift = divisor.bit_length() - 1
    return values >> shift if divisor == 1 << shift else torch.div(values, divisor, rounding_mode="floor")


def mod(values: torch.Tensor, divisor: int) -> torch.Tensor:
    """``values % divisor`` for non-negative int64 values (a mask for a power of two)."""
    return values & (divisor - 1) if divisor & (divisor - 1) == 0 else values % divisor


def alone_in_read(idx: torch.Tensor, bags: torch.Tensor, per_bag: torch.Tensor, array_rows: int, n_arrays: int,
                  group_rows: int) -> torch.Tensor:
    """Mask of the lookups that are the only row of their bag in their array (so read alone),
    from ``per_bag`` (lookups per bag), one ``bincount`` over (bag, array) keys, or, when
    there are many more keys than lookups (a bincount would mostly clear memory), one sort."""
    if group_rows == 1:
        return torch.ones_like(idx, dtype=torch.bool)
    if n_arrays == 1:
        return per_bag[bags] == 1
    key = bags * n_arrays + floor_div(idx, array_rows)
    if per_bag.numel() * n_arrays <= 8 * key.numel():
        return counts(key, per_bag.numel() * n_arrays).index_select(0, key) == 1
    # many more keys than lookups: hashed into 4-8 bins per lookup, a lookup alone in its bin
    # is alone in its read; only the others (shared reads and hash collisions) are sorted
    bits = max(10, (4 * key.numel()).bit_length())
    bins = ((key * _HASH_MULTIPLIER) >> (62 - bits)) & ((1 << bits) - 1)
    alone = counts(bins, 1 << bits).index_select(0, bins) == 1
    maybe = (~alone).nonzero().squeeze(1)
    if maybe.numel():
        alone[maybe] = _alone_by_sorting(key[maybe])
    return alone


#: An odd 62-bit multiplier (Fibonacci hashing): the product's high bits mix every key bit.
_HASH_MULTIPLIER = 0x278DDE6E5FD29E00 | 1


def counts(values: torch.Tensor, size: int) -> torch.Tensor:
    """How often each of ``0 .. size - 1`` occurs in ``values`` (int32; a scatter-add, about
    twice as fast as ``torch.bincount`` on a CPU, which scans for the range first)."""
    ones = torch.ones(1, dtype=torch.int32, device=values.device).expand(values.numel())
    return torch.zeros(size, dtype=torch.int32, device=values.device).scatter_add_(0, values, ones)


def _alone_by_sorting(key: torch.Tensor) -> torch.Tensor:
    """Mask of the keys that occur once, by one sort."""
    key_s, order = torch.sort(key)
    differs = key_s[1:] != key_s[:-1]
    alone_s = torch.ones_like(key_s, dtype=torch.bool)
    alone_s[1:] &= differs
    alone_s[:-1] &= differs
    return torch.empty_like(alone_s).scatter_(0, order, alone_s)


# ---------------------------------------------------------------------- reads shared by several lookups
def segment_sums(values: torch.Tensor, starts: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """Sums over the contiguous segments that begin at ``starts`` (sorted, first 0) of the
    rows ``values[idx]`` (or of ``values`` itself when ``idx`` is None), in one pass
    (``F.embedding_bag``: no gathered copy, no running sum)."""
    flat = values.reshape(values.shape[0], -1)
    if idx is None:
        idx = torch.arange(flat.shape[0], device=flat.device)
    return F.embedding_bag(idx, flat, starts, mode="sum")


def group_reads(idx: torch.Tensor, bags: torch.Tensor, array_rows: int, n_arrays: int,
                group_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One read per (bag, array, chunk of ``group_rows`` rows): the lookups reordered so that
    every read is a contiguous run (reads ordered by bag), the first position of each read,
    and each read's bag."""
    key = bags * n_arrays + floor_div(idx, array_rows)
    key_s, order = torch.sort(key)  # (the order within a read does not matter)
    n = key_s.numel()
    first = torch.ones(n, dtype=torch.bool, device=key_s.device)
    first[1:] = key_s[1:] != key_s[:-1]
    read_starts = torch.nonzero(first).squeeze(1)
    if n and bool((torch.diff(read_starts, append=read_starts.new_tensor([n])) > group_rows).any()):  # some reads split
        pos = torch.arange(n, device=key_s.device)
        group_start = torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), 0).values
        read_starts = torch.nonzero(first | (mod(pos - group_start, group_rows) == 0)).squeeze(1)
    return idx[order], read_starts, bags[order][read_starts]


def adc_codes(psum: torch.Tensor, var: torch.Tensor, gain: torch.Tensor | None, bits: int, full: float, tail: float,
              generator: torch.Generator | None, near_only: bool = False) -> tuple[torch.Tensor, float]:
    """ADC codes (``bits`` > 1, full scale ``full``) of partial sums ``psum`` (cell units,
    times the compensation ``gain``) with read noise of variance ``var``, and one code's value
    in cell units. Noise is ``sigma * z``, z standard normal clamped at ``tail``: one draw per
    sum, or (``near_only``, cheaper when few sums are near an ADC decision boundary, as for
    one-row reads) only for the sums within the noise's reach of one (the others convert to
    the same code whatever the draw: the same distribution)."""
    steps = (1 << (bits - 1)) - 1
    k = steps / full  # ADC steps per cell
    x = psum * (k if gain is None else gain * k)  # in ADC steps
    sigma = var.sqrt().mul_(k)  # var >= 0: a sum of variances
    if gain is not None:
        sigma = sigma.mul_(gain.abs())
    if near_only:  # a draw can change the code only where a boundary (an odd multiple of half a step) is within reach
        codes = x.round()
        where = torch.nonzero((torch.sub(x, codes).abs_() + sigma * tail >= 0.5).view(-1)).squeeze(1)
        if where.numel():
            z = torch.randn(where.shape, generator=generator, device=psum.device, dtype=psum.dtype)
            codes.view(-1)[where] = x.view(-1)[where].addcmul_(z.clamp_(-tail, tail), sigma.view(-1)[where]).round_()
    else:  # one randn pass costs less than finding the near sums (nonzero) and scattering their draws back
        z = torch.randn(x.shape, generator=generator, device=psum.device, dtype=psum.dtype).clamp_(-tail, tail)
        codes = x.addcmul_(z, sigma).round_()
    return codes.clamp_(-steps, steps), 1.0 / k
