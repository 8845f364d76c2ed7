"""Duplicate images: the same decoded pixels (exact copies) and near copies (re-encoded, resized,
slightly cropped or mirrored), found on the image cache's squares and the pretrained features.

Candidate pairs come from two cheap signals: a perceptual hash (the signs of the 8 x 8 lowest
frequencies of the discrete cosine transform of a 32 x 32 grey thumbnail, against their median; a
mirror has the same coefficients with every odd horizontal frequency negated, so the mirror's hash
comes free) and the cosine of the pretrained features. Each candidate is then checked on pixels: the
best normalised correlation of grey thumbnails under the scalings, shifts and mirror a copy may have
(template matching). Neither signal alone separates a 10%-cropped copy from two close-ups of
different sunflowers on flower_photos; their sum does (``COPY_SCORE``, measured with
benchmarks/audit.py: README).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.arrays import unit_rows

HASH_SIDE = 32  # the grey thumbnail the DCT is taken of
HASH_FREQS = 8  # the lowest HASH_FREQS x HASH_FREQS frequencies make the 64-bit hash
NEAR_BITS = 10  # perceptual hashes this many bits (of 64) apart, or fewer, make a candidate pair
CANDIDATE_COSINE = 0.8  # so do pretrained features at least this alike
COPY_SCORE = 1.78  # aligned pixel correlation + feature cosine from which a candidate is a copy
MIN_CORRELATION = 0.85  # the least pixel correlation of a copy (10%-cropped copies: 0.866 and up)
HASHED_CORRELATION = 0.98  # or the pixel correlation from which a pair with near hashes is (copies: 0.9996+)
THUMB_SIDE = 48
MIN_SIDE = 32  # px: smaller images have too little detail to tell a near copy from a look-alike
ALIGN_SCALES = (0.87, 0.93, 1.0, 1.07, 1.14)


@dataclass(frozen=True)
class DuplicatePair:
    """Images ``first`` < ``second`` are copies: ``exact`` (equal decoded squares) or near, with
    ``similarity`` the mean of their aligned pixel correlation and feature cosine (1 for exact)."""

    first: int
    second: int
    exact: bool
    similarity: float


def pixel_digests(squares: Iterable[np.ndarray]) -> list[bytes]:
    """A digest of each decoded square: equal digests, equal pixels."""
    return [hashlib.blake2b(np.ascontiguousarray(s).tobytes(), digest_size=16).digest() for s in squares]


GREY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights


def grey_batches(squares: np.ndarray, indices: np.ndarray, batch: int = 128) -> Iterator[torch.Tensor]:
    """The squares ``indices`` (of ``squares``, N x S x S x 3 uint8, possibly memory-mapped) as grey float32
    images (B, S, S), ``batch`` at a time, so that no more than a batch is ever decoded into memory."""
    weights = torch.tensor(GREY)
    for s in range(0, len(indices), batch):
        yield torch.from_numpy(np.stack([squares[i] for i in indices[s:s + batch]])).float() @ weights


def _dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix (n, n): ``D @ x`` transforms the columns of ``x``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None]
    d = torch.cos(torch.pi * (2 * i + 1) * k / (2 * n)) * (2 / n) ** 0.5
    d[0] /= 2 ** 0.5
    return d


def perceptual_hashes(squares: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(len(indices), 2, 64) bool: the perceptual hash of each square ``indices`` and of its mirror image."""
    d = _dct_matrix(HASH_SIDE)[:HASH_FREQS]
    # A mirror keeps every coefficient but negates those of odd horizontal frequency.
    mirror = torch.tensor([(-1.0) ** v for v in range(HASH_FREQS)], dtype=torch.float64)
    out = np.zeros((len(indices), 2, HASH_FREQS * HASH_FREQS), bool)
    s = 0
    for grey in grey_batches(squares, indices):
        small = F.adaptive_avg_pool2d(grey[:, None].double(), HASH_SIDE)[:, 0]
        low = d @ small @ d.T  # (B, 8, 8): [vertical frequency, horizontal frequency]
        for m, coeffs in enumerate((low, low * mirror)):
            flat = coeffs.reshape(len(grey), -1)
            median = flat[:, 1:].median(dim=1, keepdim=True).values  # the DC term says only how bright
            out[s:s + len(grey), m] = (flat > median).numpy()
        s += len(grey)
    return out


def hash_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits by which each hash of ``a`` (N, 2, 64) differs from each of ``b`` (M, 2, 64), the nearer of
    a's image and mirror: (N, M) int."""
    bb = b[:, 0].astype(np.float32)
    out = np.full((len(a), len(b)), a.shape[-1], np.int64)
    for m in range(2):
        aa = a[:, m].astype(np.float32)
        same = aa @ bb.T + (1 - aa) @ (1 - bb).T
        out = np.minimum(out, np.rint(a.shape[-1] - same).astype(np.int64))
    return out


def thumbnails(squares: np.ndarray, indices: np.ndarray, side: int = THUMB_SIDE) -> torch.Tensor:
    """Grey thumbnails (len(indices), side, side) of the squares ``indices``, float32."""
    out = [F.adaptive_avg_pool2d(grey[:, None], side)[:, 0] for grey in grey_batches(squares, indices)]
    return torch.cat(out) if out else torch.zeros(0, side, side)


def _warps() -> torch.Tensor:
    """The scalings (W, 2, 3) a copy may differ by, each also mirrored; shifts are searched by correlation."""
    return torch.tensor([[[mirror * scale, 0.0, 0.0], [0.0, scale, 0.0]]
                         for mirror in (1.0, -1.0) for scale in ALIGN_SCALES])


def aligned_similarity(a: torch.Tensor, b: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """For each pair of thumbnails ``a[k]``, ``b[k]`` (K, T, T): the best normalised correlation of the
    centre of ``a`` (its border, a sixth of the side, left out) with ``b`` scaled, mirrored and shifted
    by up to that border (template matching, one grouped convolution per batch of pairs)."""
    warps = _warps()
    w, t = len(warps), a.shape[-1]
    m = t // 6
    out = []
    for s in range(0, len(a), batch):
        aa, bb = a[s:s + batch], b[s:s + batch]
        k = len(aa)
        grid = F.affine_grid(warps.repeat(k, 1, 1), (k * w, 1, t, t), align_corners=False)
        warped = F.grid_sample(bb.repeat_interleave(w, 0)[:, None], grid, padding_mode="border",
                               align_corners=False).reshape(1, k * w, t, t)
        centre = aa[:, m:t - m, m:t - m]
        centre = centre - centre.mean((1, 2), keepdim=True)
        centre = centre / centre.norm(dim=(1, 2), keepdim=True).clamp_min(1e-6)
        kernel = centre.repeat_interleave(w, 0)[:, None]  # (k * w, 1, t - 2m, t - 2m)
        size = kernel.shape[-1] ** 2
        ones = torch.ones(k * w, 1, *kernel.shape[-2:])
        # The correlation of the zero-mean template with each window is that with the raw window, since the
        # template sums to zero; the window's own spread comes from its sums of values and of squares.
        corr = F.conv2d(warped, kernel, groups=k * w)
        total = F.conv2d(warped, ones, groups=k * w)
        squares = F.conv2d(warped * warped, ones, groups=k * w)
        spread = (squares - total * total / size).clamp_min(1e-6).sqrt()
        out.append((corr / spread).reshape(k, -1).max(1).values)
    return torch.cat(out) if out else torch.zeros(0)


def find_duplicates(squares: np.ndarray, indices: np.ndarray, features: np.ndarray | None = None,
                    sides: np.ndarray | None = None) -> list[DuplicatePair]:
    """Every pair of copies among the squares ``indices``, whose pretrained features (one row per index)
    are ``features``: equal pixels, or a near copy (without features, only those with near hashes:
    re-encoded, resized and mirrored copies, not cropped ones). Candidates are pairs with perceptual hashes at most
    ``NEAR_BITS`` apart or features at least ``CANDIDATE_COSINE`` alike; a candidate is a copy when its
    aligned pixel correlation plus feature cosine reach ``COPY_SCORE`` (the correlation at least
    ``MIN_CORRELATION``, whatever the backbone's features say), or when its hashes are near and
    its pixels correlate to ``HASHED_CORRELATION`` (a copy at half the size, whose blur moves the
    features). Images whose original short side (``sides``, one per index) is under ``MIN_SIDE`` can only
    be exact copies: two different 8 x 8 digits correlate like copies. Pairs of dataset indices, sorted."""
    idx = np.asarray(indices)
    if len(idx) < 2:
        return []
    digests = pixel_digests(squares[i] for i in idx)
    hashes = perceptual_hashes(squares, idx)
    unit = None if features is None else unit_rows(features)
    rows, cols = [], []
    for s in range(0, len(idx), 2048):
        near = hash_distances(hashes[s:s + 2048], hashes) <= NEAR_BITS
        if unit is not None:
            near |= unit[s:s + 2048] @ unit.T >= CANDIDATE_COSINE
        r, c = np.nonzero(near)
        keep = r + s < c
        rows.append(r[keep] + s)
        cols.append(c[keep])
    a, b = np.concatenate(rows), np.concatenate(cols)
    bits = (hashes[a] != hashes[b][:, :1]).sum(-1).min(1)  # to the image or to its mirror
    thumbs = thumbnails(squares, idx)
    ncc = aligned_similarity(thumbs[a], thumbs[b]).numpy()
    cos = np.zeros(len(a)) if unit is None else (unit[a] * unit[b]).sum(1)
    detailed = np.ones(len(idx), bool) if sides is None else np.asarray(sides) >= MIN_SIDE
    pairs = []
    for k in range(len(a)):
        exact = digests[a[k]] == digests[b[k]]
        near = (ncc[k] >= MIN_CORRELATION and ncc[k] + cos[k] >= COPY_SCORE) or \
            (bits[k] <= NEAR_BITS and ncc[k] >= HASHED_CORRELATION)
        if exact or (near and detailed[a[k]] and detailed[b[k]]):
            pairs.append(DuplicatePair(int(idx[a[k]]), int(idx[b[k]]), exact,
                                       1.0 if exact else float(min(1.0, ncc[k] if unit is None else
                                                                   (ncc[k] + cos[k]) / 2))))
    return sorted(pairs, key=lambda p: (p.first, p.second))


def duplicate_groups(pairs: list[DuplicatePair]) -> list[list[int]]:
    """The connected groups of copies (each sorted, the groups by first member)."""
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        while parent.setdefault(i, i) != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for p in pairs:
        parent[root(p.second)] = root(p.first)
    groups: dict[int, list[int]] = {}
    for i in parent:
        groups.setdefault(root(i), []).append(i)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def redundant_train_copies(groups: list[list[int]], splits: dict[str, np.ndarray]) -> np.ndarray:
    """The training images ``--dedupe`` leaves out: in a group with a validation or test member, every
    training copy (the evaluation keeps its images, and nothing it scores was trained on); in a group
    within train, all but the first copy."""
    train = set(splits.get("train", np.zeros(0, np.int64)).tolist())
    held = set().union(*(set(splits[s].tolist()) for s in ("val", "test") if s in splits))
    drop: list[int] = []
    for g in groups:
        in_train = [i for i in g if i in train]
        if any(i in held for i in g):
            drop += in_train
        else:
            drop += in_train[1:]
    return np.array(sorted(drop), dtype=np.int64)


def leak_warning(pairs: list[DuplicatePair], splits: dict[str, np.ndarray]) -> str | None:
    """A warning naming how many images have a copy in another split, or None when none has."""
    where = {int(i): name for name, idx in splits.items() for i in idx}
    crossing = [p for p in pairs if where.get(p.first) and where.get(p.second) and
                where[p.first] != where[p.second]]
    if not crossing:
        return None
    kinds = sorted({" and ".join(sorted((where[p.first], where[p.second]))) for p in crossing})
    exact = sum(p.exact for p in crossing)
    return (f"{len(crossing)} pair(s) of copies across splits ({', '.join(kinds)}; {exact} with equal pixels, "
            f"{len(crossing) - exact} near copies): the scores then count images the model was trained on. "
            "transferlab audit DATA lists them; --dedupe leaves the training copies out")
