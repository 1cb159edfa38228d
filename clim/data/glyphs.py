"""Glyphs: a many-class dataset rendered from installed fonts (a class is a character, an instance a font face).

With 10 classes a random positive shares the query's class 10 % of the time, too often to tell whether CLIM's
choice of positives matters; with C characters, 1 / C. A seeded per-image :class:`Nuisance` keeps raw pixels from
solving the task, and the split is by font family (:func:`group_families`), so no test glyph has a twin among the
training fonts. ``scripts/build_glyphs.py`` writes the arrays; ``build_dataset("glyphs", root=...)`` reads them.
"""

from __future__ import annotations

import json
import subprocess
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = ["BuildOptions", "Face", "GlyphSet", "Nuisance", "build_glyph_set", "choose_characters",
           "covering_faces", "distinct_faces", "group_families", "load_glyphs", "package_faces", "read_faces",
           "render_clean", "render_split", "save_glyphs", "shared_characters", "split_families", "usable_faces"]

FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
RENDER_SCALE = 4  # glyphs are drawn at 4x the output side, then box-reduced (anti-aliasing)
EM_FRACTION = 0.8  # the em square spans this fraction of the image side (before the nuisance scale)
MANIFEST = "manifest.json"
SIMILARITY_SIZE = 64  # canvas side on which faces are compared for near-duplicates
SIMILARITY_CHARS = 100
SPLIT_IDS = {"train": 1, "test": 2}
CJK_BLOCK = (0x4E00, 0x9FFF)  # CJK Unified Ideographs
_Sifted = tuple[list["Face"], list[tuple["Face", str]]]  # (kept faces, [(left-out face, why)])
# Faces derived from one another ship in different packages; their glyphs must not straddle the split.
# Each tuple is one design lineage (package names); a package not listed is a lineage of its own.
LINEAGES = (
    # IPA fonts and their forks / mixes (Takao forks IPA; Monapo takes IPA's kanji; MigMix and Migu mix
    # M+ and IPA, their M+ kanji shared with VL Gothic, which glyph similarity then joins)
    ("fonts-ipafont-gothic", "fonts-ipafont-mincho", "fonts-ipaexfont-gothic", "fonts-ipaexfont-mincho",
     "fonts-ipamj-mincho", "fonts-takao-gothic", "fonts-takao-mincho", "fonts-monapo", "fonts-migmix"),
    ("fonts-arphic-ukai", "fonts-arphic-uming", "fonts-arphic-bkai00mp", "fonts-arphic-bsmi00lp",
     "fonts-arphic-gbsn00lp", "fonts-arphic-gkai00mp"),  # Arphic's Kaiti / Mingti and their successors UKai / UMing
    ("fonts-droid-fallback", "fonts-wqy-microhei"),  # WenQuanYi Micro Hei is derived from Droid Sans Fallback
    ("fonts-klee", "fonts-lxgw-wenkai"),  # LXGW WenKai is derived from Klee One
    ("fonts-horai-umefont", "fonts-umeplus"),  # UmePlus = Ume + M+
    ("fonts-aoyagi-kouzan-t", "fonts-kouzan-mouhitsu", "fonts-aoyagi-soseki"),  # Aoyagi's brush fonts
    ("fonts-baekmuk", "fonts-unfonts-core"),  # Korean fonts whose hanja may share an origin
)


@dataclass(frozen=True)
class Face:
    """One face of a font file (``index``: its number inside a .ttc collection)."""

    path: str
    index: int
    name: str  # the family name the font gives itself
    style: str
    package: str = ""  # the Debian package that installed it ("" for a file found otherwise)

    @property
    def label(self) -> str:
        return f"{Path(self.path).name}#{self.index}"

    def font(self, pixels: int) -> ImageFont.FreeTypeFont:
        return ImageFont.truetype(self.path, size=pixels, index=self.index)


@dataclass(frozen=True)
class Nuisance:
    """Per-image distortion, drawn uniformly: rotation in ±``rotation`` degrees, scale in ``scale``, shift in
    ±``shift`` of the side per axis, and with probability ``thicken_p`` strokes dilated by 1 to ``thicken_max``
    pixels of the 4x canvas (a quarter output pixel each). The defaults (clim/presets/ablate-glyphs.yaml) were
    chosen on a validation split of the training fonts: raw pixels reach 34 % kNN, MoCo v2 40 %; stronger ones
    (rotation 20 / 12, scale down to 0.7, shift 0.25) gave 9-15 % but lowered MoCo v2 to within a point of that."""

    rotation: float = 8.0
    scale: tuple[float, float] = (0.85, 1.05)
    shift: float = 0.15
    thicken_p: float = 0.5
    thicken_max: int = 2

    def draw(self, rng: np.random.Generator) -> dict:
        thicken = int(rng.integers(1, self.thicken_max + 1)) if rng.random() < self.thicken_p else 0
        return {"angle": float(rng.uniform(-self.rotation, self.rotation)), "scale": float(rng.uniform(*self.scale)),
                "shift": (float(rng.uniform(-self.shift, self.shift)), float(rng.uniform(-self.shift, self.shift))),
                "thicken": thicken}


def read_faces(path: str | Path, package: str = "") -> list[Face]:
    """Every face of a font file, named from its name table (typographic family, else family)."""
    from fontTools.ttLib import TTCollection, TTFont

    path = str(path)
    count = len(TTCollection(path).fonts) if path.lower().endswith(".ttc") else 1
    faces = []
    for index in range(count):
        names = TTFont(path, fontNumber=index, lazy=True)["name"]
        faces.append(Face(path, index, names.getDebugName(16) or names.getDebugName(1) or Path(path).stem,
                          names.getDebugName(17) or names.getDebugName(2) or "", package))
    return faces


def package_faces(packages: Iterable[str]) -> list[Face]:
    """The faces of the font files an installed Debian package holds (``dpkg -L``)."""
    faces = []
    for package in packages:
        listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
        if listing.returncode != 0:
            raise FileNotFoundError(f"package {package} is not installed (apt-get install -y {package})")
        for file in sorted({line for line in listing.stdout.splitlines() if line.lower().endswith(FONT_SUFFIXES)}):
            if Path(file).is_file() and not Path(file).is_symlink():
                faces += read_faces(file, package)
    return faces


def face_charset(face: Face) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    return frozenset((TTFont(face.path, fontNumber=face.index, lazy=True).getBestCmap() or {}).keys())


def draw_glyph(font: ImageFont.FreeTypeFont, char: str, canvas: int) -> np.ndarray | None:
    """``char`` white on black on a ``canvas`` square, its ink box centred; None when it draws no ink."""
    roomy = Image.new("L", (2 * canvas, 2 * canvas))  # glyphs may overhang their em box
    ImageDraw.Draw(roomy).text((canvas, canvas), char, font=font, fill=255, anchor="mm")
    box = roomy.getbbox()
    if box is None:
        return None
    ink = roomy.crop(box)
    out = Image.new("L", (canvas, canvas))
    out.paste(ink, ((canvas - ink.width) // 2, (canvas - ink.height) // 2))
    return np.asarray(out)


def render_clean(face: Face, chars: Sequence[str], size: int) -> np.ndarray:
    """Clean glyphs [len(chars), size * RENDER_SCALE, same] (uint8); raises when one draws no ink."""
    canvas = size * RENDER_SCALE
    font = face.font(round(EM_FRACTION * canvas))
    out = np.zeros((len(chars), canvas, canvas), dtype=np.uint8)
    for i, char in enumerate(chars):
        glyph = draw_glyph(font, char, canvas)
        if glyph is None:
            raise ValueError(f"{face.label} ({face.name}) draws no ink for {char!r} (U+{ord(char):04X})")
        out[i] = glyph
    return out


def distort(glyph: np.ndarray, params: dict, size: int) -> np.ndarray:
    """Apply one nuisance draw to a clean 4x glyph and reduce it to ``size`` (uint8 [size, size])."""
    image = Image.fromarray(glyph)
    if params["thicken"]:
        image = image.filter(ImageFilter.MaxFilter(2 * params["thicken"] + 1))
    canvas, centre = image.width, image.width / 2
    ox, oy = centre + params["shift"][0] * canvas, centre + params["shift"][1] * canvas
    # output = centre + shift + scale * R(angle) (input - centre); PIL wants the inverse map
    angle = np.deg2rad(params["angle"])
    cos, sin = np.cos(angle) / params["scale"], np.sin(angle) / params["scale"]
    matrix = (cos, sin, centre - cos * ox - sin * oy, -sin, cos, centre + sin * ox - cos * oy)
    image = image.transform((canvas, canvas), Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR)
    return np.asarray(image.reduce(canvas // size))


def image_rng(seed: int, split: str, face: Face, char: str, copy: int) -> np.random.Generator:
    """The generator of one image's nuisance, keyed by what the image is (not by its position)."""
    return np.random.default_rng([seed, SPLIT_IDS[split], zlib.crc32(face.label.encode()), ord(char), copy])


def usable_faces(faces: Sequence[Face], probe: str, size: int) -> _Sifted:
    """``(usable, [(face, why not)])``: the faces FreeType draws ``probe`` with (some fail: "invalid opcode")."""
    usable, rejected = [], []
    for face in faces:
        try:
            render_clean(face, [probe], size)
        except (OSError, ValueError) as error:
            rejected.append((face, f"{type(error).__name__}: {error}"))
        else:
            usable.append(face)
    return usable, rejected


def covering_faces(faces: Sequence[Face], required: Sequence[str] | None = None,
                   block: tuple[int, int] | None = CJK_BLOCK, min_chars: int = 0) -> _Sifted:
    """``(kept, [(face, why not)])``: with ``required``, the faces mapping all those characters; else those mapping
    at least ``min_chars`` of ``block`` (fonts for other scripts, or extension-block companions, would empty it)."""
    kept, rejected = [], []
    for face in faces:
        charset = face_charset(face)
        if required is not None:
            missing = [c for c in required if ord(c) not in charset]
            why = f"lacks {len(missing)} of the characters (e.g. {missing[0]!r})" if missing else ""
        else:
            count = sum(1 for c in charset if block is None or block[0] <= c <= block[1])
            why = f"maps {count} characters of the block, fewer than {min_chars}" if count < min_chars else ""
        (rejected.append((face, why)) if why else kept.append(face))
    return kept, rejected


def distinct_faces(faces: Sequence[Face], chars: Sequence[str], size: int) -> _Sifted:
    """``(kept, [(face, why not)])``: a face that draws two of ``chars`` identically is a placeholder font
    (e.g. Last Resort, one box per Unicode block), not a design of the characters."""
    kept, rejected = [], []
    for face in faces:
        seen: dict[bytes, str] = {}
        for glyph, char in zip(render_clean(face, chars, size), chars):
            first = seen.setdefault(glyph.tobytes(), char)
            if first != char:
                rejected.append((face, f"draws {first!r} and {char!r} identically"))
                break
        else:
            kept.append(face)
    return kept, rejected


def shared_characters(faces: Sequence[Face], block: tuple[int, int] | None = CJK_BLOCK) -> list[str]:
    """The characters every face maps (within ``block``, a code point range, when given), sorted."""
    charsets = [face_charset(face) for face in faces]
    codes = sorted(frozenset.intersection(*charsets)) if charsets else []
    return [chr(c) for c in codes if block is None or block[0] <= c <= block[1]]


def choose_characters(faces: Sequence[Face], pool: Sequence[str], count: int, seed: int, size: int) -> list[str]:
    """``count`` characters of ``pool`` that every face draws with ink, taken in a seeded order; sorted."""
    if count > len(pool):
        raise ValueError(f"{count} classes asked, the faces share only {len(pool)} characters")
    order = np.random.default_rng([seed, 0]).permutation(len(pool))
    fonts = [face.font(round(EM_FRACTION * size * RENDER_SCALE)) for face in faces]
    chosen = []
    for position in order:
        char = pool[int(position)]
        if all(draw_glyph(font, char, size * RENDER_SCALE) is not None for font in fonts):
            chosen.append(char)
            if len(chosen) == count:
                return sorted(chosen)
    raise ValueError(f"only {len(chosen)} of the {len(pool)} shared characters draw ink in every face; "
                     f"{count} asked")


def glyph_similarity(clean: Sequence[np.ndarray]) -> np.ndarray:
    """[F, F] mean over characters of the cosine similarity between faces' clean glyphs ([C, H, W] each)."""
    flat = [glyphs.reshape(len(glyphs), -1).astype(np.float64) for glyphs in clean]
    stacked = np.stack([f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-9) for f in flat])  # [F, C, D]
    return np.einsum("fcd,gcd->fg", stacked, stacked) / stacked.shape[1]


def face_similarity(faces: Sequence[Face], chars: Sequence[str]) -> np.ndarray:
    """:func:`glyph_similarity` on up to :data:`SIMILARITY_CHARS` of ``chars`` drawn at SIMILARITY_SIZE whatever the
    dataset's resolution: at 16 px every gothic face looks alike, at 64 px a derived face (1.00 and 0.96
    measured) stands apart from an independent design in the same style (at most ~0.89)."""
    sample = list(chars[:SIMILARITY_CHARS])
    return glyph_similarity([render_clean(face, sample, SIMILARITY_SIZE // RENDER_SCALE) for face in faces])


def group_families(faces: Sequence[Face], similarity: np.ndarray | None = None, threshold: float = 1.0) -> list[str]:
    """The family of every face: faces of one package (or, outside packages, one family name) or one
    listed lineage (:data:`LINEAGES`) share a family, and so do faces whose glyph similarity exceeds
    ``threshold`` (transitively). A family is named after its members' keys, joined by ``+``."""
    keys = [next((lineage[0] for lineage in LINEAGES if face.package in lineage), face.package) if face.package
            else face.name for face in faces]
    links = [(i, keys.index(key)) for i, key in enumerate(keys)]
    if similarity is not None:
        links += [(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(similarity > threshold, k=1)))]
    component = list(range(len(faces)))  # linked faces are merged by relabelling one's component as the other's
    for i, j in links:
        merged, into = component[i], component[j]
        component = [into if c == merged else c for c in component]
    return ["+".join(sorted({key for key, c in zip(keys, component) if c == mine})) for mine in component]


def split_families(families: Sequence[str], test_fraction: float, seed: int) -> set[str]:
    """The test families: ``round(test_fraction x families)`` of them (at least one, never all), seeded."""
    names = sorted(set(families))
    if len(names) < 2:
        raise ValueError(f"a family-disjoint split needs at least two families, got {names}")
    take = min(max(round(test_fraction * len(names)), 1), len(names) - 1)
    order = np.random.default_rng([seed, 1]).permutation(len(names))
    return {names[int(i)] for i in order[:take]}


def cap_faces(faces: Sequence[Face], families: Sequence[str], per_family: int | None, seed: int) -> list[int]:
    """Indices of at most ``per_family`` faces of every family (seeded choice; all when None), so
    families of many near-identical faces (weights, regional variants) do not dominate a split."""
    keep = []
    for family in sorted(set(families)):
        members = [i for i, name in enumerate(families) if name == family]
        if per_family is not None and len(members) > per_family:
            rng = np.random.default_rng([seed, 2, zlib.crc32(family.encode())])
            members = sorted(int(i) for i in rng.choice(members, size=per_family, replace=False))
        keep += members
    return sorted(keep)


@dataclass(frozen=True)
class BuildOptions:
    """Everything a build depends on besides the font files and the characters."""

    size: int = 32
    seed: int = 0
    nuisance: Nuisance = field(default_factory=Nuisance)
    test_fraction: float = 0.25  # of the families
    per_family: int | None = 4  # faces kept per family (None: all)
    similarity: float = 0.93  # faces whose clean glyphs are more similar share a family (face_similarity)
    train_copies: int = 1  # nuisance draws per (train face, character)
    test_copies: int = 1
    holdout: str = "test"  # "val": drop the test families, split the training families again (for tuning)


@dataclass
class GlyphSet:
    arrays: dict[str, np.ndarray]  # {split}_images uint8 [N, S, S], {split}_labels, {split}_faces int16
    manifest: dict


def render_split(faces: Sequence[Face], face_ids: Sequence[int], chars: Sequence[str], split: str,
                 copies: int, options: BuildOptions) -> dict[str, np.ndarray]:
    """Every (face, copy, character) image of a split, face-major, each with its own nuisance draw."""
    count = len(faces) * copies * len(chars)
    images = np.zeros((count, options.size, options.size), dtype=np.uint8)
    labels, owners = np.zeros(count, dtype=np.int16), np.zeros(count, dtype=np.int16)
    row = 0
    for face, face_id in zip(faces, face_ids):
        clean = render_clean(face, chars, options.size)
        for copy in range(copies):
            for label, (char, glyph) in enumerate(zip(chars, clean)):
                params = options.nuisance.draw(image_rng(options.seed, split, face, char, copy))
                images[row] = distort(glyph, params, options.size)
                labels[row], owners[row] = label, face_id
                row += 1
    return {f"{split}_images": images, f"{split}_labels": labels, f"{split}_faces": owners}


def assign_splits(faces: Sequence[Face], families: Sequence[str], options: BuildOptions) -> list[str]:
    """``train`` / ``test`` / ``unused`` per face: families split by :func:`split_families`, at most ``per_family``
    faces kept per family. With ``holdout="val"`` the test families are unused and the others are split again
    into train and a validation set in the test split's place, so tuning never sees a test font."""
    test = split_families(families, options.test_fraction, options.seed)
    if options.holdout == "val":
        val = split_families([name for name in families if name not in test], options.test_fraction, options.seed + 1)
        splits = ["unused" if name in test else "test" if name in val else "train" for name in families]
    elif options.holdout == "test":
        splits = ["test" if name in test else "train" for name in families]
    else:
        raise ValueError(f"holdout must be 'test' or 'val', got {options.holdout!r}")
    kept = set(cap_faces(faces, families, options.per_family, options.seed))
    return [split if i in kept else "unused" for i, split in enumerate(splits)]


def build_glyph_set(faces: Sequence[Face], chars: Sequence[str], options: BuildOptions) -> GlyphSet:
    """Group the faces into families, split them by family and render every image of both splits."""
    if len(set(chars)) != len(chars):
        raise ValueError("characters must be distinct")
    similarity = face_similarity(faces, chars)
    families = group_families(faces, similarity, options.similarity)
    splits = assign_splits(faces, families, options)
    ids = {split: [i for i, name in enumerate(splits) if name == split] for split in ("train", "test")}
    arrays = {}
    for split, copies in (("train", options.train_copies), ("test", options.test_copies)):
        arrays.update(render_split([faces[i] for i in ids[split]], ids[split], chars, split, copies, options))
    closest = round(float(similarity[np.ix_(ids["train"], ids["test"])].max()), 4) if all(ids.values()) else None
    pixels = arrays["train_images"].astype(np.float64) / 255.0
    options_dict = asdict(options)
    options_dict["nuisance"]["scale"] = list(options_dict["nuisance"]["scale"])
    manifest = {
        "version": 1, "name": "glyphs", "image_size": options.size, "num_classes": len(chars), "classes": list(chars),
        "options": options_dict, "em_fraction": EM_FRACTION, "render_scale": RENDER_SCALE,
        "mean": [round(float(pixels.mean()), 4)], "std": [round(float(pixels.std()), 4)],
        "counts": {split: int(len(arrays[f"{split}_labels"])) for split in ("train", "test")},
        "faces": [{**asdict(face), "label": face.label, "family": family, "split": split}
                  for face, family, split in zip(faces, families, splits)],
        "max_similarity_across_splits": closest,
    }
    return GlyphSet(arrays, manifest)


def save_glyphs(folder: str | Path, glyphs: GlyphSet) -> Path:
    """``folder/{split}_{images,labels,faces}.npy`` and ``folder/manifest.json``; returns the manifest path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in glyphs.arrays.items():
        np.save(folder / f"{key}.npy", array, allow_pickle=False)
    path = folder / MANIFEST
    path.write_text(json.dumps(glyphs.manifest, indent=1, ensure_ascii=False) + "\n")
    return path


def load_glyphs(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(images uint8 [N, S, S], labels int64 [N], manifest)`` of the ``train`` or ``test`` split."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise FileNotFoundError(
            f"glyphs: {folder / MANIFEST} not found. Build the dataset first: python scripts/build_glyphs.py "
            f"--out {folder} (see that script for the font packages it needs), or point data.root at a built one")
    manifest = json.loads((folder / MANIFEST).read_text())
    images = np.load(folder / f"{split}_images.npy", allow_pickle=False)
    labels = np.load(folder / f"{split}_labels.npy", allow_pickle=False).astype(np.int64)
    if images.dtype != np.uint8 or images.ndim != 3 or labels.shape != (len(images),):
        raise ValueError(f"glyphs: {folder} holds malformed {split} arrays ({images.dtype} {images.shape}, "
                         f"labels {labels.shape})")
    return images, labels, manifest
