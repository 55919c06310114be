"""Sampling parameters, clamped on the server whatever the client sends."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from chatlm.errors import InputError

MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 64
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
"""OpenAI's range for ``seed`` (a signed 64-bit integer); torch's generator takes all of it."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples; every request in a shared batch keeps its own."""

    temperature: float = 0.7
    """0 means greedy."""
    top_p: float = 0.9
    top_k: int = 0
    """0 means no top-k cut."""
    max_new_tokens: int = 256
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None

    def clamped(self, max_new_tokens_limit: int) -> SamplingParams:
        """Bring values into range: the server's limits win over the client's wishes."""
        return replace(
            self,
            temperature=min(max(float(self.temperature), 0.0), 2.0),
            top_p=min(max(float(self.top_p), 0.01), 1.0),
            top_k=max(int(self.top_k), 0),
            max_new_tokens=min(max(int(self.max_new_tokens), 1), max_new_tokens_limit),
            stop=tuple(s for s in self.stop if s)[:MAX_STOP_STRINGS],
        )

    def validate(self) -> SamplingParams:
        """Strict checks for API callers, who should hear about a bad value."""
        if not 0.0 <= self.temperature <= 2.0:
            raise InputError(f"temperature must be between 0 and 2, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InputError(f"top_k must be 0 (no cut) or more, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise InputError(f"max_tokens must be at least 1, got {self.max_new_tokens}")
        if len(self.stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_LENGTH for s in self.stop):
            raise InputError(
                f"stop takes at most {MAX_STOP_STRINGS} strings of {MAX_STOP_LENGTH} characters"
            )
        if not all(self.stop):
            raise InputError("stop strings must not be empty")
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            raise InputError(f"seed must be between {SEED_MIN} and {SEED_MAX}, got {self.seed}")
        return self

    def as_dict(self) -> dict[str, object]:
        return {
            "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens, "stop": list(self.stop), "seed": self.seed,
        }
