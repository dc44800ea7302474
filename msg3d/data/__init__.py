"""Data: raw NTU conversion, PYSKL pickle import, modality derivation, stores and datasets.

Import the modules themselves (``msg3d.data.dataset.SkeletonDataset``): this package file stays
empty, so that torch-free stages (``convert-ntu``) never load the torch-based dataset.
"""
