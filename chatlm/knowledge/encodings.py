"""Bytes of an uploaded text file as str, whatever its encoding: a BOM, UTF-8, UTF-16 told by its NULs,
or the legacy code page that reads most plausibly. Untrusted input: what reads as binary is refused."""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections import Counter
from functools import lru_cache

from chatlm.errors import InputError

CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
"""Control characters no text has (tab, newlines and form feed are not among them)."""
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)



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
    if text is None or len(CONTROL.findall(text)) > max(8, len(text) // 100):
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
