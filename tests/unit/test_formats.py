"""The one table of output formats (kompressor/formats.py)."""

from __future__ import annotations

from kompressor import formats
from kompressor.crd import Destination, Format, InputFormat, Output
from kompressor.messages import SourceObject, output_key
from kompressor_worker.codec import resolve_format


def test_every_input_keep_stores_in_another_format_has_its_extensions_renamed():
    renamed = {source for source in InputFormat if formats.kept(source).value != source.value}
    assert renamed == set(formats._RENAMED_EXTENSIONS)
    assert all(ext == ext.lower() and ext.startswith(".") for ext in formats.KEEP_EXTENSIONS)


def test_the_key_the_codec_and_the_content_type_agree_for_every_input_kept():
    """What `keep` names an output (messages.output_key), what the codec encodes
    (resolve_format) and the Content-Type of the PUT come from the same table."""
    destination = Destination.model_validate({"s3": {"bucket": "out", "prefix": ""}})
    keep = Output(format=Format.keep)
    for source, names in formats._RENAMED_EXTENSIONS.items():
        stored = resolve_format(Format.keep, source.value)
        assert stored is formats.kept(source)
        assert stored.value in formats.CONTENT_TYPES
        for name in names:
            key = output_key(SourceObject(bucket="in", key=f"a{name.upper()}"), "", destination, keep)
            assert key == "a" + formats.EXTENSIONS[stored]


def test_every_output_format_has_an_extension_and_a_content_type():
    concrete = set(Format) - {Format.keep}
    assert set(formats.EXTENSIONS) == concrete
    assert concrete <= set(formats.CONTENT_TYPES)
    assert formats.CONTENT_TYPES["jpeg"] == "image/jpeg"  # a plain name finds its entry
