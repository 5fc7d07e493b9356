"""The SAMBA bundles shipped with SAMBA Segment, by name, and the one used when none is chosen: here,
in the shared core, because LoRA Trainer's default base is the same bundle; no imports, so that the
command line's --help and the widgets read them without loading torch."""

BUNDLED = ("litemedsam-samba", "phantom-demo")

# LiteMedSAM, pretrained on real medical images: on the three real cases of ../shared/real-dev WT Dice
# 0.885 / 0.868 / 0.671 with YOLO's boxes, against 0.69 / 0.65 / 0.28 with phantom-demo, and on the
# demo phantom (seed 20261) 0.930 against 0.912 (docs/results.md). phantom-demo stays the small, fast
# bundle of the tests (a second a case on a CPU against a minute or more).
DEFAULT_BUNDLE = "litemedsam-samba"
SMALL_BUNDLE = "phantom-demo"
