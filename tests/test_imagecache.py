import numpy as np
import pytest
import torch

from transferlab.data import load_dataset
from transferlab.data.imagecache import build_image_cache, cache_path, cache_side
from transferlab.data.transforms import eval_batch, train_batch
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
