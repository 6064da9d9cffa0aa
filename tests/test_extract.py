"""One forward pass for all layers equals one truncated model per layer; pooling; bad files."""
import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor

from rcvcore._extract import FeatureExtractor, extract
from rcvcore._shared import resolve_device
from rcvcore.errors import UserError
from rcvcore.models import build_model, get_arch, preprocess_for


@pytest.fixture(scope="module")
def r18():
    arch = get_arch("resnet18")
    model, _ = build_model(arch, "random", seed=0)
    return arch, model


def test_one_pass_equals_truncated_models(r18):
    arch, model = r18
    x = torch.randn(2, 3, 64, 64)
    layers = ["add_1", "add_5", "add_8", "pre_softmax", "softmax"]
    ex = FeatureExtractor(model, arch, layers, channels_last=False)
    out = ex(x)
    for layer in layers[:3]:
        cut = create_feature_extractor(model, {arch.node(layer): "f"}).eval()
        with torch.no_grad():
            ref = cut(x)["f"].mean(dim=(2, 3))
        torch.testing.assert_close(out[layer], ref, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(out["pre_softmax"], logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["softmax"].sum(dim=1), torch.ones(2))


def test_channels_last_gives_the_same_features(r18):
    arch, model = r18
    x = torch.randn(2, 3, 64, 64)
    a = FeatureExtractor(model, arch, ["add_3"], channels_last=True)(x)["add_3"]
    b = FeatureExtractor(model, arch, ["add_3"], channels_last=False)(x)["add_3"]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_extractor_does_not_mutate_the_shared_model(r18):
    arch, model = r18
    before = {k: v.clone() for k, v in model.state_dict().items()}
    FeatureExtractor(model, arch, ["add_2"], channels_last=True)
    assert model.conv1.weight.is_contiguous()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_extract_streams_and_skips_unreadable(scale_folder, r18):
    arch, model = r18
    paths = sorted(str(p) for p in scale_folder.glob("*.png"))[:5]
    bad = scale_folder / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    ex = FeatureExtractor(model, arch, ["add_2", "add_8"])
    out = extract(ex, paths[:2] + [str(bad)] + paths[2:], preprocess_for(arch), batch_size=2)
    assert out.features["add_2"].shape == (5, 64) and out.features["add_8"].shape == (5, 512)
    assert list(out.ok) == [0, 1, 3, 4, 5]
    assert out.failed[0][0] == 2 and "not a readable image" in out.failed[0][1]


def test_inception_trunk_keeps_input_transform():
    arch = get_arch("inception_v3")
    model, _ = build_model(arch, "random")
    ex = FeatureExtractor(model, arch, ["mixed0"], channels_last=False)
    code = ex.body.code
    assert "AuxLogits" not in code and "Mixed_5c" not in code   # nothing after the cut
    assert "mul" in code                                        # transform_input is traced


def test_resolve_device():
    # auto: the first of CUDA, MPS, CPU that this machine has (torch's own answers)
    mps = getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="--device 'gpu0' is not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")
