"""Turn an uploaded file (or pasted text) into plain text for chunking.

Everything here handles untrusted input: sizes are capped, binary files are refused (``encodings``),
markup is stripped (``markup``), and PDFs are read by pypdf in a separate process with a time and
memory limit, because crafted PDFs have made pypdf loop or allocate without bound. Every refusal is
an ``InputError`` a user can act on.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import PurePath

from chatlm.errors import InputError
from chatlm.knowledge.encodings import CONTROL, decode_text
from chatlm.knowledge.markup import html_to_text, markdown_to_text

MAX_BYTES = 20 * 1024 * 1024
PDF_TIMEOUT_S = 30.0
PDF_MEMORY_BYTES = 1024**3
SUPPORTED = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")


def _limit_text(n: int) -> str:
    return f"{n / 1024**2:.3g} MB" if n >= 1024**2 else f"{n} bytes"


def _clean(text: str) -> str:
    """Unix newlines, no control characters, no trailing spaces, at most one blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    text = CONTROL.sub("", text.replace("\ufeff", ""))
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _nonempty(text: str, what: str) -> str:
    if not text.strip():
        raise InputError(f"{what} contains no text.")
    return text


def parse_text(text: str, *, max_bytes: int = MAX_BYTES) -> str:
    """Pasted text, normalised like a file's; refuses empty or oversized text."""
    if len(text) > max_bytes or len(text.encode("utf-8", "replace")) > max_bytes:
        raise InputError(f"The pasted text is too long; the limit is {_limit_text(max_bytes)}.")
    return _nonempty(_clean(text), "The pasted text")


_PDF_CHILD = """
import io, sys
memory, seconds = int(sys.argv[1]), int(sys.argv[2])
try:
    import resource
    if memory > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
except (ImportError, ValueError, OSError):
    pass
try:
    from pypdf import PdfReader
    reader = PdfReader(io.BytesIO(sys.stdin.buffer.read()))
    if reader.is_encrypted and not reader.decrypt(""):
        sys.exit(3)
    text = "\\f".join(page.extract_text() or "" for page in reader.pages)
except MemoryError:
    sys.exit(4)
except Exception as exc:
    if type(exc).__name__ == "LimitReachedError":
        sys.exit(5)
    if type(exc).__name__ in ("FileNotDecryptedError", "DependencyError"):
        sys.exit(3)
    print(type(exc).__name__, str(exc)[:300], file=sys.stderr)
    sys.exit(2)
sys.stdout.buffer.write(text.encode("utf-8", "replace"))
"""


def pdf_to_text(
    data: bytes,
    filename: str = "The PDF",
    *,
    timeout: float = PDF_TIMEOUT_S,
    memory_bytes: int = PDF_MEMORY_BYTES,
) -> str:
    """Text of a PDF, extracted by pypdf in a child process under time and memory limits."""
    cmd = [sys.executable, "-c", _PDF_CHILD, str(memory_bytes), str(max(1, int(timeout) + 1))]
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise InputError(
            f"Reading {filename} took longer than {timeout:g} s; the file may be damaged or "
            "too complex. Try saving it again or uploading it as text."
        ) from exc
    if proc.returncode == 0:
        return proc.stdout.decode("utf-8", "replace")
    if proc.returncode == 3:
        raise InputError(f"{filename} is encrypted or password-protected; upload an unlocked copy.")
    if proc.returncode == 4 or (proc.returncode != 2 and b"MemoryError" in proc.stderr):
        raise InputError(
            f"Reading {filename} needed more than {_limit_text(memory_bytes)} of memory; "
            "the file may be damaged or too complex."
        )
    if proc.returncode == 5:
        raise InputError(
            f"{filename} declares or unpacks to more data than the PDF reader allows; the file may "
            "be a decompression bomb or damaged."
        )
    if proc.returncode < 0:  # killed by a signal, e.g. the CPU-time limit
        raise InputError(f"Reading {filename} was stopped; the file may be damaged.")
    raise InputError(f"{filename} could not be read as a PDF; it may be damaged or not a PDF.")


def parse_bytes(
    data: bytes,
    filename: str,
    *,
    max_bytes: int = MAX_BYTES,
    pdf_timeout: float = PDF_TIMEOUT_S,
    pdf_memory_bytes: int = PDF_MEMORY_BYTES,
) -> str:
    """Plain text of an uploaded .txt, .md, .markdown, .html, .htm or .pdf file."""
    name = PurePath(filename).name or "The file"
    suffix = PurePath(filename).suffix.lower()
    if suffix not in SUPPORTED:
        raise InputError(
            f"{name}: unsupported file type {suffix or '(none)'}; supported types are "
            + ", ".join(SUPPORTED)
            + "."
        )
    if len(data) > max_bytes:
        raise InputError(
            f"{name} is {_limit_text(len(data))}; the limit is {_limit_text(max_bytes)}."
        )
    if suffix == ".pdf":
        text = pdf_to_text(data, name, timeout=pdf_timeout, memory_bytes=pdf_memory_bytes)
        what = f"{name} (a scanned PDF needs text recognition first)"
        return _nonempty(_clean(text), what)
    text = decode_text(data, name)
    if suffix in (".md", ".markdown"):
        text = markdown_to_text(text)
    elif suffix in (".html", ".htm"):
        text = html_to_text(text)
    return _nonempty(_clean(text), name)
