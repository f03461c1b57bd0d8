import io
import struct
import zipfile

import pytest
import torch
from torch import nn

from robust_cifar.errors import InputError
from robust_cifar.model import CIFAR_MEAN, CIFAR_STD, CifarResNet18, load_model, resnet18_trunk, save_model
from tests.methods import HEAD


pytestmark = pytest.mark.usefixtures("one_thread")


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = CifarResNet18(width=8, embedding_dim=128, dropout=0.1)
    model.train()
    with torch.no_grad():  # move the batch-norm running statistics away from their defaults
        model(images(16, seed=1))
    return model.eval()


def test_output_shapes(small_model):
    x = images(5)
    assert small_model(x).shape == (5, 10)
    assert small_model.features(x).shape == (5, 128)
    embeddings = small_model.embed(x)
    assert embeddings.shape == (5, 128)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(5), atol=1e-5, rtol=0)


def test_embed_and_classify_matches_embed_and_forward_in_eval_mode(small_model):
    x = images(6)
    embeddings, logits = small_model.embed_and_classify(x)
    assert embeddings.shape == (6, 128) and logits.shape == (6, 10)
    torch.testing.assert_close(embeddings, small_model.embed(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(logits, small_model(x), rtol=0, atol=1e-6)


def test_dropout_is_active_in_train_mode_only(small_model):
    x = images(3)
    torch.testing.assert_close(small_model(x), small_model(x), rtol=0, atol=0)  # eval: deterministic
    small_model.train()
    try:
        torch.manual_seed(0)
        first = small_model(x)
        second = small_model(x)
    finally:
        small_model.eval()
    assert not torch.allclose(first, second)


def test_trunk_of_width_64_is_the_standard_cifar_resnet18():
    trunk = resnet18_trunk(64)
    assert count(trunk) == 11_168_832
    assert count(trunk) + count(nn.Linear(512, 10)) == 11_173_962
    model = CifarResNet18(width=64, embedding_dim=128, num_classes=10)
    assert count(model.trunk) == 11_168_832
    assert count(model) == 11_168_832 + (512 * 128 + 128) + (128 * 10 + 10)
    assert count(model.normalize) == 0  # the statistics are buffers, not trained


def test_dropout_adds_no_parameters():
    assert count(resnet18_trunk(64, dropout=0.1)) == 11_168_832


def test_normalization_is_inside_the_model(small_model):
    x = images(4)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        by_hand = small_model.head(small_model.embedding(small_model.trunk((x - mean) / std)))
        unnormalized = small_model.head(small_model.embedding(small_model.trunk(x)))
        torch.testing.assert_close(small_model(x), by_hand, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(small_model(x), unnormalized, atol=1e-3)


def test_cifar_statistics_are_the_usual_ones():
    torch.testing.assert_close(torch.tensor(CIFAR_MEAN), torch.tensor([0.4914, 0.4822, 0.4465]), rtol=0, atol=1e-3)
    torch.testing.assert_close(torch.tensor(CIFAR_STD), torch.tensor([0.2470, 0.2435, 0.2616]), rtol=0, atol=1e-3)


def test_no_max_pool_first_stage_keeps_32x32():
    model = CifarResNet18(width=4).eval()
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in model.modules())
    blocks = [m for m in model.trunk if m.__class__.__name__ == "BasicBlock"]
    assert len(blocks) == 8
    shapes = []
    handles = [block.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:]))) for block in blocks]
    stem_shapes = []
    handles.append(model.trunk[0].register_forward_hook(lambda _m, _i, out: stem_shapes.append(tuple(out.shape[1:]))))
    try:
        with torch.no_grad():
            model(images(2))
    finally:
        for handle in handles:
            handle.remove()
    assert stem_shapes == [(4, 32, 32)]
    assert shapes == [(4, 32, 32), (4, 32, 32), (8, 16, 16), (8, 16, 16),
                      (16, 8, 8), (16, 8, 8), (32, 4, 4), (32, 4, 4)]


def test_narrow_width_works():
    model = CifarResNet18(width=4, embedding_dim=16, num_classes=3).eval()
    assert model.embedding.in_features == 32
    x = images(2)
    assert model(x).shape == (2, 3)
    assert model.embed(x).shape == (2, 16)
    assert count(model.trunk) < count(resnet18_trunk(8))


def test_save_load_round_trip_gives_identical_outputs(small_model, tmp_path):
    path = tmp_path / "nested" / "model.pt"
    save_model(small_model, path, method=HEAD, class_names=["a", "b"])
    loaded, metadata = load_model(path)
    assert metadata == {"method": HEAD, "class_names": ["a", "b"]}
    assert loaded.config == small_model.config
    assert not loaded.training
    x = images(4, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small_model(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.embed(x), small_model.embed(x), rtol=0, atol=0)
    for key, value in small_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_load_model_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(InputError, match=r"not found: restore it with `dvc checkout --force .*absent.pt` \(or `dvc pull --force .*\), or remake it with `dvc repro -f -s train@absent`"):
        load_model(tmp_path / "absent.pt")


class NotATensor:
    def __init__(self, payload):
        self.payload = payload


class SideEffect:
    """Unpickling this opens (creates) a file: what weights_only=True must prevent."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def checkpoint_of(model):
    return {"state_dict": model.state_dict(), "config": dict(model.config)}


def test_load_model_refuses_a_pickled_custom_object(small_model, tmp_path):
    path = tmp_path / "model.pt"
    torch.save({**checkpoint_of(small_model), "metadata": {"extra": NotATensor(42)}}, path)
    with pytest.raises(InputError, match="may be malicious") as error:
        load_model(path)
    assert "weights_only" not in str(error.value)   # never the advice to turn the protection off


def test_load_model_never_runs_pickled_code(small_model, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "model.pt"
    torch.save({**checkpoint_of(small_model), "metadata": SideEffect(marker)}, path)
    with pytest.raises(InputError, match="may be malicious"):
        load_model(path)
    assert not marker.exists()
    # the same file loaded without weights_only would have run the code
    handle = torch.load(path, weights_only=False)["metadata"]
    handle.close()
    assert marker.exists()


def flip_a_weight_bit(checkpoint: bytes) -> bytes:
    """The checkpoint with one bit flipped in the middle of its largest tensor's bytes."""
    with zipfile.ZipFile(io.BytesIO(checkpoint)) as archive:
        largest = max(archive.infolist(), key=lambda info: info.file_size)
    name_length, extra_length = struct.unpack("<HH", checkpoint[largest.header_offset + 26: largest.header_offset + 30])
    where = largest.header_offset + 30 + name_length + extra_length + largest.file_size // 2
    damaged = bytearray(checkpoint)
    damaged[where] ^= 1
    return bytes(damaged)


@pytest.mark.parametrize("damage, words", [
    (lambda path, good: path.write_bytes(good[: len(good) // 2]), "not a readable checkpoint"),
    (lambda path, good: path.write_bytes(b""), "not a readable checkpoint"),
    (lambda path, good: path.write_text("hello\n"), "not a readable checkpoint"),   # once torch's KeyError
    (lambda path, good: path.write_text("h"), "not a readable checkpoint"),   # once torch's IndexError
    (lambda path, good: path.write_text("version https://git-lfs.github.com/spec/v1\n"), "not a readable checkpoint"),
    (lambda path, good: torch.save({"state_dict": {}}, path), "not a checkpoint of this project"),
    (lambda path, good: torch.save([1, 2, 3], path), "not a checkpoint of this project"),
    # one flipped bit in a weight: torch.load would load it; the record's CRC-32 tells
    (lambda path, good: path.write_bytes(flip_a_weight_bit(good)), r"damaged \(its record data/\d+ fails its checksum"),
])
def test_load_model_refuses_damaged_checkpoints_in_one_line(small_model, tmp_path, damage, words):
    good_path = tmp_path / "good.pt"
    save_model(small_model, good_path)
    path = tmp_path / f"{HEAD}.pt"
    damage(path, good_path.read_bytes())
    with pytest.raises(InputError, match=words) as error:
        load_model(path)
    message = str(error.value)
    assert "\n" not in message and f"dvc repro -f -s train@{HEAD}" in message


def test_load_model_refuses_weights_that_do_not_match_the_config(small_model, tmp_path):
    path = tmp_path / f"{HEAD}.pt"
    save_model(small_model, path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"]["embedding_dim"] += 1
    torch.save(checkpoint, path)
    with pytest.raises(InputError, match="weights do not match its model config") as error:
        load_model(path)
    assert "(size mismatch for embedding.weight: copying a param with shape" in str(error.value)   # what, not a heading
    checkpoint["config"]["embedding_dim"] -= 1
    del checkpoint["state_dict"]["head.bias"]
    torch.save(checkpoint, path)
    with pytest.raises(InputError, match=r'\(Missing key\(s\) in state_dict: "head.bias"\.\)'):
        load_model(path)


def test_another_runs_model_under_this_runs_name_is_refused(small_model, tmp_path):
    """`cp models/<reference>-0.pt models/<other>-0.pt; dvc repro -s embed@<other>-0` scored one model as another."""
    path = tmp_path / "models" / "other-0.pt"
    save_model(small_model, path, method=HEAD, seed=0, class_names=["a", "b"])
    assert load_model(path, run=(HEAD, 0))[1]["method"] == HEAD
    for run in (("other", 0), (HEAD, 1)):
        with pytest.raises(InputError, match=rf"holds the model of {HEAD}-0 \(its metadata\), not of {run[0]}-{run[1]}: "
                                             r"restore it with `dvc checkout"):
            load_model(path, run=run)
