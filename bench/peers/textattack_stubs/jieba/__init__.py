"""Import-only stand-in for jieba (Chinese word segmentation; unused for English)."""


def cut(*a, **k):
    raise RuntimeError("jieba stub: not installed (only imported by TextAttack)")


lcut = cut
