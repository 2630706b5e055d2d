"""What Shoal knows about Azure hardware: the VM sizes a pool may name (images: `model/images.py`).

Pools name a real Azure VM size so that scripts written for Azure Batch run unchanged; the size
decides how many task slots a node may offer and what the scheduler believes a node can hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MIB_PER_GIB = 1024

# Batch caps taskSlotsPerNode at four per vCPU and at 256 whatever the size.
TASK_SLOTS_PER_VCPU = 4
MAX_TASK_SLOTS_PER_NODE = 256


@dataclass(frozen=True)
class VmSize:
    name: str
    vcpus: int
    memory_mib: int


def _family(pattern: str, sizes: Mapping[int, tuple[int, float]]) -> list[VmSize]:
    """Expand a size family: `pattern` has one `{}` for the size number, sizes map it to (vCPUs, GiB)."""
    return [
        VmSize(pattern.format(number), vcpus, round(gib * MIB_PER_GIB))
        for number, (vcpus, gib) in sizes.items()
    ]


# Memory follows a fixed GiB-per-vCPU ratio in most modern families; the exceptions are written out.
_D_V3_V4 = {n: (n, 4 * n) for n in (2, 4, 8, 16, 32, 48, 64)}
_D_V5 = {n: (n, 4 * n) for n in (2, 4, 8, 16, 32, 48, 64, 96)}
_E_V3 = {**{n: (n, 8 * n) for n in (2, 4, 8, 16, 20, 32, 48)}, 64: (64, 432)}
_E_V4 = {**{n: (n, 8 * n) for n in (2, 4, 8, 16, 20, 32, 48)}, 64: (64, 504)}
_E_V5 = {**{n: (n, 8 * n) for n in (2, 4, 8, 16, 20, 32, 48, 64)}, 96: (96, 672)}
_F_V2 = {n: (n, 2 * n) for n in (2, 4, 8, 16, 32, 48, 64, 72)}
_D_V2: dict[int, tuple[int, float]] = {1: (1, 3.5), 2: (2, 7), 3: (4, 14), 4: (8, 28), 5: (16, 56)}
_D_V2_MEMORY = {11: (2, 14), 12: (4, 28), 13: (8, 56), 14: (16, 112), 15: (20, 140)}

_ALL_SIZES: list[VmSize] = [
    # Av2: entry level.
    *_family("Standard_A{}_v2", {1: (1, 2), 2: (2, 4), 4: (4, 8), 8: (8, 16)}),
    *_family("Standard_A{}m_v2", {2: (2, 16), 4: (4, 32), 8: (8, 64)}),
    # B: burstable.
    VmSize("Standard_B1ls", 1, 512),
    *_family("Standard_B{}s", {1: (1, 1), 2: (2, 4)}),
    *_family(
        "Standard_B{}ms",
        {1: (1, 2), 2: (2, 8), 4: (4, 16), 8: (8, 32), 12: (12, 48), 16: (16, 64), 20: (20, 80)},
    ),
    # Dv2 / DSv2: older general purpose, numbered by tier rather than vCPU count.
    *_family("Standard_D{}_v2", {**_D_V2, **_D_V2_MEMORY}),
    *_family("Standard_DS{}_v2", {**_D_V2, **_D_V2_MEMORY}),
    # Dv3 / Dv4 / Dv5 general purpose.
    *_family("Standard_D{}_v3", _D_V3_V4),
    *_family("Standard_D{}s_v3", _D_V3_V4),
    *_family("Standard_D{}_v4", _D_V3_V4),
    *_family("Standard_D{}s_v4", _D_V3_V4),
    *_family("Standard_D{}d_v4", _D_V3_V4),
    *_family("Standard_D{}ds_v4", _D_V3_V4),
    *_family("Standard_D{}_v5", _D_V5),
    *_family("Standard_D{}s_v5", _D_V5),
    *_family("Standard_D{}d_v5", _D_V5),
    *_family("Standard_D{}ds_v5", _D_V5),
    *_family("Standard_D{}as_v5", _D_V5),
    *_family("Standard_D{}ads_v5", _D_V5),
    # E: memory optimised.
    *_family("Standard_E{}_v3", _E_V3),
    *_family("Standard_E{}s_v3", _E_V3),
    *_family("Standard_E{}_v4", _E_V4),
    *_family("Standard_E{}s_v4", _E_V4),
    *_family("Standard_E{}ds_v4", _E_V4),
    *_family("Standard_E{}_v5", _E_V5),
    *_family("Standard_E{}s_v5", _E_V5),
    *_family("Standard_E{}d_v5", _E_V5),
    *_family("Standard_E{}ds_v5", _E_V5),
    *_family("Standard_E{}as_v5", _E_V5),
    *_family("Standard_E{}ads_v5", _E_V5),
    # Fsv2: compute optimised.
    *_family("Standard_F{}s_v2", _F_V2),
    # GPU and HPC.
    *_family("Standard_NC{}s_v3", {6: (6, 112), 12: (12, 224), 24: (24, 448)}),
    *_family("Standard_NC{}as_T4_v3", {4: (4, 28), 8: (8, 56), 16: (16, 110), 64: (64, 440)}),
    VmSize("Standard_HB120rs_v2", 120, 456 * MIB_PER_GIB),
    # The product page says 448 GB for HBv3; the resource SKU API (what Batch reports) says 456 GiB.
    VmSize("Standard_HB120rs_v3", 120, 456 * MIB_PER_GIB),
    VmSize("Standard_HC44rs", 44, 352 * MIB_PER_GIB),
]

_BY_FOLDED_NAME = {size.name.casefold(): size for size in _ALL_SIZES}


def find_vm_size(name: str) -> VmSize | None:
    """The size called `name` (any letter case, as Azure accepts), with its canonical spelling."""
    return _BY_FOLDED_NAME.get(name.strip().casefold())


def all_vm_sizes() -> list[VmSize]:
    return list(_ALL_SIZES)


def max_task_slots(vm_size: VmSize) -> int:
    """The largest taskSlotsPerNode a pool of this size may ask for."""
    return min(TASK_SLOTS_PER_VCPU * vm_size.vcpus, MAX_TASK_SLOTS_PER_NODE)
