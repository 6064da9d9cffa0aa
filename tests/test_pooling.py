"""Pooling by layout (rcvcore.models.pooling): a ViT's tokens, a Swin's NHWC maps and a CNN's NCHW
maps pooled as a hand-written reference (forward hooks on the timm model) pools them."""
import pytest
import torch

from rcvcore._extract import FeatureExtractor, probe_channels
from rcvcore.errors import UserError
from rcvcore.models import resolve_backbone
from rcvcore.models.pooling import pool
from rcvcore.models.timmnets import timm_spec

# tiny random-weights variants of real timm architectures (timm create_model keywords)
VIT = ("vit_tiny_patch16_224", (("img_size", 32), ("depth", 3), ("reg_tokens", 2)))
SWIN = ("swin_tiny_patch4_window7_224", (("img_size", 32), ("depths", (1, 1, 2, 1)),
                                         ("embed_dim", 16), ("num_heads", (1, 1, 1, 1)),
                                         ("window_size", 2)))
CNN = ("resnet18", (("num_classes", 10),))


def _hooked(model, modules, x):
    """Raw outputs of ``modules`` (names) of ``model`` on ``x``, by forward hooks."""
    out = {}
    handles = [model.get_submodule(m).register_forward_hook(
        lambda mod, i, o, m=m: out.__setitem__(m, o.detach().clone())) for m in modules]
    with torch.no_grad():
        logits = model(x)
    for h in handles:
        h.remove()
    return out, logits


def _features(spec, layers, x, token_pool="mean"):
    model = resolve_backbone(spec, "random").build()
    ex = FeatureExtractor(model, spec, layers, channels_last=False, token_pool=token_pool)
    return ex(x), model


def test_vit_tokens_are_pooled_without_prefix_tokens_or_as_class_token():
    spec = timm_spec(*VIT)
    assert spec.layer_names == ["block0", "block1", "block2", "head", "pre_softmax", "softmax"]
    assert spec.prefix_tokens == 3 and spec.class_token          # class + 2 register tokens
    assert spec.layout("block1") == "tokens" and spec.layout("pre_softmax") == "vector"
    x = torch.randn(2, 3, 32, 32)
    layers = ["block0", "block2", "head", "pre_softmax"]
    mean, model = _features(spec, layers, x)
    cls, _ = _features(spec, layers, x, token_pool="cls")
    raw, logits = _hooked(model, ["blocks.0", "blocks.2", "norm"], x)
    assert raw["blocks.0"].shape == (2, 3 + 4, 192)              # 3 prefix + 2x2 patches
    for layer, module in [("block0", "blocks.0"), ("block2", "blocks.2"), ("head", "norm")]:
        torch.testing.assert_close(mean[layer], raw[module][:, 3:].mean(1))
        torch.testing.assert_close(cls[layer], raw[module][:, 0])
        assert mean[layer].shape == (2, 192)
    torch.testing.assert_close(mean["pre_softmax"], logits)


def test_swin_nhwc_maps_are_averaged_over_height_and_width():
    spec = timm_spec(*SWIN)
    assert spec.layer_names[:5] == ["stage0.0", "stage1.0", "stage2.0", "stage2.1", "stage3.0"]
    assert spec.layout("stage2.1") == "nhwc"
    x = torch.randn(2, 3, 32, 32)
    feats, model = _features(spec, ["stage1.0", "stage3.0", "head"], x)
    raw, _ = _hooked(model, ["layers.1.blocks.0", "layers.3.blocks.0", "norm"], x)
    for layer, module in [("stage1.0", "layers.1.blocks.0"), ("stage3.0", "layers.3.blocks.0"),
                          ("head", "norm")]:
        h, w, c = raw[module].shape[1:]
        assert feats[layer].shape == (2, c) and h == w
        torch.testing.assert_close(feats[layer], raw[module].mean(dim=(1, 2)))
    # the channel count the `layers` command shows is the stage's width, not the map's width
    assert probe_channels(spec)["stage3.0"] == 128


def test_cnn_maps_keep_global_average_pooling():
    spec = timm_spec(*CNN)
    assert spec.layout("add_3") == "nchw" and not spec.has_tokens
    x = torch.randn(2, 3, 64, 64)
    feats, model = _features(spec, ["add_3", "add_8"], x)
    # add_k is the residual sum before the block's last ReLU: the input of its act2
    sums = {}
    handles = [model.get_submodule(m).register_forward_pre_hook(
        lambda mod, i, m=m: sums.__setitem__(m, i[0].detach().clone()))
        for m in ("layer2.0.act2", "layer4.1.act2")]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    torch.testing.assert_close(feats["add_3"], sums["layer2.0.act2"].mean(dim=(2, 3)))
    torch.testing.assert_close(feats["add_8"], sums["layer4.1.act2"].mean(dim=(2, 3)))
    assert feats["add_3"].shape == (2, 128) and feats["add_8"].shape == (2, 512)


def test_a_shape_that_does_not_fit_its_layout_is_refused_with_layer_and_shape():
    tokens = torch.zeros(2, 5, 8)
    with pytest.raises(UserError, match=r"Layer 'blocks_1' outputs shape \(2, 5, 8\).*nchw"):
        pool(tokens, "nchw", layer="blocks_1")
    with pytest.raises(UserError, match=r"shape \(2, 8, 4, 4\).*tokens"):
        pool(torch.zeros(2, 8, 4, 4), "tokens", layer="block0", prefix_tokens=1)


def test_a_token_model_without_known_layout_is_refused_not_flattened():
    # MLP-Mixer emits (batch, tokens, channels) but declares no token layout: refused by name
    spec = timm_spec("mixer_s16_224", (("img_size", 32),))
    with pytest.raises(UserError, match=r"Layer '\w+' outputs shape \(1, 4, 512\)"):
        probe_channels(spec)


def test_cls_pooling_needs_a_class_token():
    spec = timm_spec("vit_tiny_patch16_224", (("img_size", 32), ("depth", 1),
                                              ("class_token", False), ("global_pool", "avg")))
    assert spec.prefix_tokens == 0 and not spec.class_token
    model = resolve_backbone(spec, "random").build()
    with pytest.raises(UserError, match="has no class token; use --token-pool mean"):
        FeatureExtractor(model, spec, ["block0"], token_pool="cls")
