"""Listing S3 pages with ElementTree: the same answer botocore gives, for every key name.

``mlvc_core.storage.s3.parse_contents`` parses the objects of a ``ListObjectsV2`` page itself
(a botocore ``before-parse`` handler); these tests compare what a client with it returns with
what a client without it returns, on a real (moto) server, and check that a page it does not
know is left to botocore whole.
"""

from __future__ import annotations

from typing import Any

import pytest

from mlvc_core.storage import open_store
from mlvc_core.storage.s3 import parse_contents
from tests.servers import make_s3_bucket, moto_options

NAMES = [
    "refs/experiments/plain",
    "refs/experiments/with space",
    "refs/experiments/plus+sign",
    "refs/experiments/percent%41",
    "refs/experiments/amp&lt<gt>",
    "refs/experiments/quote\"'",
    "refs/experiments/ünïcødé-名前",
    "refs/experiments/tab\tand\u00a0nbsp",
    "refs/experiments/trailing ",
]


def _listing(fs: Any, bucket: str, **kwargs: Any) -> list[dict[str, Any]]:
    pages, token = [], None
    while True:
        args = {"Bucket": bucket, "Prefix": "repo/refs", "MaxKeys": 4, **kwargs}
        if token:
            args["ContinuationToken"] = token
        page = fs.call_s3("list_objects_v2", **args)
        page.pop("ResponseMetadata", None)
        pages.append(page)
        token = page.get("NextContinuationToken")
        if not token:
            return pages


def test_pages_parsed_by_mlvc_equal_botocores(moto_clean: str) -> None:
    import s3fs

    options = moto_options(moto_clean)
    bucket = make_s3_bucket(options)
    store = open_store(f"s3://{bucket}/repo", **options)
    for i, name in enumerate(NAMES):
        store.write(name, b"x" * i)
    listed = list(store.list("refs"))  # registers the handler on the store's client
    assert [k.key for k in listed] == sorted(NAMES)
    assert [k.size for k in listed] == [NAMES.index(k.key) for k in listed]
    assert all(k.version and k.version.startswith('"') for k in listed)
    assert [k.version for k in listed] == [store.read_versioned(k.key)[1] for k in listed]

    plain = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **options)
    for kwargs in ({}, {"EncodingType": "url"}, {"FetchOwner": True}):
        ours = _listing(store.fs, bucket, **kwargs)  # type: ignore[attr-defined]
        theirs = _listing(plain, bucket, **kwargs)
        assert len(ours) == 3
        assert ours == theirs, kwargs
    store.close()


PAGE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<Name>b</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>"
    b"<IsTruncated>true</IsTruncated><NextContinuationToken>tok</NextContinuationToken>"
    b"<Contents><Key>p/a</Key><LastModified>2026-01-02T03:04:05.678Z</LastModified>"
    b"<ETag>&quot;e1&quot;</ETag><ChecksumAlgorithm>CRC32</ChecksumAlgorithm>"
    b"<ChecksumType>FULL_OBJECT</ChecksumType><Size>12</Size>"
    b"<StorageClass>STANDARD</StorageClass></Contents>"
    b"<Contents><Key>p/b</Key><LastModified>2026-01-02T03:04:06Z</LastModified>"
    b"<ETag>&quot;e2&quot;</ETag><Size>0</Size></Contents>"
    b"</ListBucketResult>"
)


def _parse(body: bytes, status: int = 200) -> tuple[dict[str, Any], dict[str, Any]]:
    response = {"status_code": status, "headers": {}, "body": body}
    custom: dict[str, Any] = {}
    parse_contents(response_dict=response, customized_response_dict=custom)
    return response, custom


def test_objects_are_taken_out_of_the_page_and_the_rest_left_to_botocore() -> None:
    response, custom = _parse(PAGE)
    a, b = custom["Contents"]
    assert a["Key"] == "p/a" and a["ETag"] == '"e1"' and a["Size"] == 12
    assert a["ChecksumAlgorithm"] == ["CRC32"] and a["ChecksumType"] == "FULL_OBJECT"
    assert a["LastModified"].timestamp() == pytest.approx(1767323045.678)
    assert b == {
        "Key": "p/b",
        "LastModified": b["LastModified"],
        "ETag": '"e2"',
        "Size": 0,
    }
    assert b"Contents" not in response["body"]
    assert b"NextContinuationToken>tok<" in response["body"]


@pytest.mark.parametrize(
    "body,status",
    [
        (PAGE.replace(b"<Size>0</Size>", b"<Size>0</Size><Owner><ID>x</ID></Owner>"), 200),
        (PAGE.replace(b"<Size>0</Size>", b"<Size>0</Size><Novel>1</Novel>"), 200),
        (PAGE.replace(b"<Size>12</Size>", b"<Size>twelve</Size>"), 200),
        (PAGE[:-20], 200),
        (b"<Error><Code>InternalError</Code></Error>", 200),
        (PAGE, 500),
        (b"", 200),
    ],
    ids=["owner", "unknown-member", "bad-size", "truncated", "error-doc", "status", "empty"],
)
def test_a_page_it_does_not_know_is_left_to_botocore_whole(body: bytes, status: int) -> None:
    response, custom = _parse(body, status)
    assert custom == {}
    assert response["body"] == body


def _operation(name: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("s3").operation_model(name)


@pytest.mark.parametrize(
    "body,status_after",
    [
        (PAGE, 200),
        (PAGE.replace(b"<Size>0</Size>", b"<Size>0</Size><Novel>1</Novel>"), 200),
        (PAGE[:-20], 500),
        (b"<Error><Code>InternalError</Code></Error>", 500),
    ],
    ids=["page", "unknown-member", "truncated", "error-doc"],
)
def test_one_parse_a_page_still_turns_an_error_inside_a_200_into_a_retry(
    body: bytes, status_after: int
) -> None:
    # botocore's own check of 200 bodies is replaced for listings by the page's one parse: an
    # error document or a torn body must still become a 500, which botocore retries.
    from botocore import handlers

    from mlvc_core.storage.s3 import _page_handler

    handle = _page_handler(handlers._handle_200_error)
    response = {"status_code": 200, "headers": {}, "body": body}
    custom: dict[str, Any] = {}
    handle(_operation("ListObjectsV2"), response, custom)
    assert response["status_code"] == status_after
    assert ("Contents" in custom) == (body == PAGE)


def test_other_operations_keep_botocores_check() -> None:
    from botocore import handlers

    from mlvc_core.storage.s3 import _page_handler

    handle = _page_handler(handlers._handle_200_error)
    body = b"<Error><Code>InternalError</Code></Error>"
    response = {"status_code": 200, "headers": {}, "body": body}
    handle(_operation("CompleteMultipartUpload"), response, {})
    assert response["status_code"] == 500
    assert response["body"] == body


def test_a_listing_page_is_parsed_once(moto_clean: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore import handlers

    checked: list[int] = []
    check = handlers._looks_like_special_case_error

    def counting(status: int, body: bytes) -> bool:
        checked.append(len(body))
        return bool(check(status, body))

    monkeypatch.setattr(handlers, "_looks_like_special_case_error", counting)
    options = moto_options(moto_clean)
    store = open_store(f"s3://{make_s3_bucket(options)}/repo", **options)
    for name in NAMES:
        store.write(name, b"x")
    list(store.list("nothing"))  # the client exists and its handlers are in place
    checked.clear()
    assert len(list(store.list("refs"))) == len(NAMES)
    assert checked == []  # botocore's check did not parse the page a second time
    store.write("refs/more", b"x")  # other requests keep botocore's check
    assert store.read("refs/more") == b"x"
    store.close()
