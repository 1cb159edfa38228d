"""JPEG files on the training device: header sniffing, batched decoding, crops (``data.decode=gpu``).

:func:`jpeg_size` tells from a file's header whether nvJPEG's batched path can decode it;
:func:`decode_and_crop` is the training-process half of :class:`~clim.data.gpu_decode.GpuDecodePipeline`:
one ``torchvision.io.decode_jpeg(list, device=...)`` call per batch, then every view cropped, resized
(antialiased bilinear, as PIL) and flipped on the device. Files that fail on the device are decoded
with PIL instead and counted.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF

from clim.data.transforms import ensure_mode

_SOF_BASELINE = (0xC0, 0xC1)  # baseline and extended sequential Huffman: nvJPEG's hardware path
_SOF_PROGRESSIVE = (0xC2, 0xC6)
_SOF_OTHER = (0xC3, 0xC5, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)  # lossless, hierarchical, arithmetic
_STANDALONE = set(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM: markers without a length
_OTHER_FORMATS = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"), (b"RIFF", "WebP"),
                  (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def jpeg_size(data: bytes | bytearray | memoryview) -> tuple[int, int] | str:
    """``(height, width)`` of a JPEG that nvJPEG's batched path decodes, else why the file goes to PIL.

    Reads the markers up to the frame header only (no decoding): the format, the coding process
    (baseline / extended sequential Huffman only), 8-bit samples, 1 or 3 components not stored as RGB
    (Adobe transform 0) and the end-of-image marker (a truncated file).
    """
    data = memoryview(data)
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        head = bytes(data[:8])
        return next((f"{name} file" for magic, name in _OTHER_FORMATS if head.startswith(magic)), "not a JPEG")
    if bytes(data[-2:]) != b"\xff\xd9":
        return "JPEG without end marker (truncated?)"
    adobe_transform = None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return "corrupt JPEG header"
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return "corrupt JPEG header"
        length = (data[pos + 2] << 8) | data[pos + 3]
        segment = data[pos + 4: pos + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return "corrupt JPEG header"
        if marker == 0xEE and bytes(segment[:5]) == b"Adobe" and len(segment) >= 12:
            adobe_transform = segment[11]
        if marker in _SOF_PROGRESSIVE:
            return "progressive JPEG"
        if marker in _SOF_OTHER:
            return "lossless / hierarchical / arithmetic-coded JPEG"
        if marker in _SOF_BASELINE:
            if len(segment) < 6:
                return "corrupt JPEG header"
            precision, components = segment[0], segment[5]
            height, width = (segment[1] << 8) | segment[2], (segment[3] << 8) | segment[4]
            if precision != 8:
                return f"{precision}-bit JPEG"
            if components == 4:
                return "CMYK JPEG"
            if components not in (1, 3):
                return f"{components}-component JPEG"
            if components == 3 and adobe_transform == 0:
                return "RGB-coded JPEG"
            if height == 0 or width == 0:
                return "corrupt JPEG header"
            return height, width
        pos += 2 + length
    return "corrupt JPEG header"


def _pil_decode(encoded: torch.Tensor) -> torch.Tensor:
    with Image.open(io.BytesIO(encoded.numpy().tobytes())) as image:
        image.load()
        return TF.pil_to_tensor(ensure_mode(image, 3))


def decode_jpegs(encoded: list[torch.Tensor], device: torch.device | str) -> tuple[list, list[str | None]]:
    """Decode ``encoded`` (CPU uint8 byte tensors) to RGB uint8 ``[3, H, W]`` on ``device`` in one
    ``torchvision.io.decode_jpeg`` call (batched nvJPEG on CUDA; libjpeg on CPU). If the batch call
    fails, each file is retried alone; a file that still fails is decoded with PIL here (moved to
    ``device``) and gets a reason, or stays None when PIL cannot read it either."""
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    if not encoded:
        return [], []
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)), [None] * len(encoded)
    except RuntimeError:
        pass
    images, reasons = [], []
    for data in encoded:
        try:
            images.append(decode_jpeg([data], mode=ImageReadMode.RGB, device=device)[0])
            reasons.append(None)
            continue
        except RuntimeError as error:
            reasons.append(f"device decode failed ({str(error).splitlines()[0][:80]})")
        try:
            images.append(_pil_decode(data).to(device))
        except Exception:  # PIL signals bad data with many types
            images.append(None)
    return images, reasons


def crop_views(images: list[torch.Tensor], image_ids: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
               size: int) -> torch.Tensor:
    """uint8 ``[V, C, size, size]``: view v is ``images[image_ids[v]]`` cropped to ``boxes[v]`` = (x0, y0, w, h),
    resized with antialiased bilinear interpolation (as PIL's, which the CPU path uses) and mirrored
    where ``flips[v]``. Boxes are clamped to their image (they always fit, unless a file was replaced
    by another image after its header was read)."""
    out = []
    for k, (x0, y0, w, h) in zip(image_ids.tolist(), boxes.tolist()):
        image = images[k]
        height, width = image.shape[-2:]
        x0, y0 = min(x0, width - 1), min(y0, height - 1)
        crop = image[:, y0: y0 + min(h, height - y0), x0: x0 + min(w, width - x0)]
        out.append(_resize(crop.unsqueeze(0).float(), size))
    views = torch.cat(out)
    flips = flips.to(views.device)
    views = torch.where(flips[:, None, None, None], views.flip(-1), views)
    return views.round_().clamp_(0, 255).to(torch.uint8)


def _resize(crop: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of ``crop`` [1, C, H, W] to ``size`` x ``size``. CUDA's antialiased
    kernel keeps a block's filter weights in shared memory and refuses downscales beyond ~94x ("Please
    reduce the scale factor"); such a (rare) crop is resized on the CPU instead, which gives the same
    result (it runs in the decode thread, not the training loop)."""
    options = dict(size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    try:
        return F.interpolate(crop, **options)
    except RuntimeError as error:
        if "reduce the scale factor" not in str(error):
            raise
        return F.interpolate(crop.cpu(), **options).to(crop.device)


def decode_and_crop(batch: dict, device: torch.device | str, size: int, small_size: int | None = None,
                    fallback: Callable[[int], torch.Tensor] | None = None) -> tuple[dict, Counter]:
    """The training-process half of the GPU decode path, for any ``device``: a :func:`collate_encoded`
    batch → ``(cropped, reasons)``. ``cropped`` holds what the CPU path's workers deliver (the keys of
    :class:`~clim.data.device_pipeline.CroppedViewsDataset` batches: index, label, query, key and, where
    drawn, positive_index, positive_key, positive_query, small_crops ``[B, V, C, s, s]``), uint8 on
    ``device``. ``reasons`` counts the images not decoded on the device, by reason.
    ``fallback(k)``: image number k as uint8 ``[C, H, W]`` when neither the device nor PIL can decode
    its bytes (the pipeline loads the dataset's replacement image)."""
    device = torch.device(device)
    count = len(batch["jpeg_ids"]) + len(batch["decoded_ids"])
    images: list[torch.Tensor | None] = [None] * count
    encoded = list(torch.split(batch["jpeg"], batch["jpeg_sizes"].tolist())) if len(batch["jpeg_ids"]) else []
    decoded, failed = decode_jpegs(encoded, device)
    reasons = Counter(batch["fallback"]) + Counter(r for r in failed if r is not None)
    for k, image in zip(batch["jpeg_ids"].tolist(), decoded):
        if image is None:
            if fallback is None:
                raise RuntimeError(f"image {k} of the batch can be decoded neither on {device} nor with PIL")
            image = fallback(k).to(device)
        images[k] = image
    for k, image in zip(batch["decoded_ids"].tolist(), batch["decoded"]):
        images[k] = image.to(device, non_blocking=True)
    cropped = {"index": batch["index"].to(device), "label": batch["label"].to(device)}
    if "positive_index" in batch:
        cropped["positive_index"] = batch["positive_index"].to(device)
    views = batch["views"]
    for name in ("query", "key", "positive_key", "positive_query"):
        if name in views:
            cropped[name] = crop_views(images, views[name]["image"], views[name]["box"], views[name]["flip"], size)
    small = sorted(name for name in views if name.startswith("small_crops."))
    if small:
        cropped["small_crops"] = torch.stack(
            [crop_views(images, views[n]["image"], views[n]["box"], views[n]["flip"], small_size) for n in small],
            dim=1)
    return cropped, reasons


_PROBES: dict[str, str | None] = {}  # device -> why it cannot decode (None: it can), probed once


def cuda_decode_problem(device: torch.device | str) -> str | None:
    """None if torchvision decodes JPEGs on ``device`` (a tiny JPEG is decoded once), else why not."""
    device = torch.device(device)
    key = str(device)
    if key not in _PROBES:
        try:
            from torchvision.io import decode_jpeg

            buffer = io.BytesIO()
            Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, "JPEG")
            encoded = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
            decode_jpeg([encoded], device=device)
            _PROBES[key] = None
        except Exception as error:  # no nvJPEG in this build, no driver, ...
            _PROBES[key] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return _PROBES[key]
