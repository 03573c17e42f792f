"""Small placeholder documents for answers that are not JSON, each naming the workspace.

PNG: a real 1x1 image whose tEXt chunk says `workspace=<ws>`. SVG: one text element. PDF: a
one-page document whose page says it. JPEG: a container with only a comment segment (no
pixels). Text: one line."""

from __future__ import annotations

import struct
import zlib

_TEXT_FORMATS = {
    "csv": "text/csv",
    "txt": "text/plain",
    "sql": "text/plain",
    "md": "text/markdown",
    "html": "text/html",
}
_BINARY_FORMATS = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "pdf": "application/pdf",
    "svg": "image/svg+xml",
}


def media_type_for(result_format: str, offered: tuple[str, ...]) -> str | None:
    """The media type an answer in `result_format` has, if the operation offers it."""
    wanted = result_format.lower()
    if wanted.startswith("json") or wanted == "inline_json":
        candidate = "application/json"
    else:
        candidate = _TEXT_FORMATS.get(wanted) or _BINARY_FORMATS.get(wanted, "")
    if candidate in offered:
        return candidate
    if candidate.startswith("text/") and "text" in offered:  # the spec's catch-all "text"
        return candidate
    return None


def placeholder(media_type: str, text: str) -> bytes:
    """A small document of `media_type` that shows `text`."""
    if media_type == "image/png":
        return _png(text)
    if media_type == "image/svg+xml":
        return (
            '<svg xmlns="http://www.w3.org/2000/svg" width="200" height="20">'
            f'<text x="0" y="15">{_xml(text)}</text></svg>'
        ).encode()
    if media_type == "application/pdf":
        return _pdf(text)
    if media_type == "image/jpeg":
        comment = text.encode()[:60000]
        return b"\xff\xd8\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + b"\xff\xd9"
    return (text + "\n").encode()


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _png(text: str) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)  # 1x1, 8-bit greyscale
    pixels = zlib.compress(b"\x00\xff")  # filter byte, one white pixel
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"tEXt", b"workspace\x00" + text.encode("latin-1", errors="replace")),
            chunk(b"IDAT", pixels),
            chunk(b"IEND", b""),
        )
    )


def _pdf(text: str) -> bytes:
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    stream = f"BT /F1 12 Tf 20 20 Td ({escaped}) Tj ET".encode("latin-1", errors="replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 50] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)
