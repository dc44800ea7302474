"""Classification head of PYSKL's GCN recognizers (REFERENCE §2.3)."""

import torch.nn as nn


class GCNHead(nn.Module):
    """Average over frames and joints, then over persons, then a linear classifier.

    Input ``(N, M, C, T, V)``, output logits ``(N, num_classes)``. Zero-padded persons are
    included in the person mean, as in PYSKL. ``fc_cls`` is initialised N(0, init_std^2), bias 0.
    """

    def __init__(self, num_classes, in_channels=384, dropout=0.0, init_std=0.01):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.fc_cls = nn.Linear(in_channels, num_classes)
        nn.init.normal_(self.fc_cls.weight, 0, init_std)
        nn.init.constant_(self.fc_cls.bias, 0)

    def forward(self, x):
        x = x.mean(dim=(3, 4)).mean(dim=1)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc_cls(x)
