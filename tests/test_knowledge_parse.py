"""Parsing uploads into text, and chunking text: fast tests, no model."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.fuzz_corpus import make_pdf_from
from chatlm.errors import InputError
from chatlm.knowledge.chunk import ChunkSpan, chunk_text, estimate_tokens
from chatlm.knowledge.encodings import decode_text
from chatlm.knowledge.parse import parse_bytes, parse_text


def make_pdf(text: str) -> bytes:
    """A minimal one-page PDF whose page draws ``text`` in Helvetica, with a correct xref."""
    stream = f"BT /F1 24 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    return make_pdf_from(objs)


# --- parse -------------------------------------------------------------------------------------


def test_plain_text_utf8_and_newlines() -> None:
    assert parse_bytes(b"caf\xc3\xa9\r\nline two\r\n\r\n\r\n\r\nend  ", "a.txt") == (
        "café\nline two\n\nend"
    )


def test_plain_text_other_encodings() -> None:
    text = "Der Bär aß Käse, während Jürgen Wörter zählte und Öl über Straßen goß."
    assert parse_bytes(text.encode("latin-1"), "a.txt") == text
    assert parse_bytes(text.encode("utf-16"), "a.txt") == text  # NULs allowed behind a BOM


# Legacy text that charset-normalizer alone got wrong (cp1252 read as cp1250: "déjŕ", "naďve";
# short GBK read as Korean), beside texts it got right, which must stay right.
WESTERN = [
    "Café déjà vu – naïve",
    "naïve",
    "L'été à Noël",
    "Smörgåsbord på Öland",
    "Ça coûte 5 € — «très» cher",
    "Señor Muñoz, ¿qué tal?",
    "São Paulo é uma cidade enorme, não?",
    "Æbleskiver og rødgrød med fløde",
    "Le cœur a ses raisons que la raison ne connaît point.",
    "Perché la città è così bella? Però sì.",
    "La température est de 25°C et l’eau est à 18°C.",
    "Les élèves ont été très sages ; « c'est une époque où l'on s'interroge », a-t-il ajouté. " * 4,
]
CENTRAL = [
    "Příliš žluťoučký kůň úpěl ďábelské ódy",
    "Čeština je těžká",
    "Zażółć gęślą jaźń",
    "Węgierski jest trudniejszy niż polski.",
    "Árvíztűrő tükörfúrógép",
    "Ľúbostný list",
    "V Brně je hezky, ale v Ostravě prší.",
    "Česká republika je vnitrozemský stát ve střední Evropě; hlavním městem je Praha. " * 4,
]
OTHERS = [
    ("gbk", "你好世界"),
    ("gbk", "数据库连接失败，请稍后重试。"),
    ("cp1251", "Съешь же ещё этих мягких французских булок, да выпей чаю."),
    ("shift_jis", "日本語のテキストです。これはテストです。"),
    ("cp1253", "Καλημέρα κόσμε, τι κάνεις;"),
    ("utf-16", "Příliš žluťoučký kůň, 你好"),  # with a BOM
    ("utf-16-le", "Café déjà vu – naïve, no BOM"),
    ("utf-16-be", "Příliš žluťoučký kůň, no BOM"),
]


@pytest.mark.parametrize("text", WESTERN)
def test_western_european_legacy_text(text: str) -> None:
    assert parse_bytes(text.encode("cp1252"), "a.txt") == text.strip()


@pytest.mark.parametrize("text", CENTRAL)
def test_central_european_legacy_text(text: str) -> None:
    assert parse_bytes(text.encode("cp1250"), "a.txt") == text.strip()


@pytest.mark.parametrize(("encoding", "text"), OTHERS)
def test_other_encodings_still_decode(encoding: str, text: str) -> None:
    assert decode_text(text.encode(encoding), "a.txt") == text


def test_unterminated_markup_at_the_end_is_not_text() -> None:
    for html in ("<p>Hello</p><img src=x onerror=alert(1)", "<p>Hello</p><!-- <script>steal()",
                 "<p>Hello</p><a href='javascript:x()' onclick='y()'"):
        assert parse_bytes(html.encode(), "page.html") == "Hello"
    assert parse_bytes(b"<p>a &lt; b</p>and 3 < 4 &amp", "page.html") == "a < b\nand 3 < 4 &"  # text stays


@pytest.mark.parametrize(
    "data",
    [b"\x89PNG\r\n\x1a\n" + bytes(64), bytes(range(256)) * 4, b"MZ\x90\x00\x03\x00\x00\x00"],
)
def test_binary_is_refused(data: bytes) -> None:
    with pytest.raises(InputError, match="binary"):
        parse_bytes(data, "photo.txt")


@pytest.mark.parametrize("name", ["a.txt", "a.md", "a.html"])
def test_empty_is_refused(name: str) -> None:
    with pytest.raises(InputError, match="contains no text"):
        parse_bytes(b" \n\t\r\n ", name)
    with pytest.raises(InputError, match="contains no text"):
        parse_bytes(b"", name)


def test_empty_html_body_is_refused() -> None:
    with pytest.raises(InputError, match="contains no text"):
        parse_bytes(b"<html><script>var x = 1;</script><p> </p></html>", "a.html")


def test_oversized_is_refused_with_limit() -> None:
    with pytest.raises(InputError, match="limit is 1000 bytes"):
        parse_bytes(b"x" * 1001, "a.txt", max_bytes=1000)
    with pytest.raises(InputError, match="limit is 20 MB"):
        parse_bytes(b"x" * (20 * 1024 * 1024 + 1), "a.txt")
    assert parse_bytes(b"x" * 1000, "a.txt", max_bytes=1000) == "x" * 1000


def test_unsupported_type_lists_supported() -> None:
    with pytest.raises(InputError, match=r"\.docx.*\.txt, \.md, \.markdown, \.html, \.htm, \.pdf"):
        parse_bytes(b"hello", "report.docx")


def test_markdown_markup_is_stripped() -> None:
    md = (
        "# The Title #\n\nSome **bold**, *italic* and _em_ text with [a link](http://x.y),\n"
        "![alt text](img.png) and `inline code`; snake_case_names stay.\n\n"
        "```python\nx = a * b * c  # *not* emphasis\n```\n\n"
        "- first item\n- second item\n\n> quoted words\n\n[ref]: http://example.com\n"
    )
    assert parse_bytes(md.encode(), "notes.md") == (
        "The Title\n\nSome bold, italic and em text with a link,\n"
        "alt text and inline code; snake_case_names stay.\n\n"
        "x = a * b * c  # *not* emphasis\n\nfirst item\nsecond item\n\nquoted words"
    )


def test_html_to_text() -> None:
    html = (
        "<!doctype html><html><head><title>Page</title><style>p {color: red}</style>"
        "<script>document.write('no')</script></head><body><h1>Heading</h1>"
        "<p>Fish &amp; chips,\n   &eacute;t&eacute; &#8212; ok<br>next line</p>"
        "<ul><li>one</li><li>two</li></ul></body></html>"
    )
    text = parse_bytes(html.encode(), "page.HTM")
    assert text == "Page\n\nHeading\n\nFish & chips, été — ok\nnext line\n\none\n\ntwo"
    assert "document" not in text and "color" not in text


def test_pdf_text_is_extracted() -> None:
    assert parse_bytes(make_pdf("Normandy is a region in France"), "doc.pdf") == (
        "Normandy is a region in France"
    )


def test_pdf_without_text_is_refused() -> None:
    with pytest.raises(InputError, match="contains no text"):
        parse_bytes(make_pdf(""), "scan.pdf")


@pytest.mark.parametrize("data", [b"%PDF-1.4\n this is not really a pdf", b"hello", b""])
def test_corrupt_pdf_is_refused(data: bytes) -> None:
    with pytest.raises(InputError, match="could not be read as a PDF"):
        parse_bytes(data, "broken.pdf")


def test_pdf_time_limit_is_enforced() -> None:
    with pytest.raises(InputError, match=r"took longer than 0\.001 s"):
        parse_bytes(make_pdf("slow"), "slow.pdf", pdf_timeout=0.001)


def test_pdf_memory_limit_is_enforced() -> None:
    with pytest.raises(InputError, match="more than 8 MB of memory"):
        parse_bytes(make_pdf("big"), "big.pdf", pdf_memory_bytes=8 * 1024 * 1024)


def test_parse_text() -> None:
    assert parse_text("a\r\nb\rc\n\n\n\nd  \n") == "a\nb\nc\n\nd"
    with pytest.raises(InputError, match="contains no text"):
        parse_text(" \n\t ")
    with pytest.raises(InputError, match="too long"):
        parse_text("é" * 600, max_bytes=1000)


# --- chunk -------------------------------------------------------------------------------------

WORDS = ["the", "Normans", "were", "in", "France", "1066", "U.S.", "e.g.", "x", "Rollo's"]
prose = st.lists(
    st.one_of(
        st.sampled_from(WORDS),
        st.sampled_from([". ", ", ", "? ", "\n", "\n\n", " \n \n", "  ", "\t", "—"]),
        st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=6),
        st.text(alphabet="ab,.", min_size=30, max_size=90),  # long runs without spaces
    ),
    max_size=120,
).map(" ".join)


def check_invariants(text: str, chunks: list[ChunkSpan], max_tokens: int) -> None:
    assert [c.idx for c in chunks] == list(range(len(chunks)))
    covered = bytearray(len(text))
    for c in chunks:
        assert text[c.start : c.end] == c.text
        assert c.text and c.text == c.text.strip()
        assert estimate_tokens(c.text) <= max_tokens
        covered[c.start : c.end] = b"\x01" * (c.end - c.start)
    assert all(covered[i] or ch.isspace() for i, ch in enumerate(text))
    for a, b in itertools.pairwise(chunks):
        assert a.start < b.start and a.end < b.end


@settings(max_examples=300, deadline=None)
@given(text=prose, max_tokens=st.integers(1, 80), data=st.data())
def test_chunk_invariants(text: str, max_tokens: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(0, max_tokens - 1))
    chunks = chunk_text(text, max_tokens=max_tokens, overlap_tokens=overlap)
    check_invariants(text, chunks, max_tokens)
    for a, b in itertools.pairwise(chunks):
        if b.start < a.end:  # the overlap itself stays within its budget
            assert estimate_tokens(text[b.start : a.end]) <= overlap


sentences = st.lists(
    st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta", "x1"]), min_size=1, max_size=12)
    .map(" ".join)
    .map(lambda s: s.capitalize() + "."),
    min_size=1,
    max_size=60,
).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(text=sentences, max_tokens=st.integers(8, 60), data=st.data())
def test_chunks_overlap_inside_a_paragraph(text: str, max_tokens: int, data: st.DataObject) -> None:
    """Within one paragraph, every cut is overlapped when the overlap can hold a word (2 tokens)."""
    overlap = data.draw(st.integers(2, max_tokens - 1))
    chunks = chunk_text(text, max_tokens=max_tokens, overlap_tokens=overlap)
    check_invariants(text, chunks, max_tokens)
    for a, b in itertools.pairwise(chunks):
        assert b.start < a.end
        assert estimate_tokens(text[b.start : a.end]) <= overlap


def test_cuts_prefer_paragraphs_then_sentences() -> None:
    para = " ".join(f"Sentence number {i} is here." for i in range(6))  # 36 tokens
    text = "\n\n".join([para, para, para])
    chunks = chunk_text(text, max_tokens=50, overlap_tokens=10)
    assert [c.text for c in chunks] == [para, para, para]
    long = " ".join(f"Sentence number {i} is here." for i in range(20))  # 120 tokens
    chunks = chunk_text(long, max_tokens=50, overlap_tokens=10)
    assert all(c.text.startswith("Sentence") and c.text.endswith("here.") for c in chunks)
    assert all(b.start < a.end for a, b in itertools.pairwise(chunks))


def test_no_overlap_and_custom_counter() -> None:
    text = " ".join(["word"] * 100)
    chunks = chunk_text(text, max_tokens=10, overlap_tokens=0)
    assert len(chunks) == 10 and all(c.text.count("word") == 10 for c in chunks)
    chars = chunk_text(text, max_tokens=50, overlap_tokens=10, count_tokens=len)
    assert all(len(re.findall(r"\S+", c.text)) * 4 <= 50 for c in chars)


def test_empty_and_bad_arguments() -> None:
    assert chunk_text("") == [] and chunk_text(" \n\n\t") == []
    with pytest.raises(ValueError):
        chunk_text("x", max_tokens=10, overlap_tokens=10)


def test_html_page_chrome_is_left_out() -> None:
    """A saved web page's menu, banner, sidebar and footer are not passages to cite; the article's
    own header (its title) stays, and a page that is nothing but a footer keeps it."""
    html = (
        "<html><body><header><a href='/'>Home</a> | <a href='/shop'>Shop</a></header>"
        "<nav><ul><li>About us<li>Contact</ul></nav>"
        "<main><article><header><h1>The Elder River orchard</h1></header>"
        "<p>The packing hall stands beside the Elder River.</p></article>"
        "<aside>Related: ten recipes</aside></main>"
        "<div role='navigation'>Next page</div>"
        "<form><label>Subscribe</label><button>Go</button></form>"
        "<footer>© 2024 Example Ltd · Privacy</footer></body></html>"
    )
    text = parse_bytes(html.encode(), "page.html")
    assert text == "The Elder River orchard\n\nThe packing hall stands beside the Elder River."
    only_footer = "<html><body><footer>Opening hours: 9 to 5</footer></body></html>"
    assert parse_bytes(only_footer.encode(), "hours.html") == "Opening hours: 9 to 5"
