"""make_loader: shapes, traceable indices, seeded order and augmentation, worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from inca.backbones.preprocess_spec import Preprocess
from inca.data import ArrayDataset, Batch, ImageTransform, Subset, make_loader
from inca.errors import IncaError

SIZE = 8


@pytest.fixture
def subset() -> Subset:
    x = np.random.default_rng(0).integers(0, 256, (12, 10, 10), dtype=np.uint8)
    ds = ArrayDataset(x, np.arange(12) % 3, ["a", "b", "c"])
    return Subset(ds, [1, 3, 4, 6, 8, 9, 11])


def collect(loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batches = list(loader)
    return tuple(torch.cat([b[k] for b in batches]) for k in range(3))


def test_batches_have_shapes_and_trace_back(subset):
    tf = ImageTransform(Preprocess(SIZE))
    batches = list(make_loader(subset, tf, batch_size=4, num_workers=0))
    assert [len(b.indices) for b in batches] == [4, 3]
    first = batches[0]
    assert isinstance(first, Batch) and first.pixels.shape == (4, 3, SIZE, SIZE)
    assert first.pixels.dtype == torch.float32
    assert first.labels.dtype == torch.int64 and first.indices.dtype == torch.int64
    pixels, labels, indices = collect(batches)
    assert indices.tolist() == subset.indices.tolist()
    assert labels.tolist() == subset.labels.tolist()
    assert torch.equal(pixels[2], tf(subset.dataset.load(4)))
    assert len(list(make_loader(subset, tf, batch_size=4, num_workers=0, drop_last=True))) == 1


def test_shuffle_is_seeded(subset):
    tf = ImageTransform(Preprocess(SIZE))

    def order(seed):
        return collect(make_loader(subset, tf, 3, shuffle=True, seed=seed, num_workers=0))[2]

    a = order(0)
    assert sorted(a.tolist()) == subset.indices.tolist()
    assert torch.equal(a, order(0)) and not torch.equal(a, order(1))


def test_augmentation_is_seeded_and_respects_the_dataset(subset):
    tf = ImageTransform(Preprocess(SIZE), augment=True, allow_hflip=True)
    a = collect(make_loader(subset, tf, 4, seed=0, num_workers=0))[0]
    b = collect(make_loader(subset, tf, 4, seed=0, num_workers=0))[0]
    c = collect(make_loader(subset, tf, 4, seed=5, num_workers=0))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    subset.dataset.allow_hflip = False  # e.g. digits: a mirrored 2 is not a 2
    loader = make_loader(subset, tf, 4, num_workers=0)
    assert loader.dataset.transform.allow_hflip is False
    assert tf.allow_hflip is True  # the caller's transform is left alone


def test_two_workers_match_in_process_loading(subset):
    tf = ImageTransform(Preprocess(SIZE))
    plain = collect(make_loader(subset, tf, 2, shuffle=True, seed=3, num_workers=0))
    loader = make_loader(subset, tf, 2, shuffle=True, seed=3, num_workers=2)
    assert loader.num_workers == 2 and loader.persistent_workers
    for got, want in zip(collect(loader), plain, strict=True):
        assert torch.equal(got, want)
    aug = ImageTransform(Preprocess(SIZE), augment=True)
    runs = [collect(make_loader(subset, aug, 2, seed=0, num_workers=w))[0] for w in (2, 2, 0, 1)]
    for other in runs[1:]:  # before: the worker count changed every augmented crop
        assert torch.equal(runs[0], other)
    # an image's crop depends on the seed and the image, not on which others load with it
    tail = Subset(subset.dataset, subset.indices[3:])
    assert torch.equal(collect(make_loader(tail, aug, 2, seed=0, num_workers=0))[0], runs[0][3:])


def test_loader_errors(subset):
    tf = ImageTransform(Preprocess(SIZE))
    with pytest.raises(IncaError, match="empty"):
        make_loader(Subset(subset.dataset, []), tf)
    with pytest.raises(IncaError, match="batch_size"):
        make_loader(subset, tf, batch_size=0)


class _ThreadReporter(ArrayDataset):
    """Each image's grey value is the torch thread count of the process that loaded it."""

    def load(self, i: int) -> Image.Image:
        return Image.new("L", (SIZE, SIZE), torch.get_num_threads())


def test_workers_use_one_thread_each():
    ds = _ThreadReporter(np.zeros((4, SIZE, SIZE), np.uint8), [0, 1, 0, 1], ["a", "b"])
    tf = ImageTransform(Preprocess(SIZE, mean=(0, 0, 0), std=(1, 1, 1)))
    pixels = collect(make_loader(Subset.whole(ds), tf, 2, num_workers=2))[0]
    assert torch.allclose(pixels, torch.full_like(pixels, 1 / 255))
