"""Turn an uploaded file (or pasted text) into plain text for chunking.

Everything here handles untrusted input: sizes are capped, binary files are refused, and PDFs
are read by pypdf in a separate process with a time and memory limit, because crafted PDFs have
made pypdf loop or allocate without bound. Every refusal is an ``InputError`` a user can act on.
"""

from __future__ import annotations

import codecs
import re
import subprocess
import sys
import unicodedata
from collections import Counter
from functools import lru_cache
from html import unescape
from html.parser import HTMLParser
from pathlib import PurePath

from chatlm.errors import InputError

MAX_BYTES = 20 * 1024 * 1024
PDF_TIMEOUT_S = 30.0
PDF_MEMORY_BYTES = 1024**3
SUPPORTED = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _limit_text(n: int) -> str:
    return f"{n / 1024**2:.3g} MB" if n >= 1024**2 else f"{n} bytes"


def _clean(text: str) -> str:
    """Unix newlines, no control characters, no trailing spaces, at most one blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    text = _CONTROL.sub("", text.replace("\ufeff", ""))
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


def decode_text(data: bytes, filename: str) -> str:
    """Bytes of a text file as str: BOM, else UTF-8, else UTF-16 told by its NULs, else the most
    plausible legacy code page (see ``_guess_legacy``)."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as exc:
                raise InputError(f"{filename} is not valid {encoding} text.") from exc
    if b"\x00" in data:
        text = _utf16_without_bom(data)
    else:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            text = _guess_legacy(data)
    if text is None or len(_CONTROL.findall(text)) > max(8, len(text) // 100):
        raise InputError(f"{filename} looks like a binary file, not text.")
    return text


def _utf16_without_bom(data: bytes) -> str | None:
    """UTF-16 without a BOM, told by its NULs: text with Latin letters has one in nearly every
    other byte, on one side only, and then reads as plausible text (binary data with NULs in
    step, such as b"abc\\0" repeated, reads as CJK glued to Latin letters). CJK UTF-16 without a
    BOM has too few NULs to tell it from a binary file, and is refused as one."""
    if len(data) % 2:
        return None
    even, odd = data[0::2].count(0), data[1::2].count(0)
    units = len(data) // 2
    for zeros, other, encoding in ((odd, even, "utf-16-le"), (even, odd, "utf-16-be")):
        if zeros >= units / 10 and other <= zeros / 4:
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError:
                return None
            sample = text[: _SAMPLE_BYTES // 2]
            return text if _implausibility(sample) <= len(sample) // 50 else None
    return None


# Legacy code pages. charset-normalizer alone judges short texts badly (a cp1252 "déjà" comes
# back as cp1250 "déjŕ"), so its candidates, with cp1252 and cp1250 always among them, are ranked
# by how plausible each decoding reads: letters of another script or a symbol glued to a word,
# case flipping inside a word, and Latin letters that no single language uses together.
_FAVOURED = ("cp1252", "cp1250")
"""Tried first, in this order, so that a tie goes to Western European text."""
_SAMPLE_BYTES = 64 * 1024
_ALPHABETS = tuple(frozenset(a) for a in (
    "àâæçéèêëîïôœùûüÿ", "äöüß", "áéíñóúü", "àáâãçéêíóôõú", "àèéìíîòóùú", "àçèéíïòóúü",
    "áäéëèíïóöúü", "åæéøóòô", "åäöéšž", "áæéíðóöúýþ", "äõöüšž", "áčďéěíňóřšťúůýž",
    "áäčďéíĺľňóôŕšťúýž", "ąćęłńóśźż", "áéíóöőúüű", "čćđšž", "ăâîșțşţ", "âçğıîöşü",
    "ąčęėįšųūž", "āčēģīķļņšūž", "çë",
))
"""Non-ASCII letters of French, German, Spanish, Portuguese, Italian, Catalan, Dutch, Danish and
Norwegian, Swedish and Finnish, Icelandic, Estonian, Czech, Slovak, Polish, Hungarian, the South
Slavic languages, Romanian, Turkish, Lithuanian, Latvian, Albanian."""
_SCRIPT_ALIASES = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "HALFWIDTH": "CJK", "FULLWIDTH": "CJK",
                   "IDEOGRAPHIC": "CJK", "KATAKANA-HIRAGANA": "CJK", "MICRO": "LATIN",
                   "FEMININE": "LATIN", "MASCULINE": "LATIN", "COMBINING": ""}
_NO_LANGUAGE = frozenset("µªº")
_JOINS_WORDS = frozenset("’‘·‐‑–—…")
_BEFORE_WORDS = frozenset("°«»“”„‚‹›")
_PRESENTATION = ("<isolated>", "<final>", "<initial>", "<medial>")


@lru_cache(maxsize=8192)
def _script(c: str) -> str:
    """The script of a letter or mark ('LATIN', 'CYRILLIC', 'CJK', ...); '' for anything else."""
    if c.isascii():
        return "LATIN" if c.isalpha() else ""
    if not (c.isalpha() or unicodedata.category(c)[0] == "M"):
        return ""
    word = unicodedata.name(c, "?").split(" ", 1)[0]
    return _SCRIPT_ALIASES.get(word, word)


def _implausibility(text: str) -> int:
    """How badly ``text`` reads as real writing; only non-ASCII characters are looked at, since
    the candidate code pages all agree on ASCII."""
    odd = 0
    letters: Counter[str] = Counter()
    last = len(text) - 1
    for m in re.finditer(r"[^\x00-\x7f]", text):
        c, i = m.group(), m.start()
        prev, nxt = text[i - 1] if i else " ", text[i + 1] if i < last else " "
        if script := _script(c):
            if script == "LATIN" and c not in _NO_LANGUAGE:
                letters[c.lower()] += 1
            odd += sum(_script(x) not in ("", script) for x in (prev, nxt))
            odd += (c.isupper() and prev.islower()) or (c.islower() and nxt.isupper())
            odd += unicodedata.decomposition(c).startswith(_PRESENTATION)
            continue
        kind = unicodedata.category(c)[0]
        if c in "¿¡":
            odd += prev.isalpha()
        elif kind == "P":
            odd += c not in _JOINS_WORDS and c not in _BEFORE_WORDS and prev.isalpha() and nxt.isalpha()
        elif kind in "SCN" and c not in _BEFORE_WORDS and not c.isdigit():
            odd += nxt.isalpha() or (prev.isalpha() and kind == "S" and unicodedata.category(c) != "Sk")
    misfit = min(sum(n for ch, n in letters.items() if ch not in a) for a in _ALPHABETS)
    return 2 * odd + (misfit if letters else 0)


def _guess_legacy(data: bytes) -> str | None:
    """The most plausible decoding among charset-normalizer's candidates and ``_FAVOURED``;
    None when charset-normalizer finds no text at all (binary)."""
    from charset_normalizer import from_bytes

    found = [m.encoding for m in from_bytes(data)]
    if not found:
        return None
    ranked = []
    for rank, name in enumerate(dict.fromkeys([*_FAVOURED, *found])):
        if name.startswith(("utf_16", "utf_32")):  # no BOM and no NULs: not UTF-16 text
            continue
        try:
            sample = codecs.getincrementaldecoder(name)().decode(data[:_SAMPLE_BYTES], final=False)
        except (UnicodeDecodeError, LookupError):
            continue
        ranked.append((_implausibility(sample), rank, name))
    for *_, name in sorted(ranked):
        try:
            return data.decode(name)
        except UnicodeDecodeError:  # the sample decoded, a later part does not
            continue
    return None


_MD_FENCE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.M | re.S)
_MD_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.M), r)
    for p, r in (
        (r"^[ \t]*\[[^\]\n]+\]:[ \t]*\S+.*$", ""),  # reference link definitions
        (r"^[ \t]{0,3}#{1,6}[ \t]+(.*?)[ \t#]*$", r"\1"),  # ATX headings
        (r"^[ \t]*(?:[-=]{3,}|(?:[*_][ \t]*){3,})[ \t]*$", ""),  # setext underlines, rules
        (r"^[ \t]*>[ \t]?", ""),  # block quotes
        (r"^([ \t]*)(?:[-*+]|\d+[.)])[ \t]+", r"\1"),  # list markers
        (r"!\[([^\]\n]*)\]\([^)\n]*\)", r"\1"),  # images keep their alt text
        (r"\[([^\]\n]+)\]\([^)\n]*\)", r"\1"),  # links keep their text
        (r"\[([^\]\n]+)\]\[[^\]\n]*\]", r"\1"),  # reference links
        (r"<(https?://[^>\s]+)>", r"\1"),  # autolinks
        (r"`([^`\n]+)`", r"\1"),  # inline code
        (r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1", r"\2"),  # strong
        (r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])", r"\1"),  # emphasis
        (r"(?<![\w_])_(?=\S)(.+?)(?<=\S)_(?![\w_])", r"\1"),
        (r"~~(.+?)~~", r"\1"),  # strikethrough
        (r"</?[A-Za-z][^>\n]*>", ""),  # inline HTML tags
    )
)


def markdown_to_text(md: str) -> str:
    """Cheap Markdown stripping: markup goes, link and code text stays."""
    parts, pos = [], 0
    for m in _MD_FENCE.finditer(md):
        parts.append(_strip_md(md[pos : m.start()]))
        parts.append(m.group(2))
        pos = m.end()
    parts.append(_strip_md(md[pos:]))
    return "".join(parts)


def _strip_md(md: str) -> str:
    for pattern, repl in _MD_RULES:
        md = pattern.sub(repl, md)
    return unescape(md)


class _HTMLText(HTMLParser):
    """Collects visible text; block elements become line breaks. Unless ``keep_chrome``, a page's
    navigation, banner, footer, sidebars and forms are left out: their menus and "© 2024 · Privacy"
    lines were passages that answers cited."""

    SKIP = frozenset({"script", "style", "noscript", "template", "svg"})
    CHROME = frozenset({"nav", "footer", "aside", "form", "button", "select", "dialog", "menu"})
    CHROME_ROLES = frozenset({"navigation", "banner", "contentinfo", "complementary", "search", "menu"})
    CONTENT = frozenset({"article", "main"})
    """Where a ``<header>`` is the article's own (its title), not the site's banner."""
    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                      "source", "track", "wbr"})
    # fmt: off
    BLOCK = frozenset(
        {
            "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt",
            "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
            "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tbody",
            "thead", "tfoot", "title", "tr", "ul",
        }
    )
    # fmt: on

    def __init__(self, *, keep_chrome: bool = True) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        self._pre = 0
        self._keep_chrome = keep_chrome
        self._open: list[tuple[str, bool]] = []
        """Open elements, each with whether it was skipped as the page's chrome."""
        self._content = 0

    def _is_chrome(self, tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        if self._keep_chrome or tag in self.VOID:
            return False
        role = dict(attrs).get("role") or ""
        return (tag in self.CHROME or role in self.CHROME_ROLES
                or (tag == "header" and not self._content))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        chrome = self._is_chrome(tag, attrs)
        if tag not in self.VOID:
            self._open.append((tag, chrome))
            self._content += tag in self.CONTENT
        if chrome:
            self._skip += 1
        if tag in self.SKIP:
            self._skip += 1
        elif tag == "pre":
            self._pre += 1
        if tag in self.BLOCK:
            self.parts.append("\n\n" if tag in {"p", "div", "pre", "table"} else "\n")
        elif tag in {"td", "th"}:
            self.parts.append("\t")

    def handle_endtag(self, tag: str) -> None:
        self._close(tag)
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)
        if tag in self.BLOCK:
            self.parts.append("\n")

    def _close(self, tag: str) -> None:
        """Pop the open elements up to ``tag`` (HTML often leaves some unclosed), ending the skip
        of any chrome among them; an end tag that opened nothing changes nothing."""
        if not any(name == tag for name, _ in self._open):
            return
        while self._open:
            name, chrome = self._open.pop()
            self._skip -= chrome
            self._content -= name in self.CONTENT
            if name == tag:
                return

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data if self._pre else re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """Visible text of an HTML document (scripts and styles dropped, entities decoded), without the
    page's navigation, banner and footer; a page that is all of those keeps them."""
    return _html_text(html, keep_chrome=False) or _html_text(html, keep_chrome=True)


def _html_text(html: str, *, keep_chrome: bool) -> str:
    parser = _HTMLText(keep_chrome=keep_chrome)
    parser.feed(html)
    if parser.rawdata.startswith("<"):  # an unterminated tag or comment at the end is markup,
        parser.rawdata = ""  # dropped as a browser does, not text: "<img onerror=..." must not leak
    parser.close()
    text = "".join(parser.parts)
    text = "\n".join(line.strip(" \t") for line in text.split("\n"))
    return text if text.strip() else ""


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
