"""Batched inference over a whole split: normalized embeddings and head logits, clean or perturbed."""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from tqdm.auto import tqdm

from robust_cifar.compute import Compute
from robust_cifar.model import CifarResNet18

# (pixels of images [start, stop), start, stop) -> the images the model should see instead
BatchTransform = Callable[[torch.Tensor, int, int], torch.Tensor]

def embed_and_classify(model: CifarResNet18, images: torch.Tensor, compute: Compute, batch_size: int,
                       transform: Optional[BatchTransform] = None,
                       progress: Union[bool, str] = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (N, D) float32 and logits (N, C) float32, on the compute device.

    `images` are uint8 NCHW (on any device). The model is put in eval mode; a transform may take
    gradients (FGM), so only the final forward pass runs without autograd.

    `progress`: a tqdm bar over the images with rate and ETA (a string names the bar); off by default,
    as validation inside training runs this every epoch under training's own bar. The bar disappears
    when the loop ends.
    """
    model.eval()
    embeddings, logits = [], []
    with tqdm(total=len(images), unit="img", unit_scale=True, leave=False, disable=not progress,
              desc=progress if isinstance(progress, str) else "inference") as bar:
        for start in range(0, len(images), batch_size):
            stop = min(start + batch_size, len(images))
            x = compute.images(images[start:stop])
            if transform is not None:
                with compute.autocast():
                    x = transform(x, start, stop)
            with torch.no_grad(), compute.autocast():
                batch_embeddings, batch_logits = model.embed_and_classify(x)
            embeddings.append(batch_embeddings.float())
            logits.append(batch_logits.float())
            bar.update(stop - start)
    return torch.cat(embeddings), torch.cat(logits)
