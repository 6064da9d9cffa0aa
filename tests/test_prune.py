"""Pruning: the cut model computes only layers up to the cut, keeps Inception's input transform,
never modifies the source model, and reports its size and cost."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from rcvcore._extract import FeatureExtractor
from rcvcore.errors import UserError
from rcvcore.models import build_model, count_parameters, get_arch, resolve_backbone
from rcvcore.models.timmnets import timm_spec
from rcvcore.prune import cut_summary, prune


@pytest.fixture(scope="module")
def r18():
    model, _ = build_model("resnet18", "random", seed=0)
    return model


def _x(size=64, seed=0):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_pruned_output_depends_only_on_layers_up_to_cut(r18):
    arch = get_arch("resnet18")
    pruned = prune(r18, arch, "add_4", seed=3).eval()
    # no parameter after the cut is stored
    names = list(pruned.state_dict())
    assert not any(n.startswith(("body.layer3", "body.layer4", "body.fc")) for n in names)
    assert any(n.startswith("body.layer2.1") for n in names)
    # changing every weight after the cut leaves the output unchanged
    other = copy.deepcopy(r18)
    with torch.no_grad():
        for name, p in other.named_parameters():
            if name.startswith(("layer3", "layer4", "fc")):
                p.add_(torch.randn_like(p))
    pruned2 = prune(other, arch, "add_4", seed=3).eval()
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), pruned2(x))
        # ... while a change before the cut does change it
        with torch.no_grad():
            other.layer2[1].conv2.weight.mul_(2.0)
        assert not torch.allclose(pruned(x), prune(other, arch, "add_4", seed=3).eval()(x))


def test_pruned_features_match_reference_extractor(r18):
    arch = get_arch("resnet18")
    pruned = prune(r18, arch, "add_6").eval()
    ref = FeatureExtractor(r18, arch, ["add_6"], channels_last=False)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(pruned.features(x), ref(x)["add_6"], rtol=1e-4, atol=1e-5)
        out = pruned(x)
        torch.testing.assert_close(out, pruned.head(ref(x)["add_6"]), rtol=1e-4, atol=1e-5)
    assert out.shape == (2, 1)


def test_cut_none_is_full_trunk_with_gap(r18):
    """'none' = torchvision's own pooled features (the ImageNet fc dropped)."""
    pruned = prune(r18, "resnet18", "none").eval()
    tv = copy.deepcopy(r18)
    tv.fc = torch.nn.Identity()
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(pruned.features(x), tv(x), rtol=1e-4, atol=1e-5)
    assert count_parameters(pruned) == count_parameters(tv) + 512 + 1


def test_prune_does_not_modify_source(r18):
    before = {k: v.clone() for k, v in r18.state_dict().items()}
    net = prune(r18, "resnet18", "add_3", n_outputs=4)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    after = r18.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not r18.training and hasattr(r18, "fc")
    assert net(_x()).shape == (2, 4)


def test_pruned_model_is_trainable_end_to_end(r18):
    net = prune(r18, "resnet18", "add_4").train()
    net(_x()).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_bad_cut_names_closest_layers(r18):
    with pytest.raises(UserError, match="add_15.*Did you mean"):
        prune(r18, "resnet18", "add_15")
    with pytest.raises(UserError, match="classifier output"):
        prune(r18, "resnet18", "softmax")


def test_cut_summary_counts():
    s = cut_summary("resnet18", "random", "add_4", image_size=64)
    model, _ = build_model("resnet18", "random")
    assert s.classifier_params == count_parameters(model)
    assert s.pruned_params < s.full_params < s.classifier_params
    assert 0 < s.pruned_flops < s.full_flops
    assert 0 < s.params_ratio < 1 and 0 < s.flops_ratio < 1
    assert cut_summary("resnet18", cut="none", image_size=64).flops_ratio == 1.0


@pytest.mark.slow
def test_inception_cut_keeps_input_transform():
    arch = get_arch("inception_v3")
    model, _ = build_model(arch, "random", seed=0)
    net = prune(model, arch, "mixed0").eval()
    assert not any("AuxLogits" in k for k in net.state_dict())
    assert not any(k.startswith("body.Mixed_5c") for k in net.state_dict())
    x = _x(size=299)
    with torch.no_grad():
        # reference: torchvision's own modules, called in order after its input transform
        h = model._transform_input(x)
        for name in ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
                     "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2", "Mixed_5b"]:
            h = getattr(model, name)(h)
        torch.testing.assert_close(net.features(x), h.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)
        # without the transform the features would differ
        h2 = x
        for name in ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
                     "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2", "Mixed_5b"]:
            h2 = getattr(model, name)(h2)
        assert not np.allclose(net.features(x).numpy(), h2.mean(dim=(2, 3)).numpy())


# --- vision transformers (issue 24): patch embed + blocks[:k+1] + final norm + token pooling


def _vit_hooks(model, x, modules):
    out = {}
    hs = [model.get_submodule(m).register_forward_hook(
        lambda mod, i, o, m=m: out.__setitem__(m, o.detach().clone())) for m in modules]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return out


def test_vit_pruned_at_block_k_gives_the_full_models_block_k_normalised_and_pooled():
    spec = timm_spec("vit_tiny_patch16_224", (("img_size", 32), ("depth", 3), ("reg_tokens", 2)))
    model = resolve_backbone(spec, "random").build()
    net = prune(model, spec, "block1", n_outputs=1).eval()
    x = torch.randn(2, 3, 32, 32)
    raw = _vit_hooks(model, x, ["blocks.1"])["blocks.1"]
    with torch.no_grad():
        ref = model.norm(raw)[:, 3:].mean(1)          # the norm, then the patch tokens' mean
        torch.testing.assert_close(net.features(x), ref)
        cls = prune(model, spec, "block1", token_pool="cls").eval().features(x)
        torch.testing.assert_close(cls, model.norm(raw)[:, 0])
    # blocks after the cut are gone; everything left is trainable
    assert not any(k.startswith("body.blocks.2") for k in net.state_dict())
    assert all(p.requires_grad for p in net.parameters())
    net.train()(x).sum().backward()
    assert net.body.patch_embed.proj.weight.grad is not None
    s = cut_summary(spec, cut="block1")
    assert s.pruned_params < s.full_params and 0.4 < s.flops_ratio < 0.9


def test_vit_with_a_pooled_norm_applies_it_after_pooling():
    spec = timm_spec("vit_tiny_patch16_224", (("img_size", 32), ("depth", 2),
                                              ("global_pool", "avg")))
    assert spec.norms == ("", "fc_norm")               # timm: Identity norm, LayerNorm fc_norm
    model = resolve_backbone(spec, "random").build()
    x = torch.randn(2, 3, 32, 32)
    raw = _vit_hooks(model, x, ["blocks.0"])["blocks.0"]
    with torch.no_grad():
        torch.testing.assert_close(prune(model, spec, "block0").eval().features(x),
                                   model.fc_norm(raw[:, 1:].mean(1)))
        full = prune(model, spec, "none").eval().features(x)
        torch.testing.assert_close(full, model.forward_head(model.forward_features(x),
                                                            pre_logits=True))
