"""Compile time of a ResNet-50-shaped CNN (25M parameters, random weights) and of a
DLRM-v2-shaped model whose 204M-row tables are meta tensors (nothing allocated).
Target (issue [2/5]): each <= 5 s. Run: .venv/bin/python benchmarks/compile_time.py
"""

from __future__ import annotations

import time

import torch
from torch import nn

import cimflow
from cimflow.chip import chip_from_dict, load_preset


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int) -> None:
        super().__init__()
        cout = mid * 4
        self.c1, self.b1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.c2, self.b2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.c3, self.b3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.down = nn.Identity()

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.c2(y)))
        return torch.relu(self.b3(self.c3(y)) + self.down(x))


def resnet50() -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for mid, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            layers.append(Bottleneck(cin, mid, stride if b == 0 else 1))
            cin = mid * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
    return nn.Sequential(*layers)


def big_chip(base: str, cores: int):
    data = load_preset(base).model_dump(mode="json", exclude_none=True)
    data["cores"]["count"] = cores
    return chip_from_dict(data, f"{base} x{cores} cores")


def main() -> None:
    torch.set_num_threads(2)
    model = resnet50()
    params = sum(p.numel() for p in model.parameters())
    chip = big_chip("pcm-hermes-like", 2048)
    t = time.perf_counter()
    plan = cimflow.compile(model, chip, torch.randn(1, 3, 224, 224))
    resnet_s = time.perf_counter() - t
    print(f"ResNet-50 shape ({params / 1e6:.1f}M params, {len(plan.ops)} ops, {sum(plan.arrays_used().values())} arrays): "
          f"compile {resnet_s:.2f} s (target <= 5 s)")

    from cimflow.recsys.models import DLRM, mlperf_dlrm_v2

    cfg = mlperf_dlrm_v2()
    dlrm = DLRM(cfg, device="meta")
    batch = 64
    dense = torch.randn(batch, cfg.dense_features, device="meta")
    pools = cfg.pooling_factors or (1,) * len(cfg.table_sizes)
    sparse = [(torch.zeros(batch * p, dtype=torch.long, device="meta"), torch.arange(0, batch * p + 1, p, device="meta")) for p in pools]
    chip = big_chip("hybrid-rram-sram-28nm", 8192)
    t = time.perf_counter()
    plan = cimflow.compile(dlrm, chip, (dense, sparse))
    dlrm_s = time.perf_counter() - t
    rows = sum(cfg.table_sizes)
    print(f"DLRM-v2 shape ({rows / 1e6:.0f}M rows x {cfg.embedding_dim}, meta tensors, {len(plan.ops)} ops, "
          f"{sum(plan.arrays_used().values())} arrays): "
          f"compile {dlrm_s:.2f} s (target <= 5 s)")


if __name__ == "__main__":
    main()
