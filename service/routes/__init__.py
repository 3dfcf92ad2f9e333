"""HTTP routes: thin functions over the dependencies and `Inference`."""
