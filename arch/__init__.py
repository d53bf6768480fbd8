"""Networks used by PMRF: HDiT (the flow's velocity network) and SwinIR (the posterior-mean predictor)."""

from .attention import last_backend, natten_available, neighborhood_attention, resolve_backend
from .configs import NAMED_CONFIGS, create_arch, load_arch_config
from .hdit import HDiT

__all__ = [
    "HDiT",
    "NAMED_CONFIGS",
    "create_arch",
    "last_backend",
    "load_arch_config",
    "natten_available",
    "neighborhood_attention",
    "resolve_backend",
]
