"""Loading IR collections (BEIR folders or ir_datasets) into validated, cached Arrow datasets."""

from distillrank.data.beir import BeirFolder, is_beir_folder, load_beir
from distillrank.data.collection import DATA_DIR_ENV, Collection, CollectionSpec, load_collection
from distillrank.data.irds import IrdsSource, load_irds

__all__ = [
    "DATA_DIR_ENV",
    "BeirFolder",
    "Collection",
    "CollectionSpec",
    "IrdsSource",
    "is_beir_folder",
    "load_beir",
    "load_collection",
    "load_irds",
]
