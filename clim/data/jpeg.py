"""``data.decode=gpu``: JPEGs decoded on the training device, so that CPU decoding (about 250 ImageNet-sized
images/s per core) does not cap an epoch.

The workers (:class:`EncodedViews`) only read each file's bytes, parse its header (:func:`jpeg_size`) and draw every
view's geometry as :class:`~clim.data.views.CroppedViews` does; the training process decodes the whole batch in one
``torchvision.io.decode_jpeg(list, device=...)`` call (batched nvJPEG, the hardware decoder on A100 / H100 / H200) and
crops, resizes and flips every view to uint8 (:func:`decode_and_crop`). Files nvJPEG cannot take (PNG and other
formats, progressive / CMYK / 12-bit / arithmetic-coded JPEGs, no end marker) are decoded with PIL in the worker, a
failed device decode with PIL in the training process; each epoch ends with ONE warning counting them."""

from __future__ import annotations

import io
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import suppress
from functools import cache, partial

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF

from clim.data.transforms import ensure_mode
from clim.data.views import StepViews, ViewGroup, numpy_draws

_SOF_BASELINE = (0xC0, 0xC1)  # baseline and extended sequential Huffman: nvJPEG's hardware path
_SOF_PROGRESSIVE = (0xC2, 0xC6)
_SOF_OTHER = (0xC3, 0xC5, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)  # lossless, hierarchical, arithmetic
_STANDALONE = set(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM
_OTHER_FORMATS = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"), (b"RIFF", "WebP"),
                  (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def jpeg_size(data: bytes | bytearray | memoryview) -> tuple[int, int] | str:
    """``(height, width)`` of a JPEG that nvJPEG's batched path decodes, else why the file goes to PIL; reads the
    markers up to the frame header only (no decoding), and checks the end-of-image marker (a truncated file)."""
    data = memoryview(data)
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        head = bytes(data[:8])
        return next((f"{name} file" for magic, name in _OTHER_FORMATS if head.startswith(magic)), "not a JPEG")
    if bytes(data[-2:]) != b"\xff\xd9":
        return "JPEG without end marker (truncated?)"
    adobe_transform, pos = None, 2
    while pos + 4 <= len(data):
        marker = data[pos + 1]
        if data[pos] != 0xFF or marker in (0xD9, 0xDA):  # or end of image / start of scan before any frame header
            return "corrupt JPEG header"
        if marker == 0xFF or marker in _STANDALONE:  # a fill byte, or a marker without a length (RSTn, TEM)
            pos += 1 if marker == 0xFF else 2
            continue
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
            problems = {f"{precision}-bit JPEG": precision != 8, "CMYK JPEG": components == 4,  # the first one found
                        f"{components}-component JPEG": components not in (1, 3),
                        "RGB-coded JPEG": components == 3 and adobe_transform == 0,
                        "corrupt JPEG header": height == 0 or width == 0}
            return next((problem for problem, found in problems.items() if found), (height, width))
        pos += 2 + length
    return "corrupt JPEG header"


def _pil_decode(encoded: torch.Tensor) -> torch.Tensor:
    with Image.open(io.BytesIO(encoded.numpy().tobytes())) as image:
        image.load()
        return TF.pil_to_tensor(ensure_mode(image, 3))


def read_encoded(dataset, i: int) -> tuple[tuple[torch.Tensor, int, int, str | None], int, torch.Tensor]:
    """``((payload, height, width, reason), i, label)`` of sample ``i``: ``payload`` is the file's bytes
    (uint8 ``[n]``) when ``reason`` is None, else the image decoded here with PIL (uint8 ``[C, H, W]``) and
    ``reason`` says why; ``label`` is the dataset's entry (read only for an anchor)."""
    try:
        with open(dataset.path(i), "rb") as handle:
            data = bytearray(os.fstat(handle.fileno()).st_size)
            del data[handle.readinto(data):]
        verdict = jpeg_size(data)
    except OSError as error:
        verdict = f"unreadable file ({type(error).__name__})"
    label = dataset.labels[i]
    if not isinstance(verdict, str):
        return (torch.frombuffer(data, dtype=torch.uint8), verdict[0], verdict[1], None), i, label
    image = dataset[i][0]  # PIL, with the dataset's next-decodable-image fallback
    return (TF.pil_to_tensor(image), image.height, image.width, verdict), i, label


def collate_encoded(items: list[dict]) -> dict:
    """A batch of :class:`EncodedViews` items. Image ``k = slot * B + b`` is sample b's anchor (slot 0) or
    positive (slot 1). The JPEG bytes travel as ONE flat tensor (one shared-memory segment per batch)
    with their lengths; PIL-decoded images as a list."""
    size = len(items)
    images = [(slot * size + b, *item["images"][slot])  # (k, payload, reason)
              for slot in range(len(items[0]["images"])) for b, item in enumerate(items)]
    jpeg = [(k, payload) for k, payload, reason in images if reason is None]
    decoded = [image for image in images if image[2] is not None]
    views = {}
    for name in items[0]["views"]:
        slots, boxes, flips = zip(*(item["views"][name] for item in items))
        views[name] = {"image": torch.tensor(slots) * size + torch.arange(size),
                       "box": torch.tensor(boxes, dtype=torch.long), "flip": torch.tensor(flips)}
    batch = {"index": torch.tensor([item["index"] for item in items]),
             "label": torch.tensor([item["label"] for item in items]),
             "jpeg": torch.cat([payload for _, payload in jpeg]) if jpeg else torch.empty(0, dtype=torch.uint8),
             "jpeg_sizes": torch.tensor([len(payload) for _, payload in jpeg], dtype=torch.long),
             "jpeg_ids": torch.tensor([k for k, _ in jpeg], dtype=torch.long),
             "decoded": [payload for _, payload, _ in decoded],
             "decoded_ids": torch.tensor([k for k, _, _ in decoded], dtype=torch.long),
             "fallback": [reason for _, _, reason in decoded], "views": views}
    if "positive_index" in items[0]:
        batch["positive_index"] = torch.tensor([item["positive_index"] for item in items])
    return batch


class EncodedViews:
    """``data.decode=gpu``'s part of :class:`~clim.data.views.SampleViews`. An item's ``images``: ``[(payload,
    reason)]`` for the anchor and (with a positives table) its positive (:func:`read_encoded`); its ``views``:
    ``{name: (image number, (x0, y0, w, h), flip)}``, multi-crop views named ``small_crops.<v>``.
    ``decode_stats``: the last epoch's ``{"images": n, "fallback": Counter(reason)}``."""
    draws, load, collate = staticmethod(numpy_draws), staticmethod(read_encoded), staticmethod(collate_encoded)
    pin = False  # file bytes are read by the decoder from ordinary memory

    def __init__(self, dataset, views: StepViews):
        self.dataset, self.views = dataset, views
        self.decode_stats: dict = {"images": 0, "fallback": Counter()}

    def view(self, source: tuple, group: ViewGroup, rng) -> tuple:
        _, box, flip = self.views.draw_crop(group, rng, source[1], source[2])
        return group.source, box, flip

    @staticmethod
    def item(item: dict, made: dict, sources: list) -> dict:
        views = {name: view for name, view in made.items() if name != "small_crops"}
        views.update({f"small_crops.{v}": view for v, view in enumerate(made.get("small_crops", []))})
        return {**item, "images": [(payload, reason) for payload, _, _, reason in sources], "views": views}

    def on_device(self, batches, device: torch.device, epoch: int) -> Iterator[dict]:
        """The batches decoded and cropped on ``device`` (:func:`decode_and_crop`); one warning at the end
        counts the files decoded with PIL instead."""
        stats = self.decode_stats = {"images": 0, "fallback": Counter()}
        try:
            for batch in batches:
                if device.type == "cuda":
                    # torchvision's CUDA decode_jpeg allocates its outputs on this thread's current stream, then
                    # writes them from nvJPEG's own stream without waiting on this one (pytorch/vision#9606).
                    # The caching allocator reuses a block as soon as it is freed on its stream, so the decoder
                    # can be handed memory the previous batch's queued kernels still read: draining this
                    # (side) stream first orders the allocation after them. A host wait in the look-ahead's
                    # thread, never in the training loop.
                    torch.cuda.current_stream(device).synchronize()
                cropped, reasons = decode_and_crop(batch, device, self.views.sizes[0], self.views.small_size,
                                                   partial(self._fallback_image, batch))
                stats["images"] += len(batch["jpeg_ids"]) + len(batch["decoded_ids"])
                stats["fallback"].update(reasons)
                yield cropped
        finally:
            if fallback := sum(stats["fallback"].values()):
                details = ", ".join(f"{n} {reason}" for reason, n in stats["fallback"].most_common())
                warnings.warn(f"data.decode=gpu, epoch {epoch}: {fallback} of {stats['images']} images were "
                              f"decoded with PIL on the CPU instead of on {device} ({details})", stacklevel=2)

    def _fallback_image(self, batch: dict, k: int) -> torch.Tensor:
        """Image number k of ``batch`` (anchors, then positives) as the dataset gives it, in uint8."""
        size = len(batch["index"])
        index = (batch["index"] if k < size else batch["positive_index"])[k % size]
        return TF.pil_to_tensor(self.dataset[int(index)][0])


def decode_jpegs(encoded: list[torch.Tensor], device: torch.device | str) -> tuple[list, list[str | None]]:
    """Decode ``encoded`` (CPU uint8 byte tensors) to RGB uint8 ``[3, H, W]`` on ``device`` in one
    ``torchvision.io.decode_jpeg`` call (batched nvJPEG on CUDA; libjpeg on CPU). If the batch call
    fails, each file is retried alone; a file that still fails is decoded with PIL here (moved to
    ``device``) and gets a reason, or stays None when PIL cannot read it either."""
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    if not encoded:
        return [], []
    with suppress(RuntimeError):
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)), [None] * len(encoded)
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
    resized with antialiased bilinear interpolation (as PIL's, which the CPU path uses) and mirrored where
    ``flips[v]``. Boxes are clamped to their image (they fit unless a file changed after its header was read)."""
    out = []
    for k, (x0, y0, w, h) in zip(image_ids.tolist(), boxes.tolist()):
        image = images[k]
        height, width = image.shape[-2:]
        x0, y0 = min(x0, width - 1), min(y0, height - 1)
        crop = image[:, y0: y0 + min(h, height - y0), x0: x0 + min(w, width - x0)]
        out.append(_resize(crop.unsqueeze(0).float(), size))
    views = torch.cat(out)
    views = torch.where(flips.to(views.device)[:, None, None, None], views.flip(-1), views)
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
    """The training-process half of the GPU decode path, for any ``device``: a :func:`collate_encoded` batch →
    ``(cropped, reasons)``. ``cropped``: what the CPU path's workers deliver (the keys of a
    :class:`~clim.data.views.CroppedViews` batch, small_crops ``[B, V, C, s, s]``), uint8 on ``device``;
    ``reasons`` counts the images not decoded on the device, by reason. ``fallback(k)``: image number k as uint8
    ``[C, H, W]`` when neither the device nor PIL can decode its bytes (the dataset's replacement image)."""
    device = torch.device(device)
    images: list[torch.Tensor | None] = [None] * (len(batch["jpeg_ids"]) + len(batch["decoded_ids"]))
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
    cropped = {key: batch[key].to(device) for key in ("index", "label", "positive_index") if key in batch}
    views = batch["views"]
    for name in ("query", "key", "positive_key", "positive_query"):
        if name in views:
            cropped[name] = crop_views(images, views[name]["image"], views[name]["box"], views[name]["flip"], size)
    small = sorted(name for name in views if name.startswith("small_crops."))
    if small:
        cropped["small_crops"] = torch.stack([crop_views(images, views[n]["image"], views[n]["box"], views[n]["flip"],
                                                         small_size) for n in small], dim=1)
    return cropped, reasons


@cache
def cuda_decode_problem(device: torch.device | str) -> str | None:
    """None if torchvision decodes JPEGs on ``device`` (a tiny JPEG is decoded once per device), else why not."""
    try:
        from torchvision.io import decode_jpeg

        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, "JPEG")
        encoded = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
        decode_jpeg([encoded], device=torch.device(device))
    except Exception as error:  # no nvJPEG in this build, no driver, ...
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None
