"""The glyphs dataset (clim.data.glyphs, scripts/build_glyphs.py) on the fonts matplotlib ships.

matplotlib's DejaVu Sans / Sans Mono / Serif and STIX General faces draw Latin, Greek and Cyrillic:
four families, enough for a family-disjoint split of a tiny dataset that builds in about a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from clim.data import build_dataset, glyphs, registry

FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
CHARS = "AGKRΓΔΘΛБДЖЯ"  # Latin, Greek, Cyrillic letters of distinct shapes


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("scripts/build_glyphs.py")


def tiny_args(out: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--fonts", str(FONTS), "--chars", CHARS, "--size", "16", "--per-family", "2",
            "--train-copies", "2", "--probe", "A", *extra]


@pytest.fixture(scope="module")
def tiny(script, tmp_path_factory):
    out = tmp_path_factory.mktemp("glyphs") / "tiny"
    assert script.main(tiny_args(out)) == 0
    return out


def load(folder: Path) -> tuple[dict, dict]:
    arrays = {path.stem: np.load(path) for path in folder.glob("*.npy")}
    return arrays, json.loads((folder / glyphs.MANIFEST).read_text())


def test_tiny_build_shapes_classes_and_counts(tiny):
    arrays, manifest = load(tiny)
    assert manifest["num_classes"] == len(CHARS) and manifest["classes"] == sorted(CHARS)
    used = {split: [f for f in manifest["faces"] if f["split"] == split] for split in ("train", "test")}
    for split, copies in (("train", 2), ("test", 1)):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        assert images.dtype == np.uint8 and images.shape == (len(used[split]) * copies * len(CHARS), 16, 16)
        assert np.bincount(labels, minlength=len(CHARS)).tolist() == [len(used[split]) * copies] * len(CHARS)
        assert manifest["counts"][split] == len(images)
        assert (images.reshape(len(images), -1).max(axis=1) > 128).all()  # every image shows ink
    assert abs(arrays["train_images"].mean() / 255 - manifest["mean"][0]) < 1e-3


def test_split_is_family_disjoint_and_faces_capped(tiny):
    arrays, manifest = load(tiny)
    faces = manifest["faces"]
    families = {split: {f["family"] for f in faces if f["split"] == split} for split in ("train", "test")}
    assert families["train"] and families["test"] and not families["train"] & families["test"]
    assert len(families["train"] | families["test"]) == 4  # DejaVu Sans, Sans Mono, Serif; STIXGeneral
    for family in families["train"] | families["test"]:
        assert sum(f["family"] == family and f["split"] != "unused" for f in faces) <= 2
    for split in ("train", "test"):  # every image comes from a face of its split
        assert {faces[i]["split"] for i in np.unique(arrays[f"{split}_faces"])} == {split}
    assert any("Last Resort" in entry["name"] for entry in manifest["left_out"])  # a placeholder font


def test_build_is_deterministic_and_the_seed_matters(script, tiny, tmp_path):
    assert script.main(tiny_args(tmp_path / "again")) == 0
    first, again = load(tiny)[0], load(tmp_path / "again")[0]
    assert first.keys() == again.keys() and all(np.array_equal(first[k], again[k]) for k in first)
    assert script.main(tiny_args(tmp_path / "seed1", "--seed", "1", "--test-fraction", "0.5")) == 0
    other, manifest = load(tmp_path / "seed1")
    assert not np.array_equal(other["train_images"][:12], first["train_images"][:12])
    assert sum(f["split"] == "test" for f in manifest["faces"]) > sum(f["split"] == "test"
                                                                      for f in load(tiny)[1]["faces"])


def test_nuisance_is_keyed_by_the_image_not_its_position():
    face = glyphs.read_faces(FONTS / "DejaVuSans.ttf")[0]
    options = glyphs.BuildOptions(size=16, seed=3)
    both = glyphs.render_split([face], [0], ["A", "Б"], "train", 2, options)
    alone = glyphs.render_split([face], [0], ["Б"], "train", 2, options)
    # rows: copy 0 (A, Б), copy 1 (A, Б); the Б images do not depend on A being rendered
    assert np.array_equal(both["train_images"][[1, 3]], alone["train_images"])
    assert not np.array_equal(both["train_images"][1], both["train_images"][3])  # copies differ
    clean = glyphs.Nuisance(rotation=0.0, scale=(1.0, 1.0), shift=0.0, thicken_p=0.0)
    plain = glyphs.render_split([face], [0], ["A"], "test", 2, glyphs.BuildOptions(size=16, nuisance=clean))
    assert np.array_equal(plain["test_images"][0], plain["test_images"][1])  # no nuisance: identical copies


def test_families_follow_packages_lineages_and_similarity():
    faces = [glyphs.Face(f"/f/{name}.ttf", 0, name, "", package) for name, package in
             (("a", "fonts-ipafont-gothic"), ("b", "fonts-takao-mincho"), ("c", "fonts-x"), ("d", "fonts-x"),
              ("e", "fonts-y"), ("f", "fonts-z"))]
    families = glyphs.group_families(faces)
    assert families[0] == families[1]  # Takao is listed as a fork of IPA
    assert families[2] == families[3] and len(set(families)) == 4
    similarity = np.eye(6)
    similarity[4, 5] = similarity[5, 4] = 0.99
    merged = glyphs.group_families(faces, similarity, threshold=0.95)
    assert merged[4] == merged[5] == "fonts-y+fonts-z" and len(set(merged)) == 3
    chain = np.eye(6)  # e~f and f~a: one family, though e and a are not alike (similarity groups transitively)
    chain[4, 5] = chain[0, 5] = 0.99
    assert len(set(glyphs.group_families(faces, chain, threshold=0.95))) == 2
    assert glyphs.group_families(faces, chain, threshold=0.95)[4] == "fonts-ipafont-gothic+fonts-y+fonts-z"
    test = glyphs.split_families(merged, 0.5, seed=0)
    assert 1 <= len(test) < 3 and test == glyphs.split_families(merged, 0.5, seed=0)
    with pytest.raises(ValueError, match="two families"):
        glyphs.split_families(["one", "one"], 0.5, seed=0)


def test_registry_reads_the_folder(tiny):
    arrays, manifest = load(tiny)
    pretrain, train = build_dataset("glyphs", tiny, "pretrain"), build_dataset("glyphs", tiny, "train")
    test = build_dataset("glyphs", tiny, "test")
    assert torch.equal(pretrain.images, train.images)
    assert torch.equal(test.images[:, 0], torch.from_numpy(arrays["test_images"]))
    assert test.labels.dtype == torch.long and test.labels.tolist() == arrays["test_labels"].tolist()
    assert train.info.num_classes == len(CHARS) and train.info.image_size == 16 and train.info.in_channels == 1
    assert train.info.mean == tuple(manifest["mean"]) and train.classes == sorted(CHARS)
    image, index, label = test[5]
    assert image.mode == "L" and image.size == (16, 16) and (index, label) == (5, int(arrays["test_labels"][5]))


def test_registry_says_how_to_build_a_missing_folder(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="build_glyphs.py .*data.root"):
        build_dataset("glyphs", tmp_path / "nothing", "train")
    monkeypatch.setattr(registry, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "cache" / "glyphs")):  # the default root
        build_dataset("glyphs", None, "train")


def test_one_epoch_pretrain_on_tiny_glyphs(tiny, tiny_config, tmp_path):
    from clim.engine.trainer import pretrain

    config = tiny_config("data.name=glyphs", f"data.root={tiny}", "data.image_size=16", "train.epochs=1",
                         "train.batch_size=32", "train.knn_every=1", "model.queue_size=64")
    history = pretrain(config, tmp_path / "run")
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    assert 0.0 <= history[0]["knn_top1"] <= 100.0  # the kNN monitor ran on the labelled test split
