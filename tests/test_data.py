"""Data loaders on the real shared data and on tiny generated folders."""
import numpy as np
import pytest
from PIL import Image

from smilekit.learn import data


def test_smilesmiled_split_counts(smilesmiled_dir):
    samples = data.load_smilesmiled(smilesmiled_dir)
    assert len(samples) == 13165
    counts = {split: len(data.select(samples, split)) for split in ("train", "val", "test")}
    assert counts == {"train": 9847, "val": 2023, "test": 1295}
    assert sum(s.smiling for s in data.select(samples, "test")) == 375
    assert all(s.is_crop and s.path.is_file() for s in samples[:50])


def test_celeba_subset_has_groups(celeba_dir):
    samples = data.load_celeba_subset(celeba_dir)
    assert len(samples) == 5000
    assert {s.male for s in samples} == {0, 1}
    assert not samples[0].is_crop


@pytest.mark.parametrize("name, counts, smiling_in_test", [
    ("mtfl", {"train": 4787, "val": 518, "test": 528}, 299),
    ("fer2013", {"train": 28273, "val": 3533, "test": 3534}, 879),
])
def test_in_the_wild_sets_load_with_their_splits(shared_data, name, counts, smiling_in_test):
    if not (shared_data / name).is_dir():
        pytest.skip(f"{shared_data / name} is absent (see data/README.md)")
    samples = data.load_dataset(name, shared_data)
    assert {split: len(data.select(samples, split)) for split in counts} == counts
    assert sum(s.smiling for s in data.select(samples, "test")) == smiling_in_test
    assert all(s.is_crop and s.dataset == name and s.path.is_file() for s in samples[:50])
    if name == "mtfl":  # head pose and sex come with MTFL
        assert {s.pose for s in samples} == {1, 2, 3, 4, 5} and {s.male for s in samples} == {0, 1}


def test_a_crop_without_a_detected_face_uses_its_datasets_landmarks():
    blank = Image.new("L", (80, 80), 128)  # nothing to detect: the fallback landmarks decide the face
    found = {name: data.face_box(data.Sample("x.jpg", 0, "test", name, True), blank) for name in ("smilesmiled", "mtfl")}
    assert not found["mtfl"][1] and not found["smilesmiled"][1]
    assert np.allclose(found["mtfl"][0].points(), np.array(data.CROP_LANDMARKS["mtfl"]) * 80, atol=1e-3)
    eye_gap = {name: face.points()[1, 0] - face.points()[0, 0] for name, (face, _) in found.items()}
    assert eye_gap["smilesmiled"] > 1.5 * eye_gap["mtfl"]  # MTFL crops are looser: a smaller face


def test_data_root_from_environment(shared_data, monkeypatch):
    monkeypatch.setenv("SMILEKIT_DATA", str(shared_data))
    assert len(data.load_dataset("celeba-subset")) == 5000


def test_missing_data_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="SMILEKIT_DATA"):
        data.data_root(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="Unknown dataset"):
        data.load_dataset("imagenet", tmp_path)


def _write_folder(root, n=3):
    for sub, value in (("smiling", 200), ("not_smiling", 50)):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (64, 64), value).save(root / sub / f"{i}.png")
    (root / "smiling" / "notes.txt").write_text("not an image")


def test_plain_folder_layout(tmp_path):
    _write_folder(tmp_path)
    samples = data.load_folder(tmp_path)
    assert len(samples) == 6 and sum(s.smiling for s in samples) == 3
    with pytest.raises(FileNotFoundError, match="not_smiling"):
        data.load_folder(tmp_path / "smiling")


def test_official_celeba_layout(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    names = ["000001.jpg", "000002.jpg", "000003.jpg"]
    for name in names:
        Image.new("RGB", (178, 218)).save(tmp_path / "img_align_celeba" / name)
    attrs = ["3", "Male Smiling Young", "000001.jpg  1 -1  1", "000002.jpg -1  1  1", "000003.jpg -1 -1 -1"]
    (tmp_path / "list_attr_celeba.txt").write_text("\n".join(attrs) + "\n")
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 1\n000003.jpg 2\n")
    samples = data.load_celeba(tmp_path)
    assert [(s.smiling, s.male, s.split) for s in samples] == [(0, 1, "train"), (1, 0, "val"), (0, 0, "test")]


def test_select_spreads_the_limit():
    samples = [data.Sample(f"{i}.jpg", i % 2, "train", "x", True) for i in range(100)]
    chosen = data.select(samples, "train", 10)
    assert [s.path for s in chosen] == [f"{i}.jpg" for i in range(0, 100, 10)]
    assert data.select(samples, "val") == [] and len(data.select(samples, None, 1000)) == 100


def test_face_crops_are_cut_and_cached(smilesmiled_dir, celeba_dir, tmp_path):
    samples = data.select(data.load_smilesmiled(smilesmiled_dir), "test", 20) + data.select(
        data.load_celeba_subset(celeba_dir), "test", 20)
    crops, found = data.face_crops(samples, cache_dir=tmp_path, progress=False)
    assert crops.shape == (40, data.CONTEXT_SIZE, data.CONTEXT_SIZE) and crops.dtype == np.uint8
    assert found.mean() > 0.9
    assert crops.std(axis=(1, 2)).min() > 5  # real faces, not blank frames
    assert len(list(tmp_path.glob("crops-*.npz"))) == 1
    again, _ = data.face_crops(samples, cache_dir=tmp_path, progress=False)
    assert np.array_equal(crops, again)
    colour, _ = data.face_crops(samples, cache_dir=tmp_path, progress=False, colour=True)  # from the same cache
    assert colour.shape == crops.shape + (3,) and len(list(tmp_path.glob("crops-*.npz"))) == 1
    assert not np.array_equal(colour[..., 0], colour[..., 2])  # CelebA's photos keep their colour
    assert all(np.array_equal(np.asarray(Image.fromarray(c).convert("L")), g) for c, g in zip(colour, crops))  # grey as PIL makes it


def test_crop_cache_is_shared_by_relative_and_absolute_data_roots(tmp_path, monkeypatch):
    _write_folder(tmp_path / "faces", n=2)
    monkeypatch.chdir(tmp_path)
    relative = data.load_folder("faces", is_crop=True)
    absolute = data.load_folder(tmp_path / "faces", is_crop=True)
    assert not relative[0].path.is_absolute()
    data.face_crops(relative, cache_dir=tmp_path / "cache", progress=False)
    data.face_crops(absolute, cache_dir=tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").glob("crops-*.npz"))) == 1  # the faces were cut once
