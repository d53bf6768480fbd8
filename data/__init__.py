"""Datasets and transforms: image folders degraded on the fly."""

from .image_folder import BadImagesError, ImageFolderDataset, scan_images
from .transforms import make_transform

__all__ = ["BadImagesError", "ImageFolderDataset", "make_transform", "scan_images"]
