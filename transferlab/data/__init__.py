"""Data: datasets (built-in and folders), splits, the decoded image cache, batch transforms."""

from .builtin import BUILTINS, load_dataset
from .datasets import DATA_HELP, DataWarning, ImageDataset, load_folder
from .images import IMAGE_EXTENSIONS, allow_large_images, open_rgb
from .splits import make_splits, per_class_subset, stratified_split

__all__ = ["BUILTINS", "DATA_HELP", "DataWarning", "IMAGE_EXTENSIONS", "ImageDataset", "allow_large_images",
           "load_dataset", "load_folder", "make_splits", "open_rgb", "per_class_subset", "stratified_split"]
