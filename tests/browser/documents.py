"""Writes the files the document tests (tests/documents.rs) and scripts/bench-documents attach in the page.

    documents.py DIR [--pages N]

DIR gets: report.pdf (a PDF with a text layer, one known sentence per page; N pages, 2 unless --pages),
scanned.pdf (a page that is only a picture), locked.pdf (report.pdf locked with a password, through pypdf),
letter.docx (a Word document), dishes.csv, stove.rs (source code), notes.bin (binary), long-notes.pdf (many
times a small context, one planted fact in the middle; a sentence a line, 50 lines a page) and short-notes.txt
(a little over a small context, the same fact planted). PDFs and the .docx are written by hand here, so what
they hold is exactly what the tests expect to read back.
"""

import random
import sys
import zipfile
from pathlib import Path

from pypdf import PdfReader, PdfWriter

PAGE_SENTENCE = "Page {n} of the harvest report says the orchard gave {apples} crates of apples."
PLANTED = "The lighthouse keeper keeps the spare key under the blue heron statue."
WORDS = (
    "river meadow copper lantern season harbour timber valley orchard pepper garden market bridge candle "
    "winter summer kettle barley village window ribbon thunder marble basket saddle feather pebble canyon "
    "violet quarry tavern mirror pillow walnut cellar ladder chimney willow falcon bakery anchor compass"
).split()


def pdf(objects):
    """A PDF file from its numbered objects (bytes each, numbering from 1), with a correct cross-reference table."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def stream(data, extra=b""):
    return b"<< /Length %d %s>>\nstream\n" % (len(data), extra) + data + b"\nendstream"


def text_pdf(pages):
    """One page per entry of `pages` (a list of lines), in Helvetica."""
    count = len(pages)
    kids = b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(count))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, count),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for i, lines in enumerate(pages):
        content = b"BT /F1 11 Tf 14 TL 72 740 Td " + b" ".join(
            b"(%s) Tj T*" % line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")
            for line in lines
        ) + b" ET"
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            b"/Contents %d 0 R >>" % (5 + 2 * i)
        )
        objects.append(stream(content))
    return pdf(objects)


def scanned_pdf():
    """A page holding only an 8x8 grey picture: what a scanner makes, with no text layer."""
    pixels = bytes((x * 32 + y * 8) % 256 for y in range(8) for x in range(8))
    return pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /XObject << /Im1 5 0 R >> >> "
            b"/Contents 4 0 R >>",
            stream(b"q 468 0 0 648 72 72 cm /Im1 Do Q"),
            stream(pixels, b"/Type /XObject /Subtype /Image /Width 8 /Height 8 /ColorSpace /DeviceGray /BitsPerComponent 8 "),
        ]
    )


def docx(paragraphs):
    """The smallest Word document mammoth reads: the package's types, its relationship, the body."""
    body = "".join(f"<w:p><w:r><w:t xml:space=\"preserve\">{p}</w:t></w:r></w:p>" for p in paragraphs)
    files = {
        "[Content_Types].xml": '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/word/document.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>',
        "_rels/.rels": '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
        'Target="word/document.xml"/></Relationships>',
        "word/document.xml": '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        f"<w:body>{body}</w:body></w:document>",
    }
    return files


def long_paragraphs(paragraphs, planted_at, seed=7):
    """Paragraphs (lists of sentences) made up from WORDS (none about lighthouses or keys), PLANTED in one."""
    rng = random.Random(seed)
    out = []
    for i in range(paragraphs):
        sentences = []
        for _ in range(5):
            words = [rng.choice(WORDS) for _ in range(rng.randint(8, 14))]
            sentences.append(" ".join(words).capitalize() + ".")
        if i == planted_at:
            sentences.insert(2, PLANTED)
        out.append(sentences)
    return out


def long_text(paragraphs, planted_at, seed=7):
    return "\n\n".join(" ".join(p) for p in long_paragraphs(paragraphs, planted_at, seed)) + "\n"


def long_pdf(paragraphs, planted_at):
    """The same made-up text as a PDF: a sentence a line, a blank line between paragraphs, 50 lines a page."""
    lines = []
    for paragraph in long_paragraphs(paragraphs, planted_at):
        lines += paragraph + [""]
    return text_pdf([lines[i : i + 50] for i in range(0, len(lines), 50)])


def main():
    out = Path(sys.argv[1])
    pages = int(sys.argv[sys.argv.index("--pages") + 1]) if "--pages" in sys.argv else 2
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(3)
    report = []
    for n in range(1, pages + 1):
        lines = [PAGE_SENTENCE.format(n=n, apples=100 + n)]
        # Filler lines, so a long report has pages of realistic length.
        if pages > 2:
            lines += [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(40)]
        report.append(lines)
    (out / "report.pdf").write_bytes(text_pdf(report))
    (out / "scanned.pdf").write_bytes(scanned_pdf())
    locked = PdfWriter(clone_from=PdfReader(out / "report.pdf"))
    locked.encrypt(user_password="open sesame", owner_password="owner", algorithm="RC4-128")
    locked.write(out / "locked.pdf")
    with zipfile.ZipFile(out / "letter.docx", "w", zipfile.ZIP_DEFLATED) as package:
        for name, text in docx(["Dear neighbour,", "The bakery on Willow Lane opens at seven on Sundays."]).items():
            package.writestr(name, text)
    (out / "dishes.csv").write_text("dish,minutes,serves\nlentil soup,35,4\nbarley bread,90,8\nplum cake,60,12\n")
    (out / "stove.rs").write_text('fn main() {\n    let dish = "soup";\n    println!("cooking {dish}");\n}\n')
    (out / "notes.bin").write_bytes(bytes(range(256)) * 64)
    (out / "long-notes.pdf").write_bytes(long_pdf(400, 233))
    (out / "short-notes.txt").write_text(long_text(16, 11, seed=11))


if __name__ == "__main__":
    main()
