"""Dataset readers (which files), image files on disk (``imagefiles``: list a folder, thumbnails), image decoding
(pixels), P×K batch sampling and image transforms."""
from .datasets import (
    DATASET_URLS,
    DATASETS,
    IMAGE_EXTENSIONS,
    SPLITS,
    DatasetError,
    ImageList,
    is_label_free,
    load_dataset,
    read_cars196,
    read_cub200,
    read_folder,
    read_photos,
    read_sop,
)
from .images import DecodedImageCache, ImageDataset, decode_rgb
from .samplers import PKSampler, RandomBatchSampler
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
    "RandomBatchSampler",
    "build_transform",
    "decode_rgb",
    "is_label_free",
    "load_dataset",
    "read_cars196",
    "read_cub200",
    "read_folder",
    "read_photos",
    "read_sop",
]
