"""ResNet18 for 32x32 CIFAR images, written in plain torch (torchvision is not a dependency).

Inputs are pixels in [0, 1]; normalization is the model's first layer, so perturbations and
attacks live in pixel space. The 512-d pooled features go through a 512->128 embedding layer
(the write-up's "last layer reduced to 128") and a 128->10 head.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robust_cifar.errors import InputError, absent, get_back
from robust_cifar.outputs import atomic_path
from robust_cifar.params import BELOW_ONE, Params, bounded_int

# Per-channel statistics of the CIFAR-10 training images (pixel units).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class ModelConfig:
    width: int           # channels of the first stage (64 = the standard ResNet18)
    embedding_dim: int
    dropout: float       # after every batch norm (0 = the standard ResNet18)

    @classmethod
    def from_params(cls, params: Params) -> "ModelConfig":
        return cls(width=params.value("model.width", bounded_int(1, 512, "channels of the first stage; ResNet18 has 64")),
                   embedding_dim=params.value("model.embedding_dim", bounded_int(1, 4_096, "the study uses 128")),
                   dropout=params.value("model.dropout", BELOW_ONE))

    def build(self, num_classes: int) -> "CifarResNet18":
        return CifarResNet18(num_classes=num_classes, **asdict(self))


class Normalize(nn.Module):
    def __init__(self, mean=CIFAR_MEAN, std=CIFAR_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int, dropout: float) -> nn.Sequential:
    """conv -> batch norm -> dropout (the original notebook put dropout after every batch norm)."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
              nn.BatchNorm2d(out_channels)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float):
        super().__init__()
        self.first = conv_bn(in_channels, out_channels, 3, stride, dropout)
        self.second = conv_bn(out_channels, out_channels, 3, 1, dropout)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = conv_bn(in_channels, out_channels, 1, stride, dropout) if needs_projection else nn.Identity()

    def forward(self, x):
        out = F.relu(self.first(x))
        return F.relu(self.second(out) + self.shortcut(x))


def resnet18_trunk(width: int = 64, dropout: float = 0.0) -> nn.Sequential:
    """3x3 stride-1 stem (no max-pool), BasicBlocks [2,2,2,2] at width x (1,2,4,8), global average pool."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    in_channels = width
    for stage, multiplier in enumerate((1, 2, 4, 8)):
        out_channels = width * multiplier
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(in_channels, out_channels, stride, dropout))
            in_channels = out_channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


class CifarResNet18(nn.Module):
    def __init__(self, width: int = 64, embedding_dim: int = 128, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        self.normalize = Normalize()
        self.trunk = resnet18_trunk(width, dropout)
        self.embedding = nn.Linear(8 * width, embedding_dim)
        self.head = nn.Linear(embedding_dim, num_classes)
        self.config = dict(width=width, embedding_dim=embedding_dim, num_classes=num_classes, dropout=dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The un-normalized embedding (what the head sees)."""
        return self.embedding(self.trunk(self.normalize(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Head logits: the decision path of the baseline and adversarial models."""
        return self.head(self.features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalized embedding: what the angular loss, the 3-NN and UMAP work on."""
        return F.normalize(self.features(x).float(), dim=1)

    def embed_and_classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return F.normalize(features.float(), dim=1), self.head(features)


CONFIG_KEYS = ("width", "embedding_dim", "num_classes", "dropout")
NORMALIZATION = ("normalize.mean", "normalize.std")   # buffers of fixed CIFAR constants, never trained


def save_model(model: CifarResNet18, path: str | Path, **metadata) -> None:
    """A state_dict plus the constructor arguments: plain tensors and numbers, loadable with weights_only=True."""
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    with atomic_path(path) as partial:
        torch.save({"state_dict": state, "config": dict(model.config), "metadata": metadata}, partial)


def load_model(path: str | Path, device: torch.device | str = "cpu", expect: ModelConfig | None = None,
               num_classes: int | None = None, run: tuple[str, int] | None = None) -> tuple[CifarResNet18, dict]:
    """The model saved at `path`, in eval mode. Anything but a checkpoint written by `save_model` is refused
    with a one-line InputError; nothing but tensors and plain values is ever unpickled (weights_only).
    So is a checkpoint of another model than the caller's: `expect` (params.yaml's model section) and
    `num_classes` (the data's), where given, must be what it was built with, and `run` (method, seed) the
    run its metadata names (another run's model copied over this one's is otherwise a well-formed file)."""
    path = Path(path)
    redo = get_back(path, _stage_of(path))
    if not path.is_file():
        raise absent(path, _stage_of(path), what="model checkpoint ")
    if not zipfile.is_zipfile(path):   # torch.save writes a zip: this is text, a git-lfs pointer, a page, a fragment
        raise InputError(f"{path} is not a readable checkpoint (not the zip archive torch.save writes: a text file, "
                         f"a git-lfs pointer or a truncated copy?): {redo}")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()   # torch.load reads the records without their CRC-32s: a flipped bit loads
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:   # a damaged directory or record header
        raise InputError(f"{path} is not a readable checkpoint ({type(error).__name__}; truncated or corrupt?): "
                         f"{redo}") from None
    if damaged:
        raise InputError(f"{path} is damaged (its record {damaged.split('/', 1)[-1]} fails its checksum): remake it "
                         f"with `dvc repro -f -s {_stage_of(path)}` (a `dvc checkout` may restore the same damaged "
                         "copy from DVC's cache)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's message suggests weights_only=False, which is the wrong advice for a file that tries
        # to unpickle more than tensors: it could run code.
        raise InputError(f"{path} holds objects other than tensors and plain values, so it was not loaded "
                         f"(it may be malicious): {redo}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError, TypeError,
            AssertionError) as error:   # what torch's reader raises on damaged bytes inside the zip
        raise InputError(f"{path} is not a readable checkpoint ({type(error).__name__}; truncated or corrupt?): {redo}") from None
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("config"), dict)
            and set(checkpoint["config"]) == set(CONFIG_KEYS) and isinstance(checkpoint.get("state_dict"), dict)):
        raise InputError(f"{path} is not a checkpoint of this project (no model config and weights): {redo}")
    mismatches = config_mismatches(checkpoint["config"], expect, num_classes)
    if mismatches:
        raise InputError(f"{path} has {'; '.join(mismatches)}: {redo}")
    metadata = checkpoint.get("metadata") if isinstance(checkpoint.get("metadata"), dict) else {}
    if run is not None and (metadata.get("method"), metadata.get("seed")) != tuple(run):
        raise InputError(f"{path} holds the model of {metadata.get('method')}-{metadata.get('seed')} (its metadata), "
                         f"not of {run[0]}-{run[1]}: {redo}")
    nonfinite = [key for key, value in checkpoint["state_dict"].items()
                 if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]
    if nonfinite:   # training refuses to write such a model, and its embeddings would score chance
        raise InputError(f"{path} has NaN or infinite weights (in {len(nonfinite)} tensor{'s' * (len(nonfinite) > 1)}, "
                         f"{nonfinite[0]} first): {redo}")
    try:
        model = CifarResNet18(**checkpoint["config"])
        unlike = unlike_training(checkpoint["state_dict"], model.state_dict())
        if unlike:   # load_state_dict would cast other dtypes silently, and take any normalization constants
            raise InputError(f"{path} {unlike}, which no training writes: {redo}")
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, TypeError, ValueError) as error:
        # torch's first line is a heading ("Error(s) in loading state_dict for CifarResNet18:"): the next says what
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
        first = lines[1] if lines[0].endswith(":") and len(lines) > 1 else lines[0]
        first = first if len(first) <= 160 else f"{first[:157]}..."
        raise InputError(f"{path}: its weights do not match its model config ({first}): {redo}") from None
    model.eval()
    with torch.no_grad():   # finite weights can still give NaN (a negative batch-norm variance): embeddings,
        probe = model(torch.full((1, 3, 32, 32), 0.5))   # scores and attacks would all be chance, unsaid
    if not torch.isfinite(probe).all():
        raise InputError(f"{path} gives NaN or infinite outputs on a grey image (finite weights: a negative batch-norm "
                         f"variance, or values too large), which no training writes: {redo}")
    return model.to(device), metadata


def unlike_training(state: dict, fresh: dict) -> str | None:
    """How a checkpoint's tensors differ from what `save_model` writes for its config (`fresh`: a new model's
    state_dict), in words; None where they do not: another dtype (float16 weights, an int64 running_var) or
    normalization constants other than the model's fixed ones."""
    for key, value in state.items():
        if key in fresh and isinstance(value, torch.Tensor) and value.dtype != fresh[key].dtype:
            return f"stores {key} as {value.dtype}, not {fresh[key].dtype}"
    for key in NORMALIZATION:
        if isinstance(state.get(key), torch.Tensor) and not torch.equal(state[key], fresh[key]):
            return f"has another {key} than the model's fixed {[round(x, 4) for x in fresh[key].flatten().tolist()]}"
    return None


# how a message names each key of a checkpoint's config
CONFIG_WORDS = {"width": "width {}", "embedding_dim": "embedding size {}", "dropout": "dropout {}",
                "num_classes": "{} classes"}


def config_mismatches(config: dict, expect: ModelConfig | None, num_classes: int | None) -> list[str]:
    """How a checkpoint's config differs from params.yaml's model section and the data's class count:
    ["5 classes, the data 10", ...]."""
    expected = {key: (value, f"params.yaml's model.{key}") for key, value in asdict(expect).items()} if expect else {}
    if num_classes is not None:
        expected["num_classes"] = (num_classes, "the data")
    shown = lambda held, value: held if type(held) is type(value) else repr(held)   # "4" against 4 reads as equal
    return [f"{CONFIG_WORDS[key].format(shown(config[key], value))}, {source} {value}"
            for key, (value, source) in expected.items() if config[key] != value]


def _stage_of(path: Path) -> str:
    return f"train@{path.stem}"
