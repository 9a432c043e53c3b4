"""The shipped calibration and held-out texts: present, licensed, small, and disjoint."""

from __future__ import annotations

from compress.texts import CALIBRATION_TEXT, DATA_DIR, HELDOUT_TEXT, last_word_passages


def paragraphs(text: str) -> set[str]:
    return {" ".join(p.split()) for p in text.split("\n\n") if p.strip()}


def test_files_exist_with_license_and_provenance():
    assert (DATA_DIR / "LICENSE-PSF.txt").is_file()
    readme = (DATA_DIR / "README.md").read_text()
    assert "Python Software Foundation" in readme
    assert CALIBRATION_TEXT.stat().st_size + HELDOUT_TEXT.stat().st_size < 3_000_000


def test_calibration_and_heldout_share_no_paragraph():
    held = paragraphs(HELDOUT_TEXT.read_text())
    cal = paragraphs(CALIBRATION_TEXT.read_text())
    # Short shared lines (headings like "Notes") are not text; look at real paragraphs.
    shared = {p for p in held & cal if len(p) > 80}
    assert not shared


def test_no_long_heldout_line_appears_in_calibration():
    cal = CALIBRATION_TEXT.read_text()
    lines = {line.strip() for line in HELDOUT_TEXT.read_text().splitlines()}
    leaked = [line for line in lines if len(line) >= 60 and line in cal]
    # A few formulaic lines (grammar productions) may repeat; whole passages must not.
    assert len(leaked) <= 0.01 * len(lines), leaked[:5]


def test_heldout_has_enough_last_word_passages():
    passages = last_word_passages(HELDOUT_TEXT.read_text(), 1000)
    assert len(passages) >= 64
    assert all(p.word.isalpha() and len(p.context.split()) >= 39 for p in passages)
