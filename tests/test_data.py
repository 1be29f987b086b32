"""Data sources, splits, bad files, image modes, the one preprocessing path, loader and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
from imagefiles import (
    bomb_png,
    palette_with_transparency,
    pattern,
    truncated_jpeg,
    write_class_folder,
    write_idx,
    write_image,
)
from PIL import Image

from jaxnets.data import (
    AugmentSpec,
    ImageError,
    Loader,
    PreprocessSpec,
    augment_batch,
    digits,
    epoch_order,
    from_arrays,
    get_augment,
    load_dataset,
    model_input,
    standardize,
    stratified_split,
    to_pixels,
)

SPEC = PreprocessSpec(16, 16, 3, "stretch", "none")


# ------------------------------------------------------------------------------------------------ sources

def test_class_folders_sorted_by_name_with_all_files(tmp_path):
    write_class_folder(tmp_path, classes=("dog", "cat", "bird"), per_class=10)
    splits = load_dataset(tmp_path, val_split=0.2, test_split=0.1, seed=3)
    assert splits.classes == ["bird", "cat", "dog"]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 30
    assert (len(splits.val), len(splits.test)) == (6, 3)  # stratified: 2 and 1 of each class
    for part in (splits.val, splits.test):
        assert np.bincount(part.labels).tolist() == [len(part) // 3] * 3
    # the label really is the folder: a "dog" example decodes to the dog picture
    i = int(np.flatnonzero(splits.train.labels == 2)[0])
    assert "dog" in str(splits.train.sources[i])


def test_split_folders_are_used_as_given(tmp_path):
    write_class_folder(tmp_path / "train", per_class=6)
    write_class_folder(tmp_path / "validation", per_class=2)
    write_class_folder(tmp_path / "test", per_class=3)
    splits = load_dataset(tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 6)
    assert all("validation" in str(s) for s in splits.val.sources)


def test_split_folders_without_val_carve_it_from_train(tmp_path):
    write_class_folder(tmp_path / "train", per_class=10)
    write_class_folder(tmp_path / "test", per_class=3)
    splits = load_dataset(tmp_path, val_split=0.2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 4, 6)


def test_class_only_in_val_folder_is_a_clear_error(tmp_path):
    write_class_folder(tmp_path / "train", classes=("cat", "dog"), per_class=2)
    write_class_folder(tmp_path / "val", classes=("cat", "dog", "fox"), per_class=2)
    with pytest.raises(ValueError, match="fox"):
        load_dataset(tmp_path)


def test_flat_folder_labelled_by_file_name(tmp_path):
    for i in range(6):
        write_image(tmp_path / f"Cat.{i}.jpg", pattern(0))
        write_image(tmp_path / f"dog.{i}.png", pattern(1))
    write_image(tmp_path / "horse.1.png", pattern(1))
    splits = load_dataset(tmp_path, labels=["cat", "dog"], val_split=0.0, test_split=0.0)
    ds = splits.train
    assert ds.classes == ["cat", "dog"] and len(ds) == 12
    assert all(("cat" in str(s).lower()) == (y == 0) for s, y in zip(ds.sources, ds.labels, strict=True))
    assert any("horse" in path for path, _ in splits.skipped)


def test_flat_folder_infers_labels_when_none_given(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"cat.{i}.jpg", pattern(0))
        write_image(tmp_path / f"dog_{i}.jpg", pattern(1))
    assert load_dataset(tmp_path, val_split=0, test_split=0).classes == ["cat", "dog"]


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_reads_mnist_format(tmp_path, gz):
    rng = np.random.default_rng(0)
    train_x, train_y = rng.integers(0, 255, (50, 28, 28)), np.arange(50) % 10
    test_x, test_y = rng.integers(0, 255, (20, 28, 28)), np.arange(20) % 10
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", train_x, gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", train_y, gz)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", test_x, gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", test_y, gz)
    splits = load_dataset(tmp_path, val_split=0.2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 10, 20)
    np.testing.assert_array_equal(splits.test.sources, test_x.astype(np.uint8))
    np.testing.assert_array_equal(splits.test.labels, test_y)
    assert splits.classes == [str(i) for i in range(10)]
    # MNIST 28×28 padded to LeNet's 32×32: the digit sits in the middle, untouched
    px = to_pixels(splits.test.sources[0], PreprocessSpec(32, 32, 1, "pad"))
    np.testing.assert_array_equal(px[2:30, 2:30, 0], test_x[0])
    assert px[:2].sum() == 0 and px[:, :2].sum() == 0


def test_digits_are_the_real_sklearn_set():
    ds = digits()
    assert len(ds) == 1797 and ds.classes == [str(i) for i in range(10)]
    assert ds.sources.shape == (1797, 8, 8) and ds.sources.dtype == np.uint8 and ds.sources.max() == 255
    splits = load_dataset("digits")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1439, 179, 179)


def test_arrays_source():
    images = np.stack([pattern(i % 2) for i in range(10)])
    ds = from_arrays(images, np.arange(10) % 2, classes=["a", "b"])
    assert len(ds) == 10 and ds.classes == ["a", "b"]
    np.testing.assert_array_equal(ds.pixels(3, SPEC), images[3])


def test_unknown_spec_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="digits"):
        load_dataset(tmp_path / "nope")


def test_tfds_not_prepared_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match="tfds build mnist"):
        load_dataset("tfds:mnist", data_dir=str(tmp_path))


def test_tfds_array_record_dataset_through_data_source(tmp_path):
    import tensorflow_datasets as tfds

    pngs = tmp_path / "pngs"
    pngs.mkdir()

    class TinyShapes(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 1)),
                "label": tfds.features.ClassLabel(names=["dark", "light"]),
            }))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(20, 0), "test": self._generate_examples(6, 100)}

        def _generate_examples(self, n, offset):
            for i in range(n):
                path = pngs / f"{offset + i}.png"
                Image.fromarray(np.full((8, 8), 200 if i % 2 else 20, np.uint8)).save(path)
                yield offset + i, {"image": str(path), "label": i % 2}

    data_dir = str(tmp_path / "tfds")
    TinyShapes(data_dir=data_dir, file_format="array_record").download_and_prepare()
    splits = load_dataset("tfds:tiny_shapes", data_dir=data_dir, val_split=0.2)
    assert splits.classes == ["dark", "light"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 4, 6)
    light = splits.test.pixels(int(np.flatnonzero(splits.test.labels == 1)[0]), PreprocessSpec(8, 8, 1))
    assert (light == 200).all()


# ------------------------------------------------------------------------------------------------ splits

def test_stratified_split_is_reproducible_disjoint_and_complete():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    a = stratified_split(labels, (0.1, 0.1), seed=7)
    b = stratified_split(labels, (0.1, 0.1), seed=7)
    c = stratified_split(labels, (0.1, 0.1), seed=8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])
    assert sorted(np.concatenate(a).tolist()) == list(range(100))
    assert np.bincount(labels[a[1]]).tolist() == [5, 3, 2]
    # fixed across machines: numpy's PCG64 from an explicit seed
    assert a[2][:5].tolist() == stratified_split(labels, (0.1, 0.1), seed=7)[2][:5].tolist()


# ------------------------------------------------------------------------------------------------ bad files

def test_bad_files_are_skipped_reported_and_never_crash(tmp_path, caplog):
    write_class_folder(tmp_path, per_class=5)
    bad = {
        "empty": tmp_path / "cat" / "empty.jpg",
        "text": tmp_path / "cat" / "notes.jpg",
        "truncated": truncated_jpeg(tmp_path / "dog" / "cut.jpg"),
        "bomb": bomb_png(tmp_path / "dog" / "bomb.png"),
        "unsupported": tmp_path / "dog" / "readme.txt",
    }
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("this is not a picture")
    bad["unsupported"].write_text("hello")
    splits = load_dataset(tmp_path, val_split=0, test_split=0)
    loader = Loader(splits.train, SPEC, batch_size=4)
    assert len(loader) == 10  # only the 10 good pictures survive
    seen = sum(int(b["mask"].sum()) for b in loader.epoch(0))
    assert seen == 10
    skipped = dict(splits.train.skipped)
    for path in bad.values():
        assert str(path) in skipped, path
    assert "pixels" in skipped[str(bad["bomb"])]
    assert "empty" in skipped[str(bad["empty"])]
    assert sum("skipped" in r.message for r in caplog.records) >= len(bad)


def test_folder_without_any_image_names_the_folder(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=str(tmp_path)):
        load_dataset(tmp_path)


def test_image_errors_for_garbage_bytes():
    with pytest.raises(ImageError, match="empty"):
        to_pixels(b"", SPEC)
    with pytest.raises(ImageError, match="not an image"):
        to_pixels(b"GIF89a but not really", SPEC)


# ------------------------------------------------------------------------------------------------ modes

def test_modes_are_converted_to_the_channels_the_model_wants(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    grey_spec, rgb_spec = PreprocessSpec(8, 8, 1), PreprocessSpec(8, 8, 3)

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    px = to_pixels(tmp_path / "cmyk.jpg", rgb_spec)
    assert px.shape == (8, 8, 3) and px[..., 0].mean() > 200 and px[..., 1:].mean() < 60

    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent → white background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    assert (to_pixels(tmp_path / "clear.png", rgb_spec) == 255).all()

    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    assert to_pixels(tmp_path / "palette.png", rgb_spec)[..., 0].min() > 200

    two = np.zeros((8, 8, 3), np.uint8)
    two[:, 4:] = (0, 0, 255)  # left black (made transparent), right blue
    palette_with_transparency(two, tmp_path / "palette_alpha.png")
    with Image.open(tmp_path / "palette_alpha.png") as check:
        assert check.mode == "P" and "transparency" in check.info  # really palette + alpha
    px = to_pixels(tmp_path / "palette_alpha.png", rgb_spec)
    assert (px[:, :4] == 255).all()  # transparent → white background, as RGBA is
    assert (px[:, 4:] == (0, 0, 255)).all()

    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "deep.png")
    assert abs(int(to_pixels(tmp_path / "deep.png", grey_spec).mean()) - round(40000 / 65535 * 255)) <= 1

    grey = to_pixels(tmp_path / "cmyk.jpg", grey_spec)
    assert grey.shape == (8, 8, 1)
    assert to_pixels(np.full((8, 8), 77, np.uint8), rgb_spec).shape == (8, 8, 3)


def test_exif_orientation_is_applied(tmp_path):
    tall = np.zeros((20, 10, 3), np.uint8)
    tall[:5] = 255  # white band on top
    img = Image.fromarray(tall)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    px = to_pixels(tmp_path / "rotated.jpg", PreprocessSpec(10, 20, 3))  # displayed: 10 high, 20 wide
    assert px[:, -5:].mean() > 200 and px[:, :10].mean() < 30  # the top band is now on the right


def test_resize_modes():
    wide = np.zeros((10, 20, 3), np.uint8)
    wide[:, :5] = 255
    assert to_pixels(wide, PreprocessSpec(10, 10, 3, "stretch"))[:, :2].mean() > 200
    cropped = to_pixels(wide, PreprocessSpec(10, 10, 3, "crop"))  # centre crop drops the white left edge
    assert cropped.mean() < 10
    padded = to_pixels(wide, PreprocessSpec(20, 20, 3, "pad"))
    assert padded[:5].sum() == 0 and padded[5:15, :5].mean() > 200


# ------------------------------------------------------------------------------------------------ one path

def test_loader_batches_equal_single_image_preprocessing(tmp_path):
    write_class_folder(tmp_path, per_class=6, size=23)
    spec = PreprocessSpec(16, 16, 3, "crop", "imagenet")
    ds = load_dataset(tmp_path, val_split=0, test_split=0).train
    batch = next(Loader(ds, spec, batch_size=12).epoch(0))
    from_loader = np.asarray(standardize(batch["image"], spec))
    for row in range(12):
        image = Image.open(ds.sources[row])
        np.testing.assert_array_equal(np.asarray(batch["image"][row]), to_pixels(image, spec))  # bit-exact
        np.testing.assert_allclose(from_loader[row], model_input(image, spec), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ loader

def test_epoch_order_covers_every_example_once_and_pads_with_a_mask():
    index, mask = epoch_order(10, 4, seed=1, epoch=0, shuffle=True)
    assert index.shape == mask.shape == (3, 4)
    assert sorted(index[mask].tolist()) == list(range(10))
    assert mask.sum() == 10 and not mask[-1, 2:].any()
    again, _ = epoch_order(10, 4, seed=1, epoch=0, shuffle=True)
    other, _ = epoch_order(10, 4, seed=1, epoch=1, shuffle=True)
    np.testing.assert_array_equal(index, again)
    assert not np.array_equal(index[mask], other[mask])


def test_loader_batches_follow_the_seeded_epoch_order_with_fixed_shapes():
    ds = from_arrays(np.stack([np.full((4, 4), i, np.uint8) for i in range(11)]), np.arange(11) % 2)
    spec = PreprocessSpec(4, 4, 1)
    batches = list(Loader(ds, spec, 4, shuffle=True, seed=5).epoch(2))
    assert [x["image"].shape for x in batches] == [(4, 4, 4, 1)] * 3
    # image i is filled with the value i: the batches must hold exactly epoch_order's permutation
    index, mask = epoch_order(11, 4, seed=5, epoch=2, shuffle=True)
    seen = np.stack([np.asarray(x["image"])[:, 0, 0, 0] for x in batches])
    np.testing.assert_array_equal(seen[mask], index[mask])
    np.testing.assert_array_equal(np.stack([np.asarray(x["mask"]) for x in batches]), mask)
    assert sorted(seen[mask].tolist()) == list(range(11))
    np.testing.assert_array_equal(np.stack([np.asarray(x["label"]) for x in batches])[mask], index[mask] % 2)


def test_streaming_loader_masks_a_file_that_breaks_mid_run(tmp_path):
    write_class_folder(tmp_path, per_class=4)
    ds = load_dataset(tmp_path, val_split=0, test_split=0).train
    loader = Loader(ds, SPEC, batch_size=4, memory_budget=0)
    assert loader.streaming
    victim = ds.sources[3]
    victim.write_bytes(b"corrupted after the scan")
    batches = list(loader.epoch(0))
    assert sum(int(b["mask"].sum()) for b in batches) == 7
    assert any(str(victim) == path for path, _ in ds.skipped)


# ------------------------------------------------------------------------------------------------ augment

def test_augmentation_is_deterministic_per_key_and_keeps_shape():
    import jax

    images = jax.numpy.asarray(np.stack([pattern(i % 2, 16) for i in range(4)]).astype(np.float32) / 255)
    spec = get_augment("classic")
    a = augment_batch(images, jax.random.key(0), spec)
    b = augment_batch(images, jax.random.key(0), spec)
    c = augment_batch(images, jax.random.key(1), spec)
    assert a.shape == images.shape
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    np.testing.assert_array_equal(augment_batch(images, jax.random.key(0), get_augment("none")), images)


def test_flip_only_mirrors_exactly():
    import jax

    images = jax.numpy.asarray(np.stack([pattern(0, 8)]).astype(np.float32) / 255)
    out = augment_batch(images, jax.random.key(0), AugmentSpec(flip=1.0))
    np.testing.assert_allclose(out[0], images[0, :, ::-1], atol=1e-5)
    with pytest.raises(ValueError, match="classic"):
        get_augment("fancy")


def test_folder_kind_tells_the_four_layouts_apart(tmp_path):
    from jaxnets.data.sources import folder_kind

    write_class_folder(tmp_path / "classes")
    write_class_folder(tmp_path / "splits" / "train")
    write_class_folder(tmp_path / "splits" / "test")
    for i in range(2):
        write_image(tmp_path / "flat" / f"cat.{i}.png", pattern(0))
    write_idx(tmp_path / "idx" / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / "idx" / "train-labels-idx1-ubyte.gz", np.zeros(2, np.uint8))
    assert {k: folder_kind(tmp_path / k) for k in ("classes", "splits", "flat", "idx")} == {
        "classes": "classes", "splits": "splits", "flat": "flat", "idx": "idx"}


def test_pixels_are_scaled_in_one_place_and_never_twice():
    from jaxnets.data.preprocess import normalize, to_unit

    spec = PreprocessSpec(4, 4, 3, "stretch", "imagenet")
    pixels = np.full((1, 4, 4, 3), 255, np.uint8)
    unit = to_unit(pixels)
    assert unit.dtype == np.float32 and float(unit.max()) == 1.0
    np.testing.assert_allclose(standardize(pixels, spec), normalize(unit, spec))
    with pytest.raises(TypeError, match="uint8"):
        to_unit(pixels.astype(np.float32))  # a float batch in 0–255 is refused, not silently mis-scaled
    with pytest.raises(TypeError, match="to_unit"):
        normalize(pixels, spec)  # normalising raw uint8 would skip the scaling
    with pytest.raises(TypeError):
        standardize(unit, spec)  # already scaled: refusing beats scaling twice
