"""--bucketing: photos keep their shape, batches come from one bucket, deterministically."""

import math

import pytest
import torch
from PIL import Image

from dreambooth.config import TrainConfig
from dreambooth.families import sdxl
from dreambooth.families.sdxl import build_tiny as build_tiny_sdxl_pipeline
from dreambooth.training.batches import Examples, bucket_stream
from dreambooth.training.photos import Photo, bucket_of, buckets, resize_and_crop


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (640, 480), (100, 400), (512, 512), (1920, 1080)])
@pytest.mark.parametrize("resolution, multiple, step", [(1024, 8, 64), (512, 16, 64), (64, 8, 16), (32, 8, 8)])
def test_a_bucket_keeps_the_photos_aspect_at_about_the_models_area(size, resolution, multiple, step):
    w, h = bucket_of(size, buckets(resolution, multiple))
    assert w % step == 0 and h % step == 0 and w % multiple == 0 and h % multiple == 0
    assert 0.7 * resolution**2 <= w * h <= resolution**2
    # the photo's aspect to within one step of the bucket's shorter side
    assert abs(math.log((w / h) / (size[0] / size[1]))) <= math.log((min(w, h) + step) / min(w, h))
    if size[0] == size[1]:
        assert (w, h) == (resolution, resolution)


def test_a_photo_is_cropped_to_its_bucket_and_the_square_crop_is_unchanged():
    photo = Image.new("RGB", (300, 200), "red")
    crop, corner = resize_and_crop(photo, (80, 48), center_crop=True)
    assert crop.size == (80, 48) and corner == (2, 0)  # 300x200 -> 80x53 covers it; 5 rows cut, 2 above
    square, square_corner = resize_and_crop(photo, 64, center_crop=True)
    same, same_corner = resize_and_crop(photo, (64, 64), center_crop=True)
    assert square.tobytes() == same.tobytes() and square_corner == same_corner == (0, 16)


def examples(cfg, instance, classes=(), rank=0, num_processes=1):
    pipe = build_tiny_sdxl_pipeline()
    return Examples(
        cfg,
        sdxl.FAMILY,
        pipe.vae,
        [pipe.tokenizer, pipe.tokenizer_2],
        [pipe.text_encoder, pipe.text_encoder_2],
        "cpu",
        torch.float32,
        instance,
        list(classes),
        rank,
        num_processes,
    )


def shaped(w, h, colour):
    return Photo(None, Image.new("RGB", (w, h), colour), None)


WIDE = [shaped(300, 200, "red"), shaped(330, 220, "orange"), shaped(150, 100, "yellow")]  # 3:2 -> 80x48
TALL = [shaped(200, 300, "blue"), shaped(100, 150, "purple")]  # 2:3 -> 48x80


def test_each_batch_is_one_bucket_with_sdxls_real_size_conditioning_and_class_images_cropped_to_it():
    cfg = TrainConfig(
        resolution=64, bucketing=True, batch_size=2, seed=1, with_prior_preservation=True, class_prompt="a photo of a dog"
    )
    ex = examples(cfg, WIDE + TALL, [shaped(64, 64, "grey")] * 3)
    assert ex.bucket_sizes == [(48, 80), (80, 48)] and ex.bucket_members == [[3, 4], [0, 1, 2]]
    seen = {(48, 80): set(), (80, 48): set()}
    for micro in range(8):
        batch = ex.batch(micro)
        geometry = batch.geometry.tolist()
        w, h = int(geometry[0][5]), int(geometry[0][4])
        assert batch.latents.shape[-2] * w == batch.latents.shape[-1] * h != 0  # latents of the bucket's shape
        assert all(row[4:] == [h, w] for row in geometry)  # target size: the bucket, for every example
        instance = geometry[: len(geometry) - batch.num_class]
        group = {(48, 80): TALL, (80, 48): WIDE}[(w, h)]
        for row in instance:
            assert [row[0], row[1]] in [[p.image.height, p.image.width] for p in group]  # the original size
        assert all(row[:2] == [64, 64] for row in geometry[-batch.num_class :])  # class images, cropped to the bucket
        seen[(w, h)] |= {(row[0], row[1]) for row in instance}
    assert seen == {(48, 80): {(300, 200), (150, 100)}, (80, 48): {(200, 300), (220, 330), (100, 150)}}


def test_bucketed_batches_follow_from_the_seed_and_step_alone_and_split_across_processes():
    cfg = TrainConfig(resolution=64, bucketing=True, batch_size=2, seed=4)
    one = examples(cfg, WIDE + TALL)
    again = examples(cfg, WIDE + TALL)
    for micro in (5, 0, 3):  # any order, as after a resume
        assert torch.equal(one.batch(micro).latents, again.batch(micro).latents)
    halves = [examples(TrainConfig(resolution=64, bucketing=True, batch_size=1, seed=4), WIDE + TALL, (), r, 2) for r in (0, 1)]
    for micro in range(4):
        both = torch.cat([h.batch(micro).latents for h in halves])
        assert torch.equal(both, one.batch(micro).latents)


def test_every_photo_is_drawn_once_an_epoch_of_bucket_batches():
    groups = [[0, 1, 2], [3, 4], [5]]  # with batches of 2: 2 + 1 + 1 batches an epoch
    drawn = [bucket_stream(t, groups, 2, 0, 2, seed=7) for t in range(8)]
    for epoch in (drawn[:4], drawn[4:]):
        assert sorted(b for b, _ in epoch) == [0, 0, 1, 2]
        assert {i for b, items in epoch if b == 0 for i in items} == {0, 1, 2}
        assert all(set(items) <= set(groups[b]) for b, items in epoch)
    assert drawn[:4] != drawn[4:]  # each epoch in its own order
