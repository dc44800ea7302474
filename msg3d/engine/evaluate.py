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
    ensemble sums (the logits themselves for one clip, MS-G3D's Kinetics test).

    ``loader`` is a ``DataLoader``: the outputs are allocated once, for the ``len(loader.sampler)``
    items it can yield (fewer with ``drop_last``), and each batch's rows are copied into them.
    Keeping one small array per batch instead leaves a long-lived allocation among the forward
    pass's short-lived ones after every batch, and the fragmented heap grew the process's RSS
    without bound: by about 30 KB per batch with a narrow model and 400 KB with PYSKL's on CPU,
    far more than the scores kept (``benchmarks/test_memory.py``). RuntimeError if the loader
    yields more items than its sampler's length.
    """
    was_training = model.training
    model.eval()
    capacity = len(loader.sampler)
    probs = np.empty((capacity, model.num_classes), dtype=np.float32)
    logits = np.empty_like(probs)
    done = 0
    try:
        for i, (keypoint, _) in enumerate(loader):
            keypoint = keypoint.to(device, non_blocking=True)
            with autocast(device, amp):
                clips = model.clip_logits(keypoint)
            n = clips.shape[0]
            if done + n > capacity:
                raise RuntimeError(f"the loader yielded more than the {capacity} items of its sampler")
            probs[done:done + n] = clips.softmax(dim=-1).mean(dim=1).cpu().numpy()
            logits[done:done + n] = clips.mean(dim=1).cpu().numpy()
            done += n
            if progress is not None:
                progress(i + 1)
    finally:
        model.train(was_training)
    return (probs[:done], logits[:done]) if with_logits else probs[:done]


def predict_all_ranks(model, loader, device, dist_info, num_items, amp=None):
    """Every rank's predictions gathered and put back into dataset order (PYSKL's padding dropped)."""
    local = predict(model, loader, device, amp)
    return merge_rank_outputs(all_gather_objects(dist_info, local), num_items)
