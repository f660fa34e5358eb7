"""Images of text and PDFs for OCR and document tests, made offline.

Fonts: the machines have Debian's ``fonts-dejavu-core`` (DejaVu Sans, Serif, Sans Mono in
/usr/share/fonts/truetype/dejavu) and ``fonts-dejavu-extra`` (bold, oblique, condensed,
...). ``font_path`` finds a font by file stem ("DejaVuSerif-Bold"), family ("DejaVu Serif")
or path; when nothing matches, Pillow's own embedded font is used, so images can always
be drawn. ``text_pdf`` writes a PDF with a real text layer (fpdf2); ``scanned_pdf`` writes
pages that are pictures only, like a scanner's output.
"""

from __future__ import annotations

import functools
import io
import re
import shutil
import subprocess
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from tests.fakes.speech import edit_distance

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".fonts")
DEFAULT_FONT = "DejaVuSans"
# Page size for scanned_pdf: A4 at 150 dpi.
PAGE_DPI = 150
PAGE_SIZE = (1240, 1754)


@functools.cache
def font_path(font: str | None = None) -> Path | None:
    """The TrueType file for ``font`` (default DejaVu Sans), or None when none is found.

    ``font`` may be a path, a file stem ("DejaVuSans-Bold") or a fontconfig pattern
    ("DejaVu Serif:bold"); fontconfig (``fc-match``) is asked last and only trusted
    when it answers with a family that matches the request.
    """
    name = font or DEFAULT_FONT
    if Path(name).is_file():
        return Path(name)
    for folder in FONT_DIRS:
        if folder.is_dir():
            for ext in ("ttf", "otf", "ttc"):
                hit = next(folder.rglob(f"{name}.{ext}"), None)
                if hit is not None:
                    return hit
    if shutil.which("fc-match"):
        done = subprocess.run(
            ["fc-match", "-f", "%{family}\n%{file}", name],
            capture_output=True,
            text=True,
            timeout=10,
        )
        family, _, file = done.stdout.partition("\n")
        wanted = name.split(":")[0].replace(" ", "").lower()
        if done.returncode == 0 and wanted in family.replace(" ", "").lower():
            return Path(file)
    return None


def load_font(font: str | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """``font`` at ``size`` pixels; Pillow's embedded font when no file is found."""
    path = font_path(font)
    if path is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(str(path), size=size)


def text_image(
    lines: list[str], *, font: str | None = None, size: int = 32, rotate: float = 0
) -> Image.Image:
    """Black ``lines`` on white (RGB), ``size`` pixels high, a margin of one line around.

    ``rotate`` turns the picture counter-clockwise by that many degrees (canvas grows to
    fit, corners filled white).
    """
    face = load_font(font, size)
    step = round(size * 1.5)
    widths = [face.getbbox(line)[2] for line in lines] or [0]
    width = max(widths) + 2 * size
    height = step * max(len(lines), 1) + 2 * size
    image = Image.new("RGB", (int(width), height), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((size, size + i * step), line, font=face, fill="black")
    if rotate:
        image = image.rotate(
            rotate, expand=True, fillcolor="white", resample=Image.Resampling.BICUBIC
        )
    return image


def char_error_rate(ref: str, hyp: str) -> float:
    """Character edits to turn ``hyp`` into ``ref``, divided by the length of ``ref``.

    Runs of whitespace (newlines included) count as one space and the ends are stripped,
    so line breaks versus spaces do not matter; case and punctuation do. With an empty
    ``ref`` the result is the length of ``hyp`` (0.0 when both are empty).
    """
    r = re.sub(r"\s+", " ", ref).strip()
    h = re.sub(r"\s+", " ", hyp).strip()
    if not r:
        return float(len(h))
    return edit_distance(r, h) / len(r)


def text_pdf(pages: list[str]) -> bytes:
    """A PDF with one A4 page per string, the text in a real (extractable) text layer.

    Latin-1 text uses the built-in Helvetica; other text needs DejaVu Sans on the machine.
    """
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=False)
    family = "helvetica"
    if not all(_latin1(text) for text in pages):
        path = font_path(DEFAULT_FONT)
        if path is None:
            raise RuntimeError("non-Latin-1 text needs DejaVuSans.ttf (fonts-dejavu-core)")
        pdf.add_font("dejavu", fname=str(path))
        family = "dejavu"
    for text in pages:
        pdf.add_page()
        pdf.set_font(family, size=12)
        pdf.multi_cell(0, 7, text)
    return bytes(pdf.output())


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def scanned_pdf(
    pages: list[list[str]],
    *,
    size: int = 32,
    page_size: tuple[int, int] = PAGE_SIZE,
    dpi: int = PAGE_DPI,
    at: tuple[int, int] | None = None,
) -> bytes:
    """A PDF of pages that are pictures only: no text layer, as a scanner makes. Each page
    is ``page_size`` pixels at ``dpi`` (A4 at 150 dpi unless told) and shows its lines in
    DejaVu Sans at ``size`` pixels, their top left ``at`` (a margin of half an inch)."""
    images = []
    for lines in pages:
        page = Image.new("RGB", page_size, "white")
        page.paste(text_image(lines, size=size), at or (dpi // 2, dpi // 2))
        images.append(page)
    out = io.BytesIO()
    images[0].save(
        out, format="PDF", resolution=float(dpi), save_all=True, append_images=images[1:]
    )
    return out.getvalue()


def giant_page_pdf(width_in: float, height_in: float) -> bytes:
    """A one-page PDF of a few hundred bytes whose page is ``width_in`` x ``height_in``
    inches and empty: no text layer, so it is rendered to be read (a 200 x 200 inch page at
    150 dpi is 30000 x 30000 pixels, ~2.7 GB for each copy of them)."""
    width, height = round(width_in * 72), round(height_in * 72)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] >>".encode(),
    ]
    return pdf_of(objects)


def pdf_of(objects: list[bytes]) -> bytes:
    """A PDF of these objects (numbered from 1, the first the catalog), its cross-reference
    table computed."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
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
