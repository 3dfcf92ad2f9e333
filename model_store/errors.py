"""Errors raised by the model store; each names the model and what is wrong."""


class StoreError(Exception):
    """Base class: the store or one of its entries cannot be used."""


class ModelNotFound(StoreError):
    pass


class InvalidManifest(StoreError):
    pass


class DigestMismatch(StoreError):
    pass
