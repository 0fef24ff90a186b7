"""Pictures: heatmaps over images, charts of the numbers, the features figures and the HTML report."""
