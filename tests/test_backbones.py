import pytest
import torch
from PIL import Image

from transferlab.cli import main
from transferlab.core.errors import BackboneError
from transferlab.models import create_backbone, weights


@pytest.mark.parametrize("variant,size", [(0, 224), (1, 240), (2, 260)])
def test_lite_weights_match_reference_implementation(variant, size):
    from efficientnet_lite_pytorch import EfficientNet

    from transferlab.models.lite_weights import lite_weights_path

    ours = create_backbone(f"efficientnet_lite{variant}").model.eval()
    ref = EfficientNet.from_pretrained(f"efficientnet-lite{variant}",
                                       weights_path=str(lite_weights_path(variant))).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(variant))
    with torch.no_grad():
        diff = (ours(x) - ref(x)).abs().max().item()
    assert diff < 1e-4


def test_lite_state_dict_maps_every_key():
    import timm

    from transferlab.models.lite_weights import lite_weights_path, map_lite_state_dict

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(lite_weights_path(0), map_location="cpu", weights_only=True)
    mapped = map_lite_state_dict(state, model)
    assert set(mapped) == set(model.state_dict())
    result = model.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_classify_coffee_is_espresso(tmp_path, capsys):
    from skimage.data import coffee

    path = tmp_path / "coffee.jpg"
    Image.fromarray(coffee()).save(path)
    assert main(["classify", str(path), "--json"]) == 0
    import json

    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert top[0]["label"] == "espresso" and top[0]["prob"] > 0.8


FAMILIES = ["efficientnet_lite0", "timm:mobilenetv3_large_100", "timm:resnet50", "tv:resnet50", "tv:vgg19",
            "tv:efficientnet_b0", "tv:mobilenet_v3_large", "timm:vit_tiny_patch16_224"]


@pytest.mark.parametrize("name", FAMILIES)
def test_groups_partition_parameters_in_forward_order(name):
    bb = create_backbone(name, pretrained=False)
    head = {id(p) for p in bb.classifier.parameters()}
    body = [p for p in bb.model.parameters() if id(p) not in head]
    grouped = [id(p) for g in bb.groups for p in g.params]
    assert len(grouped) == len(set(grouped)), "a parameter is in two groups"
    assert set(grouped) == {id(p) for p in body}, "groups do not cover the backbone"
    assert len(bb.groups) >= 3

    # Forward order: the first call of any module of group k comes after those of group k-1.
    first_call: dict[int, int] = {}
    counter = iter(range(10**9))
    owner = {id(m): k for k, g in enumerate(bb.groups) for top in g.modules for m in top.modules()}

    def record(mod, _inputs):
        first_call.setdefault(owner[id(mod)], next(counter))

    hooks = [m.register_forward_pre_hook(record) for m in bb.model.modules() if id(m) in owner]
    size = bb.data_config["input_size"][-1]
    with torch.no_grad():
        feats = bb.model.eval().forward_head(bb.model.forward_features(torch.randn(1, 3, size, size)),
                                             pre_logits=True)
    for h in hooks:
        h.remove()
    assert feats.shape == (1, bb.num_features)
    order = [first_call[k] for k in range(len(bb.groups))]
    assert order == sorted(order)


def test_sequential_groups_compose_forward_features():
    bb = create_backbone("efficientnet_lite0", pretrained=False)
    assert bb.sequential
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        full = bb.model.eval().forward_features(x)
        half = bb.model.forward_features(x, stop=4)
        assert torch.equal(bb.model.forward_features(half, start=4), full)


def test_offline_download_error_names_offline_backbones(monkeypatch):
    monkeypatch.setattr(weights, "reachable", lambda host, timeout=3.0: False)
    with pytest.raises(BackboneError, match="no network.*efficientnet_lite0"):
        create_backbone("timm:resnet50", pretrained=True)
    with pytest.raises(BackboneError, match="no network"):
        create_backbone("tv:vgg19", pretrained=True)


def test_cli_offline_error_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(weights, "reachable", lambda host, timeout=3.0: False)
    assert main(["classify", "--backbone", "timm:resnet50", "x.jpg"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no network" in err


def test_unknown_backbone_suggests_names():
    with pytest.raises(BackboneError, match="efficientnet_lite0"):
        create_backbone("efficientnet_lite9")


def test_backbones_table_lists_offline_weights(capsys):
    assert main(["backbones", "--json"]) == 0
    import json

    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["efficientnet_lite0"]["offline"] is True
    assert {"tv:vgg19", "timm:resnet50", "timm:inception_resnet_v2"} <= set(rows)
