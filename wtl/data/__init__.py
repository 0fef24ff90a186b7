"""Data: pictures as tensors, the three data sets, their patient/person-grouped splits, manifests, augmentation."""
