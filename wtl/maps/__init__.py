"""The maps: exact CAMs, the Grad-CAM family, fusing block maps, one registry of methods, and `explain`."""
