"""The Marketplace images `/supportedimages` lists, each with the node agent SKU Batch pairs it with.

Every entry is a Linux image Azure Batch lists for a node agent SKU it still carries (or carried
until a published retirement date). Shoal's local nodes run the host's operating system whatever
image a pool names (docs/deviations.md), so the image only has to be one Azure would accept: the
catalogue is what lets a script written for Azure name its usual image and agent SKU unchanged.

Where the facts come from: the entries Azure listed in the recorded `Account_ListSupportedImages`
of 2023 (/work/shared/oracle, test_batch_create_pools) are as recorded; the Ubuntu 24.04 entries
as Azure/Batch#178 shows them; the 20.04 retirement date from the Batch retirement notice
(Azure/Batch#174: 2025-04-23). Newer offers not in a recording (almalinux-x86_64, Rocky, Debian
11/12, RHEL) take the verification of the recorded entry they replace (almalinux → almalinux-x86_64,
debian-10 → debian-11/12); gen2 SKUs carry `Generation2VMImage` as every recorded gen2 SKU does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WINDOWS_NODE_AGENT = "batch.node.windows amd64"
WINDOWS_PUBLISHERS = ("microsoftwindowsserver", "microsoftwindowsdesktop", "microsoft-dsvm-windows")

UBUNTU_2004 = "batch.node.ubuntu 20.04"
UBUNTU_2204 = "batch.node.ubuntu 22.04"
UBUNTU_2404 = "batch.node.ubuntu 24.04"
EL_8 = "batch.node.el 8"
EL_9 = "batch.node.el 9"
DEBIAN_11 = "batch.node.debian 11"
DEBIAN_12 = "batch.node.debian 12"

# Batch retired the 20.04 node agent with Canonical's standard support (Azure/Batch#174).
_UBUNTU_2004_END_OF_LIFE = "2025-04-23T00:00:00Z"
# Batch announced the end of the 22.04 node agent for 2027-06-30, following Canonical's standard support.
_UBUNTU_2204_END_OF_LIFE = "2027-06-30T00:00:00Z"

GEN2 = "Generation2VMImage"
DOCKER = "DockerCompatible"
RDMA = "SupportsRDMAOnly"
INTEL_MPI = "IntelMPIRuntimeInstalled"
NVIDIA_TESLA = "NvidiaTeslaDriverInstalled"
NVIDIA_GRID = "NvidiaGridDriverInstalled"


@dataclass(frozen=True)
class MarketplaceImage:
    publisher: str
    offer: str
    sku: str
    node_agent: str
    verified: bool = False
    capabilities: tuple[str, ...] = ()
    end_of_life: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.publisher.casefold(), self.offer.casefold(), self.sku.casefold())

    def to_wire(self) -> dict[str, Any]:
        """An ImageInformation object as Azure writes it: `capabilities` only when there are some,
        `batchSupportEndOfLife` only once a retirement date has been announced."""
        out: dict[str, Any] = {
            "imageReference": {"publisher": self.publisher, "offer": self.offer, "sku": self.sku,
                               "version": "latest"},
            "verificationType": "verified" if self.verified else "unverified",
            "nodeAgentSKUId": self.node_agent,
        }
        if self.capabilities:
            out["capabilities"] = list(self.capabilities)
        if self.end_of_life is not None:
            out["batchSupportEndOfLife"] = self.end_of_life
        out["osType"] = "linux"
        return out


_HPC = (DOCKER, RDMA, GEN2, INTEL_MPI)
_CONTAINER = (DOCKER, NVIDIA_TESLA, NVIDIA_GRID)
_CONTAINER_RDMA = (DOCKER, NVIDIA_TESLA, RDMA, INTEL_MPI)

# In Azure's order: by publisher, offer, then SKU.
_IMAGES = (
    MarketplaceImage("almalinux", "almalinux-hpc", "8-hpc-gen1", EL_8, capabilities=(RDMA, INTEL_MPI)),
    MarketplaceImage("almalinux", "almalinux-hpc", "8-hpc-gen2", EL_8, capabilities=(RDMA, INTEL_MPI, GEN2)),
    MarketplaceImage("almalinux", "almalinux-x86_64", "8-gen1", EL_8),
    MarketplaceImage("almalinux", "almalinux-x86_64", "8-gen2", EL_8, capabilities=(GEN2,)),
    MarketplaceImage("almalinux", "almalinux-x86_64", "9-gen1", EL_9, verified=True),
    MarketplaceImage("almalinux", "almalinux-x86_64", "9-gen2", EL_9, capabilities=(GEN2,)),
    MarketplaceImage("canonical", "0001-com-ubuntu-server-focal", "20_04-lts", UBUNTU_2004, verified=True,
                     end_of_life=_UBUNTU_2004_END_OF_LIFE),
    MarketplaceImage("canonical", "0001-com-ubuntu-server-focal", "20_04-lts-gen2", UBUNTU_2004, verified=True,
                     capabilities=(GEN2,), end_of_life=_UBUNTU_2004_END_OF_LIFE),
    MarketplaceImage("canonical", "0001-com-ubuntu-server-jammy", "22_04-lts", UBUNTU_2204, verified=True,
                     end_of_life=_UBUNTU_2204_END_OF_LIFE),
    MarketplaceImage("canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2", UBUNTU_2204,
                     capabilities=(GEN2,), end_of_life=_UBUNTU_2204_END_OF_LIFE),
    MarketplaceImage("canonical", "ubuntu-24_04-lts", "server", UBUNTU_2404, verified=True, capabilities=(GEN2,)),
    MarketplaceImage("canonical", "ubuntu-24_04-lts", "server-gen1", UBUNTU_2404, verified=True),
    MarketplaceImage("debian", "debian-11", "11", DEBIAN_11, verified=True),
    MarketplaceImage("debian", "debian-11", "11-gen2", DEBIAN_11, capabilities=(GEN2,)),
    MarketplaceImage("debian", "debian-12", "12", DEBIAN_12, verified=True),
    MarketplaceImage("debian", "debian-12", "12-gen2", DEBIAN_12, capabilities=(GEN2,)),
    # Snakemake's Azure Batch executor defaults to this image.
    MarketplaceImage("microsoft-azure-batch", "ubuntu-server-container", "20-04-lts", UBUNTU_2004, verified=True,
                     capabilities=_CONTAINER, end_of_life=_UBUNTU_2004_END_OF_LIFE),
    MarketplaceImage("microsoft-azure-batch", "ubuntu-server-container-rdma", "20-04-lts", UBUNTU_2004,
                     verified=True, capabilities=_CONTAINER_RDMA, end_of_life=_UBUNTU_2004_END_OF_LIFE),
    MarketplaceImage("microsoft-dsvm", "ubuntu-hpc", "2004", UBUNTU_2004, verified=True, capabilities=_HPC,
                     end_of_life=_UBUNTU_2004_END_OF_LIFE),
    MarketplaceImage("microsoft-dsvm", "ubuntu-hpc", "2204", UBUNTU_2204, verified=True, capabilities=_HPC,
                     end_of_life=_UBUNTU_2204_END_OF_LIFE),
    MarketplaceImage("redhat", "rhel", "8_10", EL_8),
    MarketplaceImage("redhat", "rhel", "9_5", EL_9),
    MarketplaceImage("resf", "rockylinux-x86_64", "9-base", EL_9),
)

_BY_KEY = {image.key: image for image in _IMAGES}
_NODE_AGENTS = frozenset(image.node_agent.casefold() for image in _IMAGES)


def supported_images() -> list[dict[str, Any]]:
    """ImageInformation objects in wire format, as `GET /supportedimages` returns them."""
    return [image.to_wire() for image in _IMAGES]


def is_supported_node_agent(sku: str) -> bool:
    return sku.strip().casefold() in _NODE_AGENTS


def is_windows(node_agent: str, image_reference: dict[str, Any]) -> bool:
    """Whether a pool asks for Windows nodes, by its agent SKU or its image's publisher."""
    publisher = image_reference.get("publisher")
    return (node_agent.strip().casefold() == WINDOWS_NODE_AGENT
            or (isinstance(publisher, str) and publisher.strip().casefold() in WINDOWS_PUBLISHERS))


def find_image(image_reference: dict[str, Any]) -> MarketplaceImage | None:
    """The supported image a pool's imageReference names (publisher, offer, sku; any case), or None.

    Any version is accepted: Batch pins `latest` or a specific marketplace version equally.
    """
    publisher, offer, sku = (image_reference.get(key) for key in ("publisher", "offer", "sku"))
    if not (isinstance(publisher, str) and isinstance(offer, str) and isinstance(sku, str)):
        return None
    return _BY_KEY.get((publisher.strip().casefold(), offer.strip().casefold(), sku.strip().casefold()))
