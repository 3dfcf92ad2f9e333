"""The inference service: serves the transform networks of `model_store/` over HTTP, batched."""
