import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.data import load_dataset
from transferlab.data.imagecache import build_image_cache, build_whole_cache, cache_path, cache_side
from transferlab.data.transforms import crop_params, eval_batch, train_batch
from transferlab.inference.classify import preprocess
from transferlab.models import backbone_spec


def test_cache_built_once_and_reused(class_folders):
    ds = load_dataset(class_folders)
    arr = build_image_cache(ds, 48, quiet=True)
    assert arr.shape == (len(ds), 48, 48, 3) and arr.dtype == np.uint8
    stamp = cache_path(ds, 48, "bicubic").stat().st_mtime_ns
    again = build_image_cache(ds, 48, quiet=True)
    assert cache_path(ds, 48, "bicubic").stat().st_mtime_ns == stamp
    assert isinstance(again, np.memmap) and np.array_equal(arr, again)


def test_cached_eval_matches_direct_preprocessing(class_folders):
    cfg = backbone_spec("efficientnet_lite0", image_size=40).data_config
    ds = load_dataset(class_folders)
    arr = build_image_cache(ds, cache_side(cfg), cfg["interpolation"], quiet=True)
    direct = preprocess(ds.paths[:3], cfg)
    assert torch.allclose(eval_batch(arr[:3], cfg), direct)
    assert direct.shape == (3, 3, 40, 40)


@pytest.mark.parametrize("policy", ["none", "trivial"])
def test_augmentation_is_seeded_and_in_range(class_folders, policy):
    cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 0.875}
    arr = build_image_cache(load_dataset(class_folders), 36, quiet=True)
    a = train_batch(arr[:8], cfg, torch.Generator().manual_seed(1), policy=policy)
    torch.manual_seed(123)  # the policy's draws must not depend on (or disturb) torch's global generator
    b = train_batch(arr[:8], cfg, torch.Generator().manual_seed(1), policy=policy)
    after = torch.rand(1)
    c = train_batch(arr[:8], cfg, torch.Generator().manual_seed(2), policy=policy)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after)
    assert a.shape == (8, 3, 32, 32) and a.min() >= -1.0 and a.max() <= 1.0
    if policy == "trivial":  # the same crops, then an operation on most images
        plain = train_batch(arr[:8], cfg, torch.Generator().manual_seed(1))
        assert not torch.equal(a, plain)


def _striped_pictures(root, n=4):
    """Wide pictures (3:1): a red third, a green third, a blue third, in two class folders."""
    stripes = np.zeros((30, 90, 3), np.uint8)
    stripes[:, :30, 0] = stripes[:, 30:60, 1] = stripes[:, 60:, 2] = 255
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(stripes).save(root / c / f"{i}.png")
    return load_dataset(root)


def test_training_crops_from_the_whole_picture_reach_its_sides(tmp_path):
    ds = _striped_pictures(tmp_path / "data")
    cfg = {"input_size": (3, 24, 24), "mean": (0.0,) * 3, "std": (1 / 255,) * 3, "crop_pct": 0.875}
    centre = build_image_cache(ds, 27, quiet=True)
    whole, aspects = build_whole_cache(ds, 27, quiet=True)
    assert np.allclose(aspects, 3.0) and whole.shape == centre.shape
    gen = torch.Generator().manual_seed(0)
    from_centre = torch.cat([train_batch(centre, cfg, gen) for _ in range(10)])
    from_whole = torch.cat([train_batch(whole, cfg, gen, aspects=torch.from_numpy(aspects)) for _ in range(10)])
    # The centre square of a 3:1 picture is its green third: crops of it never see red or blue;
    # crops of the whole picture do, on both sides.
    reddish = lambda x: (x[:, 0] > 128).flatten(1).any(1)  # noqa: E731
    blueish = lambda x: (x[:, 2] > 128).flatten(1).any(1)  # noqa: E731
    assert not reddish(from_centre).any() and not blueish(from_centre).any()
    assert reddish(from_whole).float().mean() > 0.2 and blueish(from_whole).float().mean() > 0.2
    # Built once: the second call reads the same arrays back.
    again, aspects_again = build_whole_cache(ds, 27, quiet=True)
    assert np.array_equal(again, whole) and np.array_equal(aspects_again, aspects)


def test_whole_picture_crops_keep_the_originals_proportions():
    side, n = 100, 2000
    aspects = torch.full((n,), 2.0)
    u = torch.rand(n, 5, generator=torch.Generator().manual_seed(0))
    boxes, _ = crop_params(u, side, scale=(0.1, 0.3), ratio=(0.8, 1.25), aspects=aspects)
    w, h = (boxes[:, 2] - boxes[:, 0]) * 2.0, boxes[:, 3] - boxes[:, 1]  # in the original's pixels
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= side).all()
    area = w * h / (2.0 * side * side)
    assert area.min() > 0.09 and area.max() < 0.31  # of the whole picture, up to rounding to whole pixels
    assert (w / h).min() > 0.75 and (w / h).max() < 1.33
    # A square picture is the square: the same boxes as without aspects.
    assert torch.equal(crop_params(u, side, aspects=torch.ones(n))[0], crop_params(u, side)[0])
