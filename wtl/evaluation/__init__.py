"""Evaluating a model and its maps: the driver, its typed result, galleries, comparing models, Gender100."""
