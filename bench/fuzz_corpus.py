"""What the fuzz tests feed and check: hypothesis strategies for files, text, markup and ``/v1``
request bodies; the checks of the property (parsed, or refused with chatlm's ``InputError``
carrying a message; a 400/404 in OpenAI's shape on the API; never another exception); and a
corpus of hostile files built here (a deflate bomb, damaged PDFs, binaries, odd encodings).

Plain module-level objects, with no pytest in them, so that ``tests/test_fuzz.py`` runs them for
seconds and ``bench/reliability_fuzz.py`` for minutes.
"""

from __future__ import annotations

import json
import random
import re
import zlib
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from pydantic import ValidationError

from chatlm.api.bodies import ChatCompletionRequest
from chatlm.engine.params import SamplingParams
from chatlm.errors import InputError
from chatlm.knowledge.encodings import decode_text
from chatlm.knowledge.markup import html_to_text
from chatlm.knowledge.parse import SUPPORTED, parse_bytes, parse_text

TEXT_TYPES = tuple(e for e in SUPPORTED if e != ".pdf")
ENCODINGS = ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "cp1252", "cp1250",
             "cp1251", "gbk", "shift_jis", "latin-1")
MODEL = "tiny-random"


# ---- strategies ------------------------------------------------------------------------------
any_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300)
encoded_text = st.builds(lambda t, enc: t.encode(enc, "ignore"), any_text, st.sampled_from(ENCODINGS))
file_bytes = st.one_of(st.binary(max_size=3000), encoded_text,
                       st.builds(lambda a, b: a + b"\x00" + b, st.binary(max_size=200), st.binary(max_size=200)))

_SAFE_WORDS = st.text(alphabet="abcdefghij XYZ.,\n\té", min_size=1, max_size=12)
_ATTRS = st.lists(st.sampled_from([
    " onerror=alert(1)", ' onload="steal()"', " onclick='x()'", ' href="javascript:alert(1)"',
    " src=x", ' title="</p><script>evil()</script>"', " style=a:b", " data-x", ' srcdoc="<script>x</script>"',
]), max_size=3).map("".join)
_TAG = st.sampled_from(["p", "div", "img", "a", "script", "SCRIPT", "style", "svg", "iframe", "body",
                        "textarea", "title", "noscript", "template", "math", "br", "table", "td", "pre"])
html_piece = st.one_of(
    _SAFE_WORDS,
    st.builds(lambda t, a: f"<{t}{a}>", _TAG, _ATTRS),
    st.builds(lambda t: f"</{t}>", _TAG),
    st.builds(lambda a: f"<script{a}>alert(1); document.write('<img src=x onerror=y>')</script>", _ATTRS),
    st.sampled_from(["<!-- <script>x</script> -->", "<![CDATA[<script>x</script>]]>", "<!DOCTYPE html>",
                     "<script>a('</scr' + 'ipt>')</script>", "<style>p{}</style>", "&amp;", "&eacute;",
                     "<? php <script> ?>", "<scr<script>ipt>x</script>"]),
)
hostile_html = st.tuples(st.lists(html_piece, max_size=30),
                         st.sampled_from(["", "<img src=x onerror=alert(1)", "<!-- <script>x", "<script>x",
                                          "<a href='javascript:x()' onclick='y()'"])
                         ).map(lambda parts: "".join(parts[0]) + parts[1])


def _json_values() -> st.SearchStrategy[Any]:
    leaves = st.none() | st.booleans() | st.integers(-(2**90), 2**90) | st.floats() | st.text(max_size=20)
    return st.recursive(leaves, lambda kids: st.lists(kids, max_size=3)
                        | st.dictionaries(st.text(max_size=8), kids, max_size=3), max_leaves=8)


json_values = _json_values()
_number = st.integers(-(2**70), 2**70) | st.floats() | json_values
_content = st.one_of(
    st.text(max_size=60), st.none(),
    st.lists(st.fixed_dictionaries({"type": st.just("text") | json_values, "text": st.text(max_size=30)}),
             max_size=3),
    json_values,
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "developer", "tool", ""]) | json_values,
     "content": _content})
request_body = st.fixed_dictionaries(
    {"model": st.sampled_from([MODEL, "nope", ""]) | json_values,
     "messages": st.lists(_message, max_size=3) | json_values},
    optional={
        "temperature": _number, "top_p": _number, "top_k": _number, "seed": _number, "n": _number,
        "max_tokens": _number, "max_completion_tokens": _number,
        "stop": st.none() | st.text(max_size=70) | st.lists(st.text(max_size=70), max_size=6) | json_values,
        "stream": st.booleans() | json_values,
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | json_values}) | json_values,
    },
)
_valid_message = st.fixed_dictionaries({
    "role": st.sampled_from(["user", "system", "assistant", "developer"]),
    "content": st.text(max_size=40)
    | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)}), max_size=2)})
def valid_requests(model: str) -> st.SearchStrategy[dict[str, Any]]:
    """Requests that should be answered, so that the fuzzing reaches generation and streaming."""
    return st.fixed_dictionaries(
        {"model": st.just(model), "messages": st.lists(_valid_message, min_size=1, max_size=3)},
        optional={
            "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "top_k": st.integers(0, 100),
            "seed": st.integers(-(2**63), 2**63 - 1), "max_tokens": st.integers(1, 10**7),
            "stop": st.lists(st.text(min_size=1, max_size=5), max_size=4), "stream": st.booleans(),
            "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        },
    )


def near_valid_requests(model: str) -> st.SearchStrategy[dict[str, Any]]:
    """A valid request with one field set to anything."""
    fields = ("model", "messages", "temperature", "top_p", "top_k", "seed", "max_tokens", "stop", "n", "stream")
    return st.builds(lambda body, key, value: {**body, key: value},
                     valid_requests(model), st.sampled_from(fields), json_values | _number)


def raw_bodies(model: str) -> st.SearchStrategy[bytes]:
    """Request bodies for the route: valid, nearly valid, anything JSON, cut short, not JSON."""
    def dumps(body: Any) -> bytes:
        return json.dumps(body).encode()  # json.dumps writes NaN and Infinity too

    return st.one_of(
        valid_requests(model).map(dumps), near_valid_requests(model).map(dumps), request_body.map(dumps),
        st.binary(max_size=300), request_body.map(lambda b: dumps(b)[: len(dumps(b)) // 2]),
    )


valid_request, near_valid_request, raw_body = valid_requests(MODEL), near_valid_requests(MODEL), raw_bodies(MODEL)


# ---- the checks -----------------------------------------------------------------------------
def refused(exc: InputError) -> None:
    assert isinstance(exc.message, str) and exc.message.strip(), exc


def check_parse_bytes(data: bytes, name: str, **limits: Any) -> str | None:
    """Text that is clean (non-empty, stripped, no NULs), or an ``InputError`` with a message."""
    try:
        text = parse_bytes(data, name, **limits)
    except InputError as exc:
        refused(exc)
        return None
    assert isinstance(text, str) and text and text == text.strip() and "\x00" not in text
    return text


def check_parse_text(text: str) -> str | None:
    try:
        out = parse_text(text)
    except InputError as exc:
        refused(exc)
        return None
    assert out and out == out.strip() and "\r" not in out
    return out


def check_decode_text(data: bytes) -> str | None:
    try:
        out = decode_text(data, "a.txt")
    except InputError as exc:
        refused(exc)
        return None
    assert isinstance(out, str)
    return out


def check_html(html: str) -> str | None:
    """Markup never survives as text: the text of markup whose words hold no "<" has no "<" that
    could open a tag (a script, an <img onerror=...>). What a browser shows as text stays, even
    `" onerror=x>` after a script that a quoted "</script>" closed early."""
    out = html_to_text(html)
    assert not re.search(r"<[A-Za-z!/?]", out), out
    return check_parse_bytes(html.encode(), "page.html")


def check_request_model(body: Any) -> bool:
    """The request model accepts or refuses with pydantic's errors; accepted values then pass
    or fail the strict sampling checks with an ``InputError``, as the route does."""
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        assert exc.errors() and all(e["msg"] for e in exc.errors())
        return False
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    try:
        SamplingParams(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, stop=stop,
                       seed=req.seed, max_new_tokens=req.max_tokens or 1).validate()
    except InputError as exc:
        refused(exc)
        return False
    return True


def check_route(client: Any, body: bytes) -> int:
    """A 200 chat completion (or event stream), else an OpenAI-shaped 400/404; never a 500."""
    r = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code in (200, 400, 404), (r.status_code, r.text[:300])
    if r.status_code != 200:
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.rstrip().endswith("data: [DONE]") or '"error"' in r.text
    else:
        assert r.json()["object"] == "chat.completion"
    return r.status_code


def api_client(backend: Any, data_dir: Path) -> Any:
    """The /v1 routes over ``backend`` on a real database, answers capped at 2 tokens, in process
    (without the Gradio UI, which tests/test_api.py mounts; building it costs seconds)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from chatlm import compose
    from chatlm.api.openai import OpenAIRoutes
    from chatlm.config import Settings

    app = FastAPI()
    services = compose.build(Settings.from_env({}, data_dir=data_dir, max_new_tokens=2), backend)
    OpenAIRoutes(services.chat, services.identity).install(app)
    return TestClient(app, raise_server_exceptions=False)


# ---- hostile files, built here ---------------------------------------------------------------
def make_pdf_from(objects: list[bytes]) -> bytes:
    """A PDF of the given objects (1 is the catalog) with a correct xref table."""
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def page_pdf(content_stream: bytes, extra: bytes = b"", length: int | None = None) -> bytes:
    return make_pdf_from([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d%s >>\nstream\n" % (len(content_stream) if length is None else length, extra)
        + content_stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ])


def deflate_bomb_pdf(megabytes: int = 100) -> bytes:
    """A page whose ~100 kB content stream inflates to ``megabytes`` MB of spaces."""
    z = zlib.compressobj(9)
    parts = [z.compress(b"BT /F1 24 Tf 72 720 Td (boom) Tj ET\n")]
    block = b" " * (1 << 20)
    parts += [z.compress(block) for _ in range(megabytes)]
    parts.append(z.flush())
    return page_pdf(b"".join(parts), b" /Filter /FlateDecode")


SCRIPTED_HTML = (
    "<html><head><script>document.cookie</script><style>body{}</style></head>"
    "<body onload=\"steal()\"><h1>Visible title</h1><img src=x onerror=alert(1)>"
    "<p onclick='x()'>Visible paragraph <a href=\"javascript:alert(1)\">link text</a></p>"
    "<svg><script>alert(2)</script></svg><iframe srcdoc=\"<script>alert(3)</script>\"></iframe>"
    "<!-- <script>alert(4)</script> --><scr<script>ipt>alert(5)</script>"
    "<noscript><p title=\"</noscript><img src=x onerror=alert(6)>\"></p></noscript>"
    "<p>End.</p><img src=y onerror=alert(7)"
)
GOOD_PDF = page_pdf(b"BT /F1 24 Tf 72 720 Td (Normandy is in France) Tj ET")


def _damage(cut: int, flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(GOOD_PDF)
    for at, value in flips:
        data[at % len(data)] = value
    return bytes(data[:cut])


damaged_pdf = st.builds(_damage, st.integers(0, len(GOOD_PDF)),
                        st.lists(st.tuples(st.integers(0, len(GOOD_PDF)), st.integers(0, 255)), max_size=4))
"""A valid one-page PDF, cut short and with a few bytes changed."""


def refused_files() -> list[tuple[str, bytes, str]]:
    """(name, bytes, what the user is told); built when needed, not at import."""
    return [
        ("bomb.pdf", deflate_bomb_pdf(), "declares or unpacks to more data"),
        ("truncated.pdf", GOOD_PDF[: len(GOOD_PDF) // 2], "could not be read as a PDF"),
        ("no-eof.pdf", GOOD_PDF[:-40], "could not be read as a PDF"),
        ("garbage.pdf", b"%PDF-1.7\n" + random.Random(1).randbytes(4000), "could not be read as a PDF"),
        ("cyclic.pdf", make_pdf_from([b"<< /Type /Catalog /Pages 2 0 R >>",
                                      b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>"]), "could not be read as a PDF"),
        ("huge-length.pdf", page_pdf(b"BT ET", length=99_999_999_999), "declares or unpacks to more data"),
        ("nul.txt", b"abc\x00" * 1000, "looks like a binary file"),
        ("stray-nul.txt", b"Hello\x00 world, some text", "looks like a binary file"),
        ("photo.txt", b"\x89PNG\r\n\x1a\n" + bytes(64), "looks like a binary file"),
        ("scripts-only.html", b"<script>alert(1)</script><style>p{}</style><img onerror=x>", "contains no text"),
        ("huge.txt", b"a" * (20 * 1024 * 1024 + 1), "the limit is 20 MB"),
    ]


ACCEPTED: list[tuple[str, bytes, str]] = [
    ("utf16-bom.txt", "Příliš žluťoučký kůň\n你好".encode("utf-16"), "Příliš žluťoučký kůň\n你好"),
    ("utf16le.txt", "Café déjà vu – naïve, in UTF-16".encode("utf-16-le"), "Café déjà vu – naïve, in UTF-16"),
    ("utf16be.txt", "Café déjà vu – naïve!".encode("utf-16-be"), "Café déjà vu – naïve!"),
    ("gbk.txt", "数据库连接失败，请稍后重试。".encode("gbk"), "数据库连接失败，请稍后重试。"),
    ("cp1252.txt", "Café déjà vu – naïve".encode("cp1252"), "Café déjà vu – naïve"),
    ("cp1250.txt", "Příliš žluťoučký kůň úpěl ďábelské ódy".encode("cp1250"),
     "Příliš žluťoučký kůň úpěl ďábelské ódy"),
    # "<scr<script>" is a tag named "scr<script" to a browser too, so "ipt>alert(5)" is shown as text
    ("scripted.html", SCRIPTED_HTML.encode(), "Visible title\n\nVisible paragraph link text\nipt>alert(5)\n\nEnd."),
]
