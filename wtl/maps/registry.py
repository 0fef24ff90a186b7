"""The one list of map methods and fusion rules, by name: the CLI's choices and the library's dispatch read it.

Only the standard library here, so that parsing a command line needs no torch. The math
behind each name lives in cam.py, gradcam.py and fusion.py; `methods.py` dispatches on these
names, and a test checks that every name here has its implementation there.
"""

from __future__ import annotations

# method -> what it is. "cam" is exact for a GAP head; the others are the Grad-CAM family.
METHODS: dict[str, str] = {
    "cam": "Class Activation Map: exact for a global-average-pooling head (per-pixel evidence for the class)",
    "gradcam": "Grad-CAM (Selvaraju et al.): channels weighted by the mean gradient, ReLU'd",
    "gradcam++": "Grad-CAM++ (Chattopadhay et al.): pixel-wise weights from higher-order terms",
    "xgradcam": "XGrad-CAM (Fu et al.): channels weighted by the activation-normalised gradient",
    "layercam": "LayerCAM (Jiang et al.): every position weighted by its own positive gradient",
    "hirescam": "HiResCAM (Draelos and Carin): gradient times activation, signed",
    "scorecam": "Score-CAM (Wang et al.): channels weighted by the class score of the image they mask (no gradient)",
}
DEFAULT_METHOD = "cam"
# Methods whose maps are signed (evidence against the class shows as negative): drawn on a diverging scale.
SIGNED_METHODS = ("cam", "hirescam")

# --scale: one colour scale per model (the sidecar's, names.scale_file), or each picture stretched to its own range.
SCALES: dict[str, str] = {
    "model": "one scale per model, measured on its test split (CAM in log-odds): a faint map means weak evidence",
    "image": "each picture's map stretched to its own minimum and maximum (every map looks equally strong)",
}
# Chosen by measurement (README, "One scale per model"): under "image" a healthy cell's picture is as
# bright as an infected one's; under "model" it is as faint as its evidence, and the pointing game is the same.
DEFAULT_SCALE = "model"
GRADIENT_METHODS = tuple(name for name in METHODS if name != "cam")
# Score-CAM costs a forward pass per channel: it runs only where it is asked for by name.
COSTLY_METHODS = ("scorecam",)

# fusion rule -> what it is (fusion.py has the formulas).
FUSIONS: dict[str, str] = {
    "product": "geometric mean (the product's n-th root) of the normalised block maps",
    "product234": "geometric mean of the normalised maps of blocks 2-4 (block 1 left out)",
    "confidence": "geometric mean of the normalised block maps weighted by each block head's probability of the class",
    "mean": "arithmetic mean of the normalised block maps",
    "mean234": "arithmetic mean of the normalised maps of blocks 2-4",
    "max": "element-wise max of the normalised block maps (the old fused panel)",
}
# Chosen by the pointing game and deletion/insertion on the bundled every-block models (README).
DEFAULT_FUSION = "product"

# The class whose evidence is looked for where no class is named: the parasite, for a cell model.
# evaluate explains it on every cell (and judges its maps against the stain); features shows its channels.
CLASS_OF_INTEREST = "Parasitized"


def class_of_interest(class_names: list[str] | tuple[str, ...]) -> int | None:
    """The index of CLASS_OF_INTEREST among a model's classes, or None for a model without it."""
    return list(class_names).index(CLASS_OF_INTEREST) if CLASS_OF_INTEREST in class_names else None
