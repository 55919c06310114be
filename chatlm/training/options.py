"""What a round is asked to do, typed and checked once: the Training tab, the CLI, the API and the
benches build a ``RoundOptions``, ``rounds.start_round`` takes it, and the run row stores it
(``params``) for the worker.

As TRL's and litgpt's per-method configs: a frozen value, refused whole with a message in the
product's words (naming the option, not a command-line flag) before anything starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chatlm.errors import InputError
from chatlm.training import METHODS

WINDOW = 256
"""A document round's tokens per window: long enough to carry sentences, short enough for many steps
from one text."""
MIN_WINDOW, MAX_WINDOW = 8, 512
"""A merged tail makes a window up to 1.5x this, which stays under the trainer's MAX_LENGTH."""


def check_window(window: int) -> None:
    """A document round's window, or the one ``eval perplexity`` cuts a text into: within bounds."""
    if not MIN_WINDOW <= window <= MAX_WINDOW:
        raise InputError(f"The window must be between {MIN_WINDOW} and {MAX_WINDOW} tokens.")


@dataclass(frozen=True)
class RoundOptions:
    method: str = "auto"
    epochs: float | None = None
    """Passes over the data; None: the method's own choice."""
    lr: float | None = None
    max_steps: int | None = None
    from_active: bool = False
    """Continue training the active adapter instead of starting from the base model."""
    guests: bool = False
    """Also learn from guests' ratings."""
    squad: str | None = None
    """A SQuAD-format file for a QA F1 figure in the round's evaluation."""
    squad_limit: int | None = None
    reader_data: str | None = None
    """A reader round's SQuAD training file."""
    reader_limit: int | None = None
    reader_skip: int = 0
    document: int | None = None
    """A document round's text: a stored document's id, or a file (``text``)."""
    text: str | None = None
    window: int | None = None
    batch_size: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"The training method must be one of {', '.join(METHODS)}.")
        if self.epochs is not None and not self.epochs > 0:
            raise InputError("The passes over the data (epochs) must be more than 0.")
        if self.lr is not None and not 0 < self.lr < 1:
            raise InputError("The learning rate must be between 0 and 1.")
        for name in ("max_steps", "squad_limit", "reader_limit", "batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InputError(f"{name.replace('_', ' ').capitalize()} must be a whole number of at least 1.")
        if self.squad and not Path(self.squad).is_file():
            raise InputError(f"No SQuAD file at {self.squad}.")
        if self.method == "reader":
            if not self.reader_data or not Path(self.reader_data).is_file():
                raise InputError("A reader round needs a SQuAD training file to read "
                                 "(e.g. ../shared/data/squad2-train-sample.json).")
        elif self.reader_data:
            raise InputError("A SQuAD training file (reader data) is for a reader round.")
        self._check_document()

    def _check_document(self) -> None:
        if self.method != "document":
            if self.document is not None or self.text is not None or self.window is not None:
                raise InputError("A text to learn (document, text, window) is for a document round.")
            return
        if (self.document is None) == (self.text is None):
            raise InputError("A document round needs one text: a loaded text's id, or a text file.")
        if self.window is not None:
            check_window(self.window)
        if self.text is not None and not Path(self.text).is_file():
            raise InputError(f"No file at {self.text}.")

    def params(self) -> dict[str, Any]:
        """The run row's ``params``: files as absolute paths (the worker runs elsewhere), a document
        round's window filled in, a reader round's adapters named ``reader-vN``."""
        out = asdict(self)
        del out["method"]
        for name in ("squad", "reader_data", "text"):
            if out[name]:
                out[name] = str(Path(out[name]).resolve())
        if self.method == "document":
            out["window"] = self.window or WINDOW
        if self.method == "reader":
            out["prefix"] = "reader"
        return {k: v for k, v in out.items() if v is not None}
