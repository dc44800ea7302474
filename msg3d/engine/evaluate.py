"""Clip-averaged class probabilities over a loader (validation during training, and ``msg3d test``)."""

import numpy as np
import torch

from msg3d.engine.device import autocast
from msg3d.engine.distributed import all_gather_objects
from msg3d.engine.loader import merge_rank_outputs


@torch.no_grad()
def predict(model, loader, device, amp=None, progress=None, with_logits=False):
    """``(n, K)`` float32 probabilities of this process's share of ``loader`` (batches of
    ``(N, num_clips, M, T, V, C)``): softmax per clip, mean over clips (PYSKL's test). With
    ``with_logits``, ``(probs, logits)``: also the clip-averaged logits, the scores MS-G3D's
    ensemble sums (the logits themselves for one clip, MS-G3D's Kinetics test)."""
    was_training = model.training
    model.eval()
    probs, logits = [], []
    try:
        for i, (keypoint, _) in enumerate(loader):
            keypoint = keypoint.to(device, non_blocking=True)
            with autocast(device, amp):
                clips = model.clip_logits(keypoint)
            probs.append(clips.softmax(dim=-1).mean(dim=1).cpu().numpy())
            logits.append(clips.mean(dim=1).cpu().numpy())
            if progress is not None:
                progress(i + 1)
    finally:
        model.train(was_training)
    empty = np.zeros((0, model.num_classes), dtype=np.float32)
    probs, logits = (np.concatenate(out).astype(np.float32, copy=False) if out else empty for out in (probs, logits))
    return (probs, logits) if with_logits else probs


def predict_all_ranks(model, loader, device, dist_info, num_items, amp=None):
    """Every rank's predictions gathered and put back into dataset order (PYSKL's padding dropped)."""
    local = predict(model, loader, device, amp)
    return merge_rank_outputs(all_gather_objects(dist_info, local), num_items)
