"""A tiny random SAMBA bundle (small SAM, untrained YOLO, voting net) for tests of the plumbing, not quality."""

import torch

TINY_SAM = {"type": "small", "img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
            "prompt_embed_dim": 32, "mlp_dim": 64, "decoder_heads": 2}
MANIFEST = {"name": "tiny", "version": "0", "description": "random", "licence": "Apache-2.0",
            "intended_use": "tests", "preprocessing": {}, "labels": {}, "training": {}, "metrics": {}}


def write_tiny_samba_bundle(folder, seed: int = 0):
    """The bundle written to `folder` (weights from `seed`); returns the folder."""
    from SAMBASegmentLib import localizer, voting
    from SAMBASegmentLib.sam_model import build_sam
    from SAMBASegmentLib.samba_bundle import SambaModels, save_samba_bundle

    torch.manual_seed(seed)
    save_samba_bundle(folder, SambaModels(build_sam(TINY_SAM), localizer.build_detector(), voting.build_voting_net()),
                      {"sam": TINY_SAM, "yolo": localizer.CONFIG, "voting": voting.CONFIG}, MANIFEST)
    return folder
