"""Hugging Face models in and out: :class:`HFTask` fine-tunes any ``transformers`` model, and
:func:`save_pretrained` turns a checkpoint back into a ``from_pretrained`` directory.

Needs the ``hf`` extra (``pip install tasktrain[hf]``); ``transformers`` is imported when a
model is built, not by ``import tasktrain``.

Example:
    >>> from tasktrain.hf import HFTask
    >>> task = HFTask("./my-bert", learning_rate=3e-5, warmup_ratio=0.1)  # doctest: +SKIP
"""

from tasktrain.hf.export import save_pretrained
from tasktrain.hf.task import HFTask

__all__ = ["HFTask", "save_pretrained"]
