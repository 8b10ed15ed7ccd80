class Tokenizer:
    def __init__(self, *a, **k):
        pass


class Sentence:
    def __init__(self, *a, **k):
        raise RuntimeError("flair stub: not installed (only imported by TextAttack)")
