"""Fine-tuning rounds: stored ratings -> a LoRA adapter, trained in a worker process, evaluated on
held-out feedback and registered (``data`` picks the method, ``worker`` trains, ``rounds`` starts
and follows a round, ``evaluate`` measures it, ``cli`` is ``python -m chatlm train | adapters``)."""

METHODS = ("auto", "sft", "kto", "dpo", "document", "reader")
"""Training methods a round accepts; ``auto`` picks DPO, KTO or SFT from the ratings, never
``document``, which learns one text (``document`` module), or ``reader``, which learns to answer
from passages on a SQuAD file (``reader`` module), instead of ratings."""
