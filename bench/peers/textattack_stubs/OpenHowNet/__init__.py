"""Import-only stand-in for OpenHowNet (Chinese sememes; unused for English)."""


class HowNetDict:
    def __init__(self, *a, **k):
        raise RuntimeError("OpenHowNet stub: not installed (only imported by TextAttack)")


def download(*a, **k):
    raise RuntimeError("OpenHowNet stub")
