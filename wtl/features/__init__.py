"""What the network looks for: which channels carry a class, their activation maximisers, their real examples."""
