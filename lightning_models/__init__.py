"""The PMRF training / inference module and its helpers."""

__all__ = ["MMSERectifiedFlow"]


def __getattr__(name: str):
    # Lightning is imported only when the trainer is asked for: `lightning_models.pmrf` and `.flow` (the
    # method alone) load in a fraction of the time.
    if name == "MMSERectifiedFlow":
        from .mmse_rectified_flow import MMSERectifiedFlow

        return MMSERectifiedFlow
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
