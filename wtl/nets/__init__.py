"""The networks: the original project's two GAP classifiers, and where their blocks begin and end."""
