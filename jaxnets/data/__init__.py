"""Data: sources → the one preprocessing path → fixed-shape batches (and augmentation for training)."""

from .augment import PRESETS as AUGMENT_PRESETS
from .augment import AugmentSpec, augment_batch, get_augment
from .loader import Loader, decode_all, epoch_order
from .preprocess import ImageError, PreprocessSpec, preprocess, standardize, to_pixels
from .sources import (
    Dataset,
    Splits,
    digits,
    from_arrays,
    idx_folder,
    image_folder,
    labelled_by_filename,
    load_dataset,
    read_idx,
    split_dataset,
    stratified_split,
    tfds_splits,
)

__all__ = [
    "AUGMENT_PRESETS", "AugmentSpec", "Dataset", "ImageError", "Loader", "PreprocessSpec", "Splits",
    "augment_batch", "decode_all", "digits", "epoch_order", "from_arrays", "get_augment", "idx_folder",
    "image_folder", "labelled_by_filename", "load_dataset", "preprocess", "read_idx", "split_dataset",
    "standardize", "stratified_split", "tfds_splits", "to_pixels",
]
