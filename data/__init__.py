"""Datasets and transforms: image folders degraded on the fly."""

from .image_folder import ImageFolderDataset
from .transforms import make_transform

__all__ = ["ImageFolderDataset", "make_transform"]
