"""trainables.augment: batched crop/flip/normalize and the torchvision v2 policies."""

from __future__ import annotations

import pytest
import torch

from trainables.augment import (
    BatchAugment,
    augment_is_per_image,
    crop_flip,
    normalize,
    random_crop_flip,
)
from trainables.config import AUGMENTS, TrainParams
from trainables.data import CIFAR10_MEAN, CIFAR10_STD, load_cifar10

MEAN = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def batch(data_root):
    x, y = load_cifar10(data_root, train=True)
    return x[:64].clone(), y[:64].clone()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_normalize(batch):
    x = batch[0]
    out = normalize(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out, (x.float() - MEAN) / STD, atol=1e-5)
    cl = normalize(x, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.allclose(cl, out)
    assert torch.allclose(normalize(x[0]), out[0])  # a single [3, H, W] image broadcasts too


def test_crop_flip_identity_flip_and_zero_padding(batch):
    x = batch[0][:8].clamp(min=1)  # no zero pixels, so zeros can only come from the padding
    b = x.shape[0]
    full = lambda v: torch.full((b,), v, dtype=torch.int64)  # noqa: E731
    no, yes = torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)
    assert torch.equal(crop_flip(x, full(4), full(4), no), x)
    assert torch.equal(crop_flip(x, full(4), full(4), yes), x.flip(-1))
    top_left = crop_flip(x, full(0), full(0), no)
    assert (top_left[:, :, :4, :] == 0).all() and (top_left[:, :, :, :4] == 0).all()
    assert torch.equal(top_left[:, :, 4:, 4:], x[:, :, :28, :28])
    bottom_right = crop_flip(x, full(8), full(8), yes)
    assert (bottom_right[:, :, 28:, :] == 0).all() and (bottom_right[:, :, :, :4] == 0).all()  # flipped: left
    assert torch.equal(bottom_right[:, :, :28, 4:], x[:, :, 4:, 4:].flip(-1))


def test_random_flip_only_gives_the_image_or_its_mirror(batch):
    x = batch[0]
    out = random_crop_flip(x, _gen(1), padding=0)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_random_crop_flip_is_some_padded_crop_of_each_image(batch):
    x = batch[0][:12].clamp(min=1)
    out = random_crop_flip(x, _gen(2))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    offsets = set()
    for i in range(x.shape[0]):
        hits = [
            (dy, dx, f)
            for dy in range(9)
            for dx in range(9)
            for f in (False, True)
            if torch.equal(out[i], (lambda c: c.flip(-1) if f else c)(padded[i, :, dy:dy + 32, dx:dx + 32]))
        ]
        assert hits, f"image {i} is not a crop/flip of its input"
        offsets.add(hits[0][:2])
        dy, dx, _ = hits[0]
        assert int((out[i] == 0).all(0).sum()) == 32 * 32 - (32 - abs(dy - 4)) * (32 - abs(dx - 4))
    assert len(offsets) > 1  # offsets differ per image


def test_same_seed_same_output_different_seed_different(batch):
    x, y = batch
    aug = BatchAugment(TrainParams(augment="standard"))
    a, ya = aug(x, y, _gen(7))
    b, _ = aug(x, y, _gen(7))
    c, _ = aug(x, y, _gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c) and ya is y
    assert torch.equal(a, normalize(random_crop_flip(x, _gen(7))))  # standard = crop/flip then normalize


@pytest.mark.parametrize("policy", AUGMENTS)
def test_every_policy_shapes_and_dtypes(batch, policy):
    x, y = batch
    before = x.clone()
    out, target = BatchAugment(TrainParams(augment=policy))(x, y, _gen())
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(x, before)  # the input (a view of the cached dataset) is never modified
    if policy in ("cutmix", "mixup", "cutmix_mixup"):
        assert target.shape == (64, 10) and target.dtype == torch.float32
        assert torch.allclose(target.sum(1), torch.ones(64)) and (target >= 0).all()
        assert not torch.equal(target, torch.nn.functional.one_hot(y, 10).float())  # actually mixed (a.s.)
    else:
        assert target is y


@pytest.mark.parametrize("policy", ["autoaugment", "randaugment", "none", "standard"])
def test_per_image_policies_output_normalized_uint8_values(batch, policy):
    x, y = batch
    torch.manual_seed(0)
    out, _ = BatchAugment(TrainParams(augment=policy, randaugment_magnitude=15))(x, y, _gen())
    pixels = out * STD + MEAN  # back on the 0-255 scale: integers from the uint8 pipeline
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)
    assert pixels.min() > -0.01 and pixels.max() < 255.01
    if policy in ("autoaugment", "randaugment"):
        assert augment_is_per_image(policy)
        # The policy changed more than crop/flip alone would (some sub-policies are identity, not all 64).
        plain = normalize(random_crop_flip(x, _gen()))
        assert not torch.equal(out, plain)


def test_v2_policies_are_reproducible_through_the_global_rng(batch):
    x, y = batch
    threads = torch.get_num_threads()
    for policy in ("cutmix", "mixup", "cutmix_mixup", "randaugment"):
        aug = BatchAugment(TrainParams(augment=policy))
        torch.manual_seed(3)
        a = aug(x, y, _gen(1))
        torch.manual_seed(3)
        b = aug(x, y, _gen(1))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), policy
    assert torch.get_num_threads() == threads  # the per-image loop's single-thread section is restored


def test_cutmix_mixup_picks_one_of_the_two_per_batch(batch):
    """Over a few seeded batches both are taken: a CutMix batch has every pixel from the image or from its
    neighbour (a pasted box), a MixUp batch blends them; the labels are soft, sum to 1 and weigh the two images as
    the pixels do. The same global seed picks the same sequence again."""
    x, y = batch
    aug = BatchAugment(TrainParams(augment="cutmix_mixup", mixup_alpha=1.0), channels_last=False)
    picks = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        for b in range(8):
            out, target = aug(x, y, _gen(b))
            plain = normalize(random_crop_flip(x, _gen(b)))
            rolled = plain.roll(1, 0)  # v2 CutMix and MixUp pair each image with the previous one
            assert target.shape == (64, 10) and torch.allclose(target.sum(1), torch.ones(64))
            own = target.gather(1, y.view(-1, 1)).squeeze(1)  # the label weight of each image's own class
            pasted = (out == plain) | (out == rolled)
            differ = y != y.roll(1, 0)  # where the two labels differ, the own weight is lam, one for the batch
            assert torch.allclose(own[differ], own[differ][0].expand(int(differ.sum())))
            if pasted.all():  # CutMix: one box pasted in every image; outside it (a share lam) the image's own
                share = (out == plain).float().mean(dim=(1, 2, 3))  # (pasted pixels may equal the own ones)
                lam = own[differ][0].item()
                assert (share >= own - 1e-6)[differ].all() and share.min().item() == pytest.approx(lam, abs=0.01)
                picks.append("cutmix")
            else:  # MixUp: out = lam x + (1 - lam) rolled, for one lam; the own label weighs lam
                lam = own[differ][0].item()
                assert torch.allclose(out, lam * plain + (1 - lam) * rolled, atol=1e-4)
                picks.append("mixup")
    assert set(picks) == {"cutmix", "mixup"}
    torch.manual_seed(0)
    again = []
    for b in range(8):
        out, _ = aug(x, y, _gen(b))
        plain = normalize(random_crop_flip(x, _gen(b)))
        again.append("cutmix" if ((out == plain) | (out == plain.roll(1, 0))).all() else "mixup")
    assert again == picks[:8]


def test_channels_last_and_input_checks(batch):
    x, y = batch
    out, _ = BatchAugment(TrainParams(augment="cutmix"), channels_last=True)(x, y, _gen())
    assert out.is_contiguous(memory_format=torch.channels_last)
    out, _ = BatchAugment(TrainParams(augment="standard", channels_last=True))(x, y, _gen())
    assert out.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="uint8"):
        BatchAugment(TrainParams())(x.float(), y, _gen())


def test_augment_is_per_image():
    assert [augment_is_per_image(a) for a in AUGMENTS] == [False, False, False, False, True, True, False]
    with pytest.raises(ValueError):
        augment_is_per_image("cutout")
