"""The data sets' names and every data choice a flag offers, torch-free so that parsing flags stays fast."""

from __future__ import annotations

DATASET_NAMES = ("malaria", "gender", "folder")
# How a picture becomes the square network input: squash the whole picture (cells,
# which are nearly square), or cut the largest centred square first (aligned faces,
# 178 x 218, whose proportions squashing would distort). A checkpoint records which.
PREPROCESS = ("squash", "center-crop")
# What each data set's preprocessing is unless a flag says otherwise.
DEFAULT_PREPROCESS = {"malaria": "squash", "gender": "center-crop", "folder": "squash"}
SPLITS = ("train", "val", "test")
# "all" is every image of a data set whatever its split: a folder of new cells to score.
SPLIT_CHOICES = (*SPLITS, "all")
# How patient-grouped data sets may be split: by patient (no leak) or by file (a leak, for tiny sets).
SPLIT_BY = ("group", "file")
# --augment: "auto" picks by data set (augment.for_dataset).
AUGMENTATIONS = ("auto", "dihedral", "flip", "faces", "none")
