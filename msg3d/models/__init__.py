"""MS-G3D model, numerically PYSKL's: ``build_model`` returns a ``RecognizerGCN``."""

from msg3d.models.backbone import MIN_BASE_CHANNELS, MSG3D, check_count
from msg3d.models.head import GCNHead
from msg3d.models.recognizer import RecognizerGCN

__all__ = ["MIN_BASE_CHANNELS", "MSG3D", "GCNHead", "RecognizerGCN", "build_model"]


def build_model(num_classes, layout="nturgb+d", in_channels=3, **backbone_kwargs):
    """PYSKL's MSG3D config: ``MSG3D(layout, in_channels, **backbone_kwargs)`` + ``GCNHead(num_classes)``.

    Backbone keywords (PYSKL defaults): ``base_channels=96, num_gcn_scales=13, num_g3d_scales=6,
    num_person=2, tcn_dropout=0.0, window_sizes=(3, 5)``. The head reads ``4 * base_channels``.
    Raises ValueError naming the argument for a network that cannot be built (``num_classes`` < 1,
    ``base_channels`` < ``MIN_BASE_CHANNELS``, ...: see ``MSG3D``).
    """
    check_count("num_classes", num_classes, 1, "outputs of the classifier")
    backbone = MSG3D(layout=layout, in_channels=in_channels, **backbone_kwargs)
    head = GCNHead(num_classes, in_channels=4 * backbone_kwargs.get("base_channels", 96))
    return RecognizerGCN(backbone, head)
