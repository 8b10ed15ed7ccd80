class SequenceTagger:
    @classmethod
    def load(cls, *a, **k):
        raise RuntimeError("flair stub: not installed (only imported by TextAttack)")
