"""Backbone + head, with PYSKL's multi-clip test-time averaging (REFERENCE §2.1)."""

import torch
import torch.nn as nn


class RecognizerGCN(nn.Module):
    """Skeleton action recognizer: ``cls_head(backbone(x))``.

    ``forward`` takes ``(N, M, T, V, C)`` and returns logits ``(N, num_classes)``;
    ``predict_probs`` takes ``(N, num_clips, M, T, V, C)`` and returns the clip-averaged softmax
    probabilities ``(N, num_classes)``; ``clip_logits`` the logits of every clip.
    """

    def __init__(self, backbone, cls_head):
        super().__init__()
        self.backbone = backbone
        self.cls_head = cls_head

    @property
    def layout(self):
        return self.backbone.layout

    @property
    def num_classes(self):
        return self.cls_head.fc_cls.out_features

    def forward(self, x):
        return self.cls_head(self.backbone(x))

    @torch.no_grad()
    def clip_logits(self, x):
        """Logits of every clip: ``(N, num_clips, M, T, V, C)`` -> float32 ``(N, num_clips, num_classes)``.

        Runs the clips of all samples as one batch; call it in eval mode.
        """
        if x.dim() != 6:
            raise ValueError(f"clip_logits expects (N, num_clips, M, T, V, C), got shape {tuple(x.shape)}")
        n, num_clips = x.shape[:2]
        return self(x.reshape((n * num_clips,) + x.shape[2:])).float().view(n, num_clips, -1)

    @torch.no_grad()
    def predict_probs(self, x):
        """PYSKL ``average_clips='prob'``: softmax over classes per clip, then mean over clips."""
        return self.clip_logits(x).softmax(dim=-1).mean(dim=1)
