"""Measuring maps and models: stain masks, the pointing game, faithfulness, agreement, classification, sanity."""
