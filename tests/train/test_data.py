"""Training images: recursive folder, unreadable files skipped, deterministic crops."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from train.data import load_folder, random_crops


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), np.uint8)).save(tmp_path / "a" / "x.png")
    Image.fromarray(rng.integers(0, 255, (50, 30, 3), np.uint8)).save(tmp_path / "a/b/y.jpg")
    Image.fromarray(rng.integers(0, 255, (20, 20), np.uint8)).save(tmp_path / "gray.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    return tmp_path


def test_recursive_with_unreadable_skipped(folder, caplog):
    with caplog.at_level(logging.WARNING):
        images = load_folder(folder, short_side=32)
    assert len(images) == 3
    assert "broken.jpg" in caplog.text
    assert all(im.shape[0] == 3 and min(im.shape[1:]) == 32 for im in images)
    assert sorted(tuple(im.shape[1:]) for im in images) == [(32, 32), (32, 48), (53, 32)]


def test_min_side_only_enlarges_small_images(folder):
    shapes = sorted(tuple(im.shape[1:]) for im in load_folder(folder, min_side=30))
    assert shapes == [(30, 30), (40, 60), (50, 30)]


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no readable"):
        load_folder(tmp_path, short_side=16)


def test_crops_are_deterministic_per_seed(folder):
    images = load_folder(folder, short_side=32)
    a = random_crops(images, 4, 24, torch.Generator().manual_seed(1))
    b = random_crops(images, 4, 24, torch.Generator().manual_seed(1))
    c = random_crops(images, 4, 24, torch.Generator().manual_seed(2))
    assert a.shape == (4, 3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
