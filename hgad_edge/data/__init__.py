"""Data in: the MVTec AD folder layout, the one image reader, and the demo dataset with its defects.

``hgad_edge.data.demo`` (scikit-image photographs + synthetic defects) is imported on use.
"""
from hgad_edge.data.images import IMAGE_EXTENSIONS, images_in, images_under, is_image, read_image, read_mask
from hgad_edge.data.mvtec import (GOOD, MASK_SUFFIX, Sample, list_classes, resolve_classes, split_calibration,
                                  test_samples, train_samples)

__all__ = ["IMAGE_EXTENSIONS", "images_in", "images_under", "is_image", "read_image", "read_mask", "GOOD",
           "MASK_SUFFIX", "Sample", "list_classes", "resolve_classes", "split_calibration", "test_samples",
           "train_samples"]
