"""Datasets, P×K batch sampling and image transforms."""
from .datasets import (
    DATASET_URLS,
    DATASETS,
    IMAGE_EXTENSIONS,
    SPLITS,
    DatasetError,
    DecodedImageCache,
    ImageDataset,
    ImageList,
    load_dataset,
    read_cars196,
    read_cub200,
    read_folder,
    read_sop,
)
from .samplers import PKSampler
from .transforms import IMAGENET, NORMALIZATIONS, TF_LITE, Degrade, Normalization, build_transform

__all__ = [
    "DATASETS",
    "DATASET_URLS",
    "IMAGENET",
    "IMAGE_EXTENSIONS",
    "NORMALIZATIONS",
    "SPLITS",
    "TF_LITE",
    "DatasetError",
    "DecodedImageCache",
    "Degrade",
    "ImageDataset",
    "ImageList",
    "Normalization",
    "PKSampler",
    "build_transform",
    "load_dataset",
    "read_cars196",
    "read_cub200",
    "read_folder",
    "read_sop",
]
