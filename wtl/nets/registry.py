"""The networks a flag can name, and their knobs' defaults, torch-free so that parsing flags stays fast."""

from __future__ import annotations

# --network: the original project's two (CAM of the last block only, or of every block).
SEED_NETWORKS = ("last", "every")
# torchvision classification networks (`--network` for model_main.py, `--arch` for plain state dicts);
# nets/zoo.py builds them and says where their stages end and what their heads are.
ZOO = (
    "resnet18",
    "resnet34",
    "resnet50",
    "densenet121",
    "vgg11_bn",
    "vgg16_bn",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
)
NETWORKS = (*SEED_NETWORKS, *ZOO)
# The input normalisation a torchvision network expects (ImageNet's channel means and deviations);
# "none" feeds the [0, 1] pixels as they are. A checkpoint of this project records which.
NORMALISATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
# --pretrained: torchvision's published ImageNet weights, or a local file.
PRETRAINED_IMAGENET = "imagenet"
# The original project's dropout: 0.5 before the classifier, 0.2 (whole channels) after blocks 1-3.
# Dropout has no weights, so other rates (model_main's --dropout, --block-dropout) load the same checkpoints.
DROPOUT, BLOCK_DROPOUT = 0.5, 0.2


def is_zoo(name: object) -> bool:
    """Whether `name` is one of the torchvision networks of ZOO."""
    return isinstance(name, str) and name in ZOO
