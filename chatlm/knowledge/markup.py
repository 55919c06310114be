"""Markdown and HTML reduced to the text a reader sees: markup goes, link and code text stays, and a web
page's navigation, banner and footer are left out (they were passages that answers cited)."""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser

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
