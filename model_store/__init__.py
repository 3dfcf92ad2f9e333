"""The contract between training and serving: trained networks with their manifests."""

from model_store.data import data_root
from model_store.errors import DigestMismatch, InvalidManifest, ModelNotFound, StoreError
from model_store.manifest import Manifest
from model_store.store import SHIPPED_ROOT, ModelStore

__all__ = ["DigestMismatch", "InvalidManifest", "Manifest", "ModelNotFound", "ModelStore",
           "SHIPPED_ROOT", "StoreError", "data_root"]
