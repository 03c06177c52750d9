"""A URL manifest read as a job's inputs: a CSV with a `url` column or one URL per line, and the
ones that cannot be read as a URL list (the job then fails with ManifestInvalid)."""

from __future__ import annotations

import pytest

from kompressor_operator.planning import MAX_URL_CHARS, ManifestError, parse_url_manifest


def test_a_csv_with_a_url_column_in_any_case_and_place():
    text = 'sku,URL ,title\n1,https://a.example/x.jpg,"a, b"\n\n# skipped\n2, http://b.example/y.png ,c\n'
    assert parse_url_manifest(text) == ["https://a.example/x.jpg", "http://b.example/y.png"]


def test_one_url_per_line_without_a_header():
    assert parse_url_manifest("https://a.example/1.jpg\n  https://a.example/2.jpg\n") == [
        "https://a.example/1.jpg",
        "https://a.example/2.jpg",
    ]
    assert parse_url_manifest("# only comments\n\n") == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("url\nhttps://a.example/1.jpg\nfile:///etc/passwd\nftp://x/y\n", "2 line(s) are not http(s) URLs"),
        ("url,title\n,missing\n", "1 line(s) are not http(s) URLs, first: ''"),
        (f"https://a.example/{'x' * MAX_URL_CHARS}.jpg\n", f"over {MAX_URL_CHARS} characters"),
    ],
)
def test_a_manifest_that_is_not_a_url_list_is_refused_naming_the_first_bad_line(text: str, problem: str):
    with pytest.raises(ManifestError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        parse_url_manifest(text)
