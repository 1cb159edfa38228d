"""Build the glyphs dataset (clim.data.glyphs) from installed font packages into a folder.

    apt-get install -y --no-install-recommends $(python scripts/build_glyphs.py --print-packages)
    python scripts/build_glyphs.py --out ~/.cache/clim/glyphs --classes 200 --size 20

A class is a CJK character that every usable face draws; an instance is one face with a seeded
nuisance. Train and test faces come from disjoint font families. ``--holdout val`` builds the
tuning variant: the test families are left out entirely and the training families are split again,
the held-out part standing in as the test split. ``--fonts FILE_OR_FOLDER ... --chars ABC`` builds
from arbitrary font files instead (the tests use matplotlib's DejaVu fonts). Prints what it used
and writes ``manifest.json`` beside the arrays (uint8 .npy).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from clim.data import glyphs

# CJK font packages of Debian 12 (bookworm); derived / overlapping ones are grouped by
# clim.data.glyphs.LINEAGES and by glyph similarity, so listing them all costs no leak.
DEFAULT_PACKAGES = (
    "fonts-aoyagi-kouzan-t", "fonts-aoyagi-soseki", "fonts-arphic-bkai00mp", "fonts-arphic-bsmi00lp",
    "fonts-arphic-gbsn00lp", "fonts-arphic-gkai00mp", "fonts-arphic-ukai", "fonts-arphic-uming", "fonts-baekmuk",
    "fonts-cns11643-kai", "fonts-cns11643-sung", "fonts-cwtex-heib", "fonts-cwtex-kai", "fonts-cwtex-ming",
    "fonts-dejima-mincho", "fonts-droid-fallback", "fonts-hanazono", "fonts-horai-umefont", "fonts-ipaexfont-gothic",
    "fonts-ipaexfont-mincho", "fonts-ipafont-gothic", "fonts-ipafont-mincho", "fonts-ipamj-mincho", "fonts-kiloji",
    "fonts-klee", "fonts-konatu", "fonts-kouzan-mouhitsu", "fonts-lxgw-wenkai", "fonts-migmix", "fonts-mona",
    "fonts-monapo", "fonts-morisawa-bizud-gothic", "fonts-morisawa-bizud-mincho", "fonts-motoya-l-cedar",
    "fonts-motoya-l-maruberi", "fonts-noto-cjk", "fonts-oradano-mincho-gsrr", "fonts-sawarabi-gothic",
    "fonts-sawarabi-mincho", "fonts-seto", "fonts-smiley-sans", "fonts-takao-gothic", "fonts-takao-mincho",
    "fonts-umeplus", "fonts-unfonts-core", "fonts-vlgothic", "fonts-wqy-microhei", "fonts-wqy-zenhei",
)
MIN_BLOCK_CHARS = 3000  # a face must map this many CJK ideographs (drops extension-block companions)
PROBE = "\u6c38"  # 永: every stroke type; a face that cannot draw it is left out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "clim" / "glyphs",
                        help="folder to write (created; default: ~/.cache/clim/glyphs, where the registry looks "
                             "when data.root is not set)")
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--size", type=int, default=20, help="image side in pixels (the training resolution)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES))
    parser.add_argument("--fonts", nargs="+", type=Path, help="font files or folders instead of packages")
    parser.add_argument("--chars", help="the classes, verbatim (default: chosen among the shared CJK ideographs)")
    parser.add_argument("--probe", default=PROBE, help="a character every usable face must draw")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="of the font families")
    parser.add_argument("--per-family", type=int, default=4, help="faces kept per family (0: all)")
    parser.add_argument("--similarity", type=float, default=glyphs.BuildOptions.similarity)
    parser.add_argument("--train-copies", type=int, default=1, help="nuisance draws per train face and class")
    parser.add_argument("--test-copies", type=int, default=1)
    parser.add_argument("--rotation", type=float, default=glyphs.Nuisance.rotation)
    parser.add_argument("--scale", type=float, nargs=2, default=glyphs.Nuisance.scale)
    parser.add_argument("--shift", type=float, default=glyphs.Nuisance.shift)
    parser.add_argument("--thicken-p", type=float, default=glyphs.Nuisance.thicken_p)
    parser.add_argument("--holdout", choices=("test", "val"), default="test")
    parser.add_argument("--print-packages", action="store_true", help="print the default packages and exit")
    return parser.parse_args(argv)


def find_faces(args: argparse.Namespace) -> tuple[list[glyphs.Face], list[str]]:
    """The candidate faces, and where they came from (for the printout)."""
    if not args.fonts:
        return glyphs.package_faces(args.packages), list(args.packages)
    files = []
    for entry in args.fonts:
        files += sorted(p for p in entry.rglob("*") if p.suffix.lower() in glyphs.FONT_SUFFIXES) if entry.is_dir() \
            else [entry]
    return [face for file in files for face in glyphs.read_faces(file)], [str(p) for p in args.fonts]


def select(args: argparse.Namespace, faces: list[glyphs.Face]) -> tuple[list[glyphs.Face], list[str], list]:
    """(usable faces, the classes, [(face, why it was left out)])."""
    required = list(args.chars) if args.chars else None
    covering, rejected = glyphs.covering_faces(faces, required, glyphs.CJK_BLOCK, 0 if required else MIN_BLOCK_CHARS)
    usable, failed = glyphs.usable_faces(covering, args.probe, args.size)
    rejected += failed
    pool = required or glyphs.shared_characters(usable)
    chars = glyphs.choose_characters(usable, pool, len(pool) if required else args.classes, args.seed, args.size)
    usable, placeholders = glyphs.distinct_faces(usable, chars, args.size)
    return usable, chars, rejected + placeholders


def options_of(args: argparse.Namespace) -> glyphs.BuildOptions:
    nuisance = glyphs.Nuisance(args.rotation, tuple(args.scale), args.shift, args.thicken_p)
    return glyphs.BuildOptions(args.size, args.seed, nuisance, args.test_fraction, args.per_family or None,
                               args.similarity, args.train_copies, args.test_copies, args.holdout)


def report(sources: list[str], rejected: list, built: glyphs.GlyphSet) -> None:
    manifest = built.manifest
    faces = manifest["faces"]
    print(f"sources ({len(sources)}): {' '.join(sources)}")
    for face, why in rejected:
        print(f"  left out {face.label} ({face.name}): {why}")
    used = Counter(face["split"] for face in faces)
    families = {face["family"]: set() for face in faces}
    for face in faces:
        families[face["family"]].add(face["split"])
    print(f"faces: {len(faces)} usable; train {used['train']}, test {used['test']}, unused {used['unused']} "
          f"(over the per-family cap, or held out)")
    print(f"families: {len(families)}")
    for family, splits in sorted(families.items()):
        members = [f for f in faces if f["family"] == family]
        kept = [f"{f['name']} {f['style']}".strip() for f in members if f["split"] != "unused"]
        print(f"  {'/'.join(sorted(splits - {'unused'})) or 'unused':6s} {family} ({len(members)} faces; kept: "
              f"{', '.join(kept)})")
    print(f"classes: {manifest['num_classes']} ({''.join(manifest['classes'][:20])}...)")
    print(f"images: train {manifest['counts']['train']}, test {manifest['counts']['test']} at "
          f"{manifest['image_size']} px; mean {manifest['mean'][0]}, std {manifest['std'][0]}; highest "
          f"train/test face similarity {manifest['max_similarity_across_splits']}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.print_packages:
        print(" ".join(DEFAULT_PACKAGES))
        return 0
    started = time.perf_counter()
    faces, sources = find_faces(args)
    usable, chars, rejected = select(args, faces)
    built = glyphs.build_glyph_set(usable, chars, options_of(args))
    built.manifest["sources"] = sources
    built.manifest["command"] = " ".join(["python", "scripts/build_glyphs.py", *argv])
    built.manifest["left_out"] = [{"label": face.label, "name": face.name, "why": why} for face, why in rejected]
    path = glyphs.save_glyphs(args.out, built)
    report(sources, rejected, built)
    print(f"wrote {args.out} ({sum(a.nbytes for a in built.arrays.values()) / 1e6:.1f} MB) in "
          f"{time.perf_counter() - started:.0f} s; manifest {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
