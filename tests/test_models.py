"""Registry, layer names of the paper, and the three ways to get weights."""
import os

import pytest
import torch

from rcvcore._extract import probe_channels as channels
from rcvcore.errors import UserError, WeightsUnavailable
from rcvcore.models import ARCHS, build_model, expected_weights_file, get_arch, preprocess_for
from rcvcore.models.tv import tv_weights


def test_paper_layer_names_and_nodes():
    inc = get_arch("inception_v3")
    assert inc.layer_names == [f"mixed{i}" for i in range(11)] + ["pre_softmax", "softmax"]
    assert inc.node("mixed8") == "Mixed_7a" and inc.paper_cut == "mixed8"
    r50 = get_arch("resnet50")
    assert r50.layer_names == [f"add_{i}" for i in range(1, 17)] + ["pre_softmax", "softmax"]
    assert r50.node("add_15") == "layer4.1.add" and r50.paper_cut == "add_15"
    assert r50.node("add_1") == "layer1.0.add" and r50.node("add_16") == "layer4.2.add"
    assert len(ARCHS) >= 8


@pytest.mark.slow
def test_channel_counts_match_the_paper():
    ch = channels("inception_v3")
    assert [ch[f"mixed{i}"] for i in range(11)] == [256, 288, 288] + [768] * 5 + [1280, 2048, 2048]
    ch = channels("resnet50")
    assert [ch[f"add_{i}"] for i in (1, 4, 8, 14, 16)] == [256, 512, 1024, 2048, 2048]
    assert ch["softmax"] == ch["pre_softmax"] == 1000


def test_unknown_names_suggest_closest():
    with pytest.raises(UserError, match="Did you mean 'resnet50'"):
        get_arch("resnet5")
    with pytest.raises(UserError, match="Did you mean 'add_15'"):
        get_arch("resnet50").node("add15")
    with pytest.raises(UserError, match="no probe layer"):
        get_arch("resnet18").resolve_layers("add_1,nope")


def test_random_weights_are_seeded():
    a, info = build_model("resnet18", "random", seed=3)
    b, _ = build_model("resnet18", "random", seed=3)
    c, _ = build_model("resnet18", "random", seed=4)
    assert info.kind == "random" and not a.training
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_imagenet_loads_the_file_torchvision_expects_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    arch = get_arch("resnet18")
    target = expected_weights_file(arch)
    assert target == tmp_path / "hub" / "checkpoints" / os.path.basename(tv_weights(arch).url)
    ref, _ = build_model(arch, "random", seed=11)
    target.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), target)
    model, info = build_model(arch, "imagenet")
    assert info.kind == "imagenet"
    assert torch.equal(model.fc.weight, ref.fc.weight)


def test_inception_imagenet_file_with_aux_head_loads_and_aux_is_dropped(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    arch = get_arch("inception_v3")
    import torchvision

    full = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    target = expected_weights_file(arch)
    target.parent.mkdir(parents=True)
    torch.save(full.state_dict(), target)
    model, _ = build_model(arch, "imagenet")
    assert model.AuxLogits is None and model.transform_input


def test_offline_imagenet_names_the_file_and_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable) as e:
        build_model("resnet50", "imagenet")
    msg = str(e.value)
    assert "resnet50-0676ba61.pth" in msg and str(tmp_path) in msg
    assert "--weights PATH" in msg and "--weights random" in msg


def test_checkpoint_path_and_mismatch(tmp_path):
    ref, _ = build_model("resnet18", "random", seed=5)
    good = tmp_path / "r18.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, good)
    model, info = build_model("resnet18", str(good))
    assert info.kind == "checkpoint" and info.fingerprint.startswith("sha256:")
    assert torch.equal(model.conv1.weight, ref.conv1.weight)

    bad = tmp_path / "bad.pt"
    sd = ref.state_dict()
    sd.pop("fc.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, bad)
    with pytest.raises(UserError, match=r"missing keys: fc\.bias.*unexpected keys: extra\.weight"):
        build_model("resnet18", str(bad))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read as a PyTorch state dict"):
        build_model("resnet18", str(junk))
    with pytest.raises(UserError, match="no such file"):
        build_model("resnet18", str(tmp_path / "missing.pt"))


def test_preprocessing_belongs_to_the_weights():
    assert preprocess_for("inception_v3").crop == 299
    assert preprocess_for("resnet50").crop == 224
    assert preprocess_for("resnet50").resize == 256


class _NotATensor:
    pass


def test_checkpoint_with_python_objects_is_refused_for_safety_and_empty_file_is_named(tmp_path):
    obj = tmp_path / "obj.pt"
    torch.save({"w": torch.zeros(1), "extra": _NotATensor()}, obj)
    with pytest.raises(UserError, match="refuses to unpickle them.*arbitrary code"):
        build_model("resnet18", str(obj))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match=r"empty \(0 bytes\)"):
        build_model("resnet18", str(empty))
