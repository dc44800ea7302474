"""Data: raw NTU conversion, PYSKL pickle import, modality derivation, stores and datasets.

``SkeletonDataset`` is resolved lazily so that torch-free stages (``convert-ntu``) importing
``msg3d.data.ntu_raw`` do not import torch.
"""


def __getattr__(name):
    if name == "SkeletonDataset":
        from msg3d.data.dataset import SkeletonDataset

        return SkeletonDataset
    raise AttributeError(f"module 'msg3d.data' has no attribute {name!r}")
