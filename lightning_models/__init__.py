"""The PMRF training / inference module and its helpers."""

from .mmse_rectified_flow import MMSERectifiedFlow

__all__ = ["MMSERectifiedFlow"]
