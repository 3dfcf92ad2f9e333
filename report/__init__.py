"""The measurements behind the README: one module per document under docs/ (`python -m report`)."""
