"""``data.decode=gpu`` without a GPU: header sniffing, per-file fallback and its count, crop geometry
equal to the CPU device path, and the training-process half run on CPU (torchvision's CPU decoder)
compared with the CPU path's views."""

from __future__ import annotations

import io
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from clim.config import load_config
from clim.data import build_dataset
from clim.data import jpeg
from clim.data import pipeline as data_pipeline
from clim.data import views as data_views
from clim.data.jpeg import EncodedViews, collate_encoded, decode_and_crop, jpeg_size
from clim.data.pipeline import build_pipeline, resolve_decode
from clim.data.views import CroppedViews, SampleViews
from clim.specs import loader_spec, view_spec

# torchvision 0.29 deprecates its codecs in favour of torchcodec; decode_jpeg is still the nvJPEG entry point.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

SIZE = 24
BATCH = 4
KEYS = {"index", "label", "generator", "query", "key", "positive_index", "positive_query", "positive_key",
        "small_crops", "resume"}


def smooth_image(seed: int, height: int, width: int, mode: str = "RGB") -> Image.Image:
    """Smooth content (upsampled coarse noise): JPEG-friendly, so decoders agree closely."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8))
    image = coarse.resize((width, height), Image.BILINEAR)
    return image.convert(mode) if mode != "RGB" else image


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **kwargs)
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIM_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def folder(tmp_path):
    """root/<class>/: 14 baseline JPEGs of assorted sizes (one grayscale) in 2 classes."""
    root = tmp_path / "jpegs"
    shapes = [(40, 56), (64, 48), (50, 50), (33, 71)]
    for i in range(14):
        path = root / f"c{i % 2}" / f"{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        h, w = shapes[i % len(shapes)]
        path.write_bytes(jpeg_bytes(smooth_image(i, h, w, "L" if i == 5 else "RGB")))
    return root


@pytest.fixture
def mixed_folder(folder):
    """folder + files nvJPEG's batched path does not take: PNG (named .jpg), progressive, CMYK, truncated."""
    (folder / "c0" / "90_png.jpg").write_bytes(_png(smooth_image(90, 30, 40)))
    (folder / "c0" / "91_progressive.jpg").write_bytes(jpeg_bytes(smooth_image(91, 44, 36), progressive=True))
    (folder / "c1" / "92_cmyk.jpg").write_bytes(jpeg_bytes(smooth_image(92, 36, 44, "CMYK")))
    good = jpeg_bytes(smooth_image(93, 40, 40))
    (folder / "c1" / "93_truncated.jpg").write_bytes(good[: len(good) * 3 // 4])
    return folder


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def config_for(root, *extra):
    return load_config(overrides=[
        "data.name=imagefolder", f"data.root={root}", f"data.image_size={SIZE}", "data.augment=device",
        "data.num_workers=0", "model.backbone=resnet10", "model.small_stem=true", "model.queue_size=32",
        f"train.batch_size={BATCH}", "train.knn_every=0", *extra])


def dataset_of(root):
    return build_dataset("imagefolder", root, "pretrain", image_size=SIZE, verify=False)


def random_table(n, p=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ((torch.arange(n)[:, None] + torch.randint(1, n, (n, p), generator=g)) % n).int()


# ------------------------------------------------------------------------------ header sniffing


def test_jpeg_size_reads_baseline_headers():
    for size, mode in (((37, 51), "RGB"), ((64, 20), "L")):
        image = smooth_image(0, *size, mode)
        assert jpeg_size(jpeg_bytes(image)) == size
        assert jpeg_size(jpeg_bytes(image, subsampling=0)) == size  # 4:4:4
    with_exif = jpeg_bytes(smooth_image(1, 30, 40), exif=Image.Exif().tobytes() + b"\0" * 8)
    assert jpeg_size(with_exif) == (30, 40)  # APP1 segment skipped


@pytest.mark.parametrize("make, reason", [
    (lambda: jpeg_bytes(smooth_image(0, 32, 32), progressive=True), "progressive JPEG"),
    (lambda: jpeg_bytes(smooth_image(0, 32, 32, "CMYK")), "CMYK JPEG"),
    (lambda: _png(smooth_image(0, 8, 8)), "PNG file"),
    (lambda: jpeg_bytes(smooth_image(0, 32, 32))[:300], "JPEG without end marker (truncated?)"),
    (lambda: b"GIF89a" + b"\0" * 20, "GIF file"),
    (lambda: b"hello world", "not a JPEG"),
    (lambda: b"", "not a JPEG"),
    (lambda: b"\xff\xd8\xff\xe0\x00\x10JFIF\xff\xd9", "corrupt JPEG header"),
])
def test_jpeg_size_names_what_goes_to_pil(make, reason):
    assert jpeg_size(make()) == reason


def test_adobe_rgb_coded_jpeg_goes_to_pil():
    data = bytearray(jpeg_bytes(smooth_image(0, 16, 16)))
    adobe = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"  # APP14, transform 0 (RGB, not YCbCr)
    assert jpeg_size(bytes(data[:2]) + adobe + bytes(data[2:])) == "RGB-coded JPEG"


# ---------------------------------------------------------------------------- worker side geometry


@pytest.mark.parametrize("extra", [(), ("method.name=clim", "method.resolutions=[24,16]"),
                                   ("method.multicrop=true",), ("method.name=clim", "method.mixing=none")])
def test_boxes_and_flips_equal_the_cpu_device_path(folder, monkeypatch, extra):
    """Same per-sample generator, same draws in the same order: the CPU path's crop boxes exactly, and
    (through the views) its flips."""
    config = config_for(folder, *extra)
    dataset = dataset_of(folder)
    cpu = SampleViews(dataset, view_spec(config, SIZE), config.train.seed, CroppedViews)
    gpu = SampleViews(dataset, view_spec(config, SIZE), config.train.seed, EncodedViews)
    table = random_table(len(dataset))
    for views in (cpu, gpu):
        views.epoch = 3
        views.positives = table if "method.name=clim" in extra else None
    drawn = []
    real = data_views.crop_box

    def recording(*args, **kwargs):
        drawn.append(real(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(data_views, "crop_box", recording)
    for i in range(len(dataset)):
        drawn.clear()
        cpu_item = cpu[i]
        cpu_drawn = list(drawn)
        drawn.clear()
        item = gpu[i]
        names = ["query", "key"] + [n for n in ("positive_key", "positive_query") if n in item["views"]]
        names += sorted(n for n in item["views"] if n.startswith("small_crops"))
        assert [tuple(item["views"][n][1]) for n in names] == cpu_drawn == drawn
        assert item.get("positive_index") == cpu_item.get("positive_index")
        assert all(reason is None for _, reason in item["images"])  # baseline JPEGs: bytes only


# ------------------------------------------------------------------------ training-process side


def _cpu_batch(dataset, config, indices, epoch=0, positives=None):
    samples = SampleViews(dataset, view_spec(config, SIZE), config.train.seed, CroppedViews)
    samples.epoch, samples.positives = epoch, positives
    return torch.utils.data.default_collate([samples[i] for i in indices])


def _gpu_batch(dataset, config, indices, epoch=0, positives=None):
    samples = SampleViews(dataset, view_spec(config, SIZE), config.train.seed, EncodedViews)
    samples.epoch, samples.positives = epoch, positives
    return collate_encoded([samples[i] for i in indices])


@pytest.mark.parametrize("extra", [(), ("method.name=clim",), ("method.multicrop=true",)])
def test_decoded_views_match_the_cpu_path(folder, extra):
    """decode_and_crop on CPU (torchvision's decoder, the same code as on CUDA) vs PIL decode + PIL crop."""
    config = config_for(folder, *extra)
    dataset = dataset_of(folder)
    table = random_table(len(dataset)) if extra == ("method.name=clim",) else None
    indices = list(range(len(dataset)))
    cpu = _cpu_batch(dataset, config, indices, 1, table)
    small = view_spec(config, SIZE).small_size
    cropped, reasons = decode_and_crop(_gpu_batch(dataset, config, indices, 1, table), "cpu", SIZE, small)
    assert reasons == Counter()
    assert set(cropped) == set(cpu)
    for name, expected in cpu.items():
        got = cropped[name]
        assert got.shape == expected.shape and got.dtype == expected.dtype, name
        if got.dtype == torch.uint8:
            diff = (got.int() - expected.int()).abs()
            assert diff.float().mean() < 0.5 and diff.max() <= 2, (name, diff.float().mean(), diff.max())
        else:
            assert torch.equal(got, expected), name


def test_fallback_files_are_decoded_with_pil_and_counted(mixed_folder):
    config = config_for(mixed_folder)
    dataset = dataset_of(mixed_folder)
    names = {dataset.path(i).name: i for i in range(len(dataset))}
    special = [names[n] for n in ("90_png.jpg", "91_progressive.jpg", "92_cmyk.jpg", "93_truncated.jpg")]
    indices = special + [0, 1]
    batch = _gpu_batch(dataset, config, indices)
    assert sorted(batch["fallback"]) == sorted(["PNG file", "progressive JPEG", "CMYK JPEG",
                                                "JPEG without end marker (truncated?)"])
    assert batch["decoded_ids"].tolist() == [0, 1, 2, 3] and batch["jpeg_ids"].tolist() == [4, 5]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the truncated file is replaced by the next one in the worker
        cpu = _cpu_batch(dataset, config, indices)
    cropped, reasons = decode_and_crop(batch, "cpu", SIZE)
    assert sum(reasons.values()) == 4
    for name in ("query", "key"):
        diff = (cropped[name].int() - cpu[name].int()).abs()
        assert diff[:4].max() <= 1  # PIL decoded on both sides: only the resize differs
        assert diff.float().mean() < 1.0


def test_device_decode_failure_falls_back_to_pil_in_the_main_process(folder, monkeypatch):
    """A file whose header passes but which the device decoder rejects: the batch call fails, each file
    is retried alone, the bad one is decoded with PIL and counted."""
    import torchvision.io

    config = config_for(folder)
    dataset = dataset_of(folder)
    batch = _gpu_batch(dataset, config, [0, 1, 2, 3])
    bad = batch["jpeg"][: batch["jpeg_sizes"][0]].clone()
    real = torchvision.io.decode_jpeg
    calls = []

    def flaky(data, *args, **kwargs):
        calls.append(len(data))
        if any(len(d) == len(bad) and torch.equal(d, bad) for d in data):
            raise RuntimeError("nvjpeg status 6 (simulated)")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", flaky)
    cropped, reasons = decode_and_crop(batch, "cpu", SIZE)
    assert calls == [4, 1, 1, 1, 1]
    assert list(reasons.elements()) == ["device decode failed (nvjpeg status 6 (simulated))"]
    expected = _cpu_batch(dataset, config, [0, 1, 2, 3])
    assert (cropped["query"].int() - expected["query"].int()).abs().float().mean() < 1.0


def test_undecodable_everywhere_uses_the_fallback_image(folder):
    config = config_for(folder)
    dataset = dataset_of(folder)
    batch = _gpu_batch(dataset, config, [0, 1, 2, 3])
    flat = batch["jpeg"].clone()
    start = int(batch["jpeg_sizes"][0]) // 2
    flat[start: int(batch["jpeg_sizes"][0]) - 2] = 0  # keep header and end marker, wipe the scan data
    batch["jpeg"] = flat
    asked = []

    def fallback(k):
        asked.append(k)
        return torch.full((3, 10, 12), 7, dtype=torch.uint8)

    def failing(data, *args, **kwargs):
        raise RuntimeError("cannot decode")

    import torchvision.io
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torchvision.io, "decode_jpeg", failing)
        patch.setattr(jpeg, "_pil_decode", lambda data: (_ for _ in ()).throw(OSError("bad")))
        cropped, reasons = decode_and_crop(batch, "cpu", SIZE, fallback=fallback)
    assert asked == [0, 1, 2, 3] and sum(reasons.values()) == 4
    assert (cropped["query"] == 7).all()  # boxes clamped to the smaller replacement image


# ---------------------------------------------------------------------------------- the pipeline


def _epoch(pipeline, epoch=0, table=None):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(pipeline.epoch(epoch, table))
    return batches, [str(w.message) for w in caught if "data.decode=gpu" in str(w.message)]


@pytest.mark.parametrize("extra", [(), ("method.name=clim", "method.resolutions=[24,16]"),
                                   ("method.multicrop=true",)])
def test_pipeline_yields_the_device_path_dict(folder, extra):
    config = config_for(folder, *extra)
    dataset = dataset_of(folder)
    device = torch.device("cpu")
    table = random_table(len(dataset)) if "method.name=clim" in extra else None
    reference = build_pipeline(dataset, view_spec(config, SIZE), loader_spec(config), device, decode="cpu")
    gpu = build_pipeline(dataset, view_spec(config, SIZE), loader_spec(config), device, decode="gpu")
    assert len(gpu) == len(reference)
    ref_batches, _ = _epoch(reference, 2, table)
    gpu_batches, messages = _epoch(gpu, 2, table)
    stats = gpu.source.part.decode_stats
    assert messages == [] and stats["images"] == len(gpu) * BATCH * (2 if table is not None else 1)
    assert len(gpu_batches) == len(ref_batches)
    for got, expected in zip(gpu_batches, ref_batches):
        assert set(got) == KEYS == set(expected)
        for key in ("index", "label", "positive_index"):
            assert (got[key] is None and expected[key] is None) or torch.equal(got[key], expected[key])
        for key in ("query", "key", "positive_key", "positive_query", "small_crops"):
            if expected[key] is None:
                assert got[key] is None, key
                continue
            assert len(got[key]) == len(expected[key]), key
            for a, b in zip(got[key], expected[key]):
                assert a.shape == b.shape and a.dtype == b.dtype == torch.float32, key
                # same photometric draws; inputs differ by the decoders' +-1 rounding
                assert (a - b).abs().mean() < 0.02, (key, (a - b).abs().mean())


def test_background_thread_gives_the_same_batches(folder):
    config = config_for(folder, "method.name=clim")
    dataset = dataset_of(folder)
    table = random_table(len(dataset))
    threaded, _ = _epoch(build_pipeline(dataset, view_spec(config, SIZE), loader_spec(config), torch.device("cpu"), decode="gpu"), 0, table)
    inline, _ = _epoch(build_pipeline(dataset, view_spec(config, SIZE), loader_spec(config), torch.device("cpu"), decode="gpu", background=False),
                       0, table)
    for a, b in zip(threaded, inline, strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["positive_index"], b["positive_index"])
        for key in ("query", "key", "positive_key", "positive_query"):
            assert all(torch.equal(x, y) for x, y in zip(a[key], b[key]))


def test_one_warning_per_epoch_with_the_count(mixed_folder):
    config = config_for(mixed_folder, "data.num_workers=2")
    dataset = dataset_of(mixed_folder)
    pipeline = build_pipeline(dataset, view_spec(config, SIZE), loader_spec(config), torch.device("cpu"), decode="gpu")
    seen = 0
    for epoch in range(2):
        batches, messages = _epoch(pipeline, epoch)
        stats = pipeline.source.part.decode_stats
        fallback = sum(stats["fallback"].values())
        assert stats["images"] == len(batches) * BATCH and 1 <= fallback <= 4
        assert len(messages) == 1
        assert messages[0].startswith(f"data.decode=gpu, epoch {epoch}: {fallback} of {stats['images']} images")
        seen += fallback
    assert seen >= 2


def test_errors_in_the_background_thread_reach_the_caller(folder, monkeypatch):
    config = config_for(folder)
    pipeline = build_pipeline(dataset_of(folder), view_spec(config, SIZE), loader_spec(config), torch.device("cpu"), decode="gpu")

    def broken(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(jpeg, "decode_and_crop", broken)
    with pytest.raises(ValueError, match="boom"):
        next(iter(pipeline.epoch(0)))


def test_stopping_early_ends_the_thread(folder):
    import threading

    pipeline = build_pipeline(dataset_of(folder), view_spec(config_for(folder), SIZE), loader_spec(config_for(folder)), torch.device("cpu"), decode="gpu")
    batches = pipeline.epoch(0)
    next(batches)
    assert any(t.name.startswith("clim-lookahead") for t in threading.enumerate())
    batches.close()
    assert not any(t.name.startswith("clim-lookahead") for t in threading.enumerate())


# ---------------------------------------------------------------------------------- the choice


def test_resolve_decode(folder, monkeypatch):
    dataset = dataset_of(folder)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_decode(loader_spec(config_for(folder, "data.augment=auto")), dataset, cpu) == "cpu"
    with pytest.raises(ValueError, match="CUDA device"):
        resolve_decode(loader_spec(config_for(folder, "data.decode=gpu")), dataset, cpu)
    monkeypatch.setattr(data_pipeline, "cuda_decode_problem", lambda device: None)
    assert resolve_decode(loader_spec(config_for(folder, "data.augment=auto")), dataset, cuda) == "gpu"
    assert resolve_decode(loader_spec(config_for(folder, "data.augment=device", "data.decode=gpu")), dataset, cuda) == "gpu"
    assert resolve_decode(loader_spec(config_for(folder, "data.augment=loader")), dataset, cuda) == "cpu"
    assert resolve_decode(loader_spec(config_for(folder, "data.decode=cpu")), dataset, cuda) == "cpu"
    with pytest.raises(ValueError, match="data.augment=device"):
        resolve_decode(loader_spec(config_for(folder, "data.augment=loader", "data.decode=gpu")), dataset, cuda)
    digits = build_dataset("digits", split="pretrain")
    assert resolve_decode(loader_spec(config_for(folder, "data.augment=auto")), digits, cuda) == "cpu"
    monkeypatch.setattr(data_pipeline, "cuda_decode_problem", lambda device: "RuntimeError: no nvJPEG")
    assert resolve_decode(loader_spec(config_for(folder, "data.augment=auto")), dataset, cuda) == "cpu"
    with pytest.raises(ValueError, match="no nvJPEG"):
        resolve_decode(loader_spec(config_for(folder, "data.decode=gpu")), dataset, cuda)


def test_build_pipeline_choice(folder, monkeypatch):
    dataset = dataset_of(folder)
    device_path = build_pipeline(dataset, view_spec(config_for(folder), SIZE), loader_spec(config_for(folder)), torch.device("cpu"))
    assert (device_path.mode, device_path.decode) == ("device", "cpu")
    assert build_pipeline(dataset, view_spec(config_for(folder, "data.augment=auto"), SIZE), loader_spec(config_for(folder, "data.augment=auto")), torch.device("cpu")).mode == "loader"
    monkeypatch.setattr(data_pipeline, "resolve_decode", lambda config, dataset, device: "gpu")
    assert build_pipeline(dataset, view_spec(config_for(folder), SIZE), loader_spec(config_for(folder)), torch.device("cpu")).decode == "gpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(folder):
    """On a GPU: nvJPEG + device crops vs torchvision's CPU decoder + the same crops."""
    config = config_for(folder, "method.name=clim")
    dataset = dataset_of(folder)
    table = random_table(len(dataset))
    batch = _gpu_batch(dataset, config, list(range(8)), 0, table)
    on_cuda, reasons = decode_and_crop(batch, "cuda", SIZE)
    on_cpu, _ = decode_and_crop(batch, "cpu", SIZE)
    assert reasons == Counter()
    for name in ("query", "key", "positive_key", "positive_query"):
        diff = (on_cuda[name].cpu().int() - on_cpu[name].int()).abs()
        assert diff.float().mean() < 1.5 and diff.max() <= 32, name


def test_crop_views_resizes_on_the_cpu_where_the_device_kernel_refuses(monkeypatch):
    """CUDA's antialiased interpolate raises beyond ~94x downscale; that crop is resized on the CPU."""
    image = torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8)
    boxes = torch.tensor([[0, 0, 30, 40], [5, 5, 20, 20]])
    args = ([image], torch.tensor([0, 0]), boxes, torch.tensor([False, True]), 8)
    expected = jpeg.crop_views(*args)
    real, calls = jpeg.F.interpolate, []

    def refuse_the_first(tensor, **options):
        calls.append(tensor.device)
        if len(calls) == 1:
            raise RuntimeError("Provided interpolation parameters can not be handled with current algorithm "
                               "implementation. Please reduce the scale factor. Too much shared memory required")
        return real(tensor, **options)

    monkeypatch.setattr(jpeg.F, "interpolate", refuse_the_first)
    assert torch.equal(jpeg.crop_views(*args), expected)
    assert len(calls) == 3  # the refused call, its CPU retry, the second view
