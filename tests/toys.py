"""Tiny models trained in a second, for tests that need a model whose gradients mean something."""
import torch
import torch.nn.functional as F


def fit(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int, lr: float) -> torch.nn.Module:
    """Full-batch Adam on cross-entropy; returns the net in eval mode with no gradients left behind."""
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        F.cross_entropy(net(images), labels).backward()
        optimiser.step()
    net.eval()
    for parameter in net.parameters():
        parameter.grad = None
    return net


class TinyEmbedder(torch.nn.Module):
    """The CifarResNet18 interface in miniature: `embed` gives unit-length embeddings, `forward` head
    logits, `embed_and_classify` both."""

    def __init__(self, dim: int = 16, num_classes: int = 10):
        super().__init__()
        self.trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                                         torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, dim))
        self.head = torch.nn.Linear(dim, num_classes)

    def embed(self, x):
        return F.normalize(self.trunk(x).float(), dim=1)

    def forward(self, x):
        return self.head(self.trunk(x))

    def embed_and_classify(self, x):
        features = self.trunk(x)
        return F.normalize(features.float(), dim=1), self.head(features)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
