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


@pytest.mark.parametrize(
    "body",
    [b"", b"<html><body>gateway</body></html>", b"<ListAllMyBucketsResult/>"],
    ids=["empty", "html", "other-result"],
)
def test_a_200_listing_answer_that_is_no_listing_page_is_retried(body: bytes) -> None:
    # botocore reads these as a last, empty page: the listing would end short, silently.
    from botocore import handlers

    from mlvc_core.storage.s3 import _page_handler

    handle = _page_handler(handlers._handle_200_error)
    response = {"status_code": 200, "headers": {}, "body": body}
    custom: dict[str, Any] = {}
    handle(_operation("ListObjectsV2"), response, custom)
    assert response["status_code"] == 500
    assert custom == {}


class _Tamper:
    """A loopback HTTP proxy to an S3 endpoint that spoils listing pages on the way back.

    ``spoil(path, status, body)`` returns the status and body to send instead (path: the
    request's path and query).
    """

    def __init__(self, upstream: str, spoil: Any) -> None:
        import http.server
        import threading
        from socketserver import ThreadingMixIn

        import requests

        session = requests.Session()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                r = session.request(
                    self.command, upstream + self.path, headers=headers, data=data,
                    allow_redirects=False,
                )  # fmt: skip
                status, body = spoil(self.path, r.status_code, r.content)
                self.send_response(status)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _spoiled_store(moto_clean: str, spoil: Any, n: int = 25) -> tuple[Any, _Tamper]:
    options = moto_options(moto_clean)
    bucket = make_s3_bucket(options)
    store = open_store(f"s3://{bucket}/repo", **options)
    for i in range(n):
        store.write(f"refs/k{i:03d}", b"x")
    store.close()
    proxy = _Tamper(moto_clean, spoil)
    spoiled = open_store(
        f"s3://{bucket}/repo", **{**options, "client_kwargs": {"endpoint_url": proxy.url}}
    )
    spoiled.list_page_size = 10
    return spoiled, proxy


NOT_FOUND = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>NoSuchBucket</Code><Message>gone</Message></Error>"
)


@pytest.mark.parametrize(
    "status,body",
    [(200, b""), (200, b"<html/>"), (404, NOT_FOUND), (200, PAGE[:-20])],
    ids=["empty-200", "foreign-200", "not-found", "torn"],
)
def test_a_spoiled_later_page_fails_the_listing_instead_of_ending_it(
    moto_clean: str, status: int, body: bytes
) -> None:
    from mlvc_core.errors import StorageError

    def spoil(path: str, got: int, data: bytes) -> tuple[int, bytes]:
        if "list-type=2" in path and "continuation-token" in path:
            return status, body  # every later page, every attempt
        return got, data

    store, proxy = _spoiled_store(moto_clean, spoil)
    try:
        with pytest.raises(StorageError):
            list(store.list("refs/"))
        with pytest.raises(StorageError):
            list(store.list_ranges("refs/", ["refs/k012"]))
    finally:
        store.close()
        proxy.close()


def test_one_range_not_found_beside_others_fails_the_listing(moto_clean: str) -> None:
    from mlvc_core.errors import StorageError

    def spoil(path: str, got: int, data: bytes) -> tuple[int, bytes]:
        if "list-type=2" in path and "start-after=repo%2Frefs%2Fk012" in path:
            return 404, NOT_FOUND
        return got, data

    store, proxy = _spoiled_store(moto_clean, spoil)
    try:
        assert len(list(store.list("refs/"))) == 25
        with pytest.raises(StorageError):
            list(store.list_ranges("refs/", ["refs/k005", "refs/k012"]))
    finally:
        store.close()
        proxy.close()


def test_a_missing_bucket_still_lists_nothing(moto_clean: str) -> None:
    options = moto_options(moto_clean)
    store = open_store("s3://no-such-bucket-here/repo", **options)
    assert list(store.list("refs/")) == []
    assert list(store.list_ranges("refs/", ["refs/a", "refs/b"])) == []
    store.close()


def _botocore_parse(response: dict[str, Any]) -> dict[str, Any]:
    from botocore import parsers

    parsed = parsers.create_parser("rest-xml").parse(
        response, _operation("ListObjectsV2").output_shape
    )
    parsed.pop("ResponseMetadata", None)
    return dict(parsed)


_ONE = (
    b"<Contents><Key>p/a</Key><LastModified>2026-01-02T03:04:05.678Z</LastModified>"
    b'<ETag>"e"</ETag><Size>3</Size>%s</Contents>'
)


@pytest.mark.parametrize(
    "body",
    [
        PAGE,
        PAGE.replace(b"<Size>0</Size>", b"<Size>0</Size><IsLatest>true</IsLatest>"),
        PAGE.replace(b"<Size>0</Size>", b"<Size>0</Size><VersionId>v1</VersionId>"),
        PAGE.replace(b"<Key>p/a</Key>", b"<Key>  p/a \n</Key>"),
        PAGE.replace(b"<Key>p/a</Key>", b"<Key><![CDATA[p/<a>]]>&#x1F600;&amp;</Key>"),
        PAGE.replace(b"03:04:05.678Z", b"03:04:05.678+02:00"),
        PAGE.replace(b"2026-01-02T03:04:06Z", b"Fri, 02 Jan 2026 03:04:06 GMT"),
        PAGE.replace(b"2026-01-02T03:04:06Z", b"2026-01-02T03:04:06"),
        PAGE.replace(b"<Size>12</Size>", b"<Size> 12 </Size>"),
        PAGE.replace(b"<ETag>&quot;e2&quot;</ETag>", b"<ETag/>"),
        PAGE.replace(
            b"</ListBucketResult>",
            b"<CommonPrefixes><Prefix>p/x/</Prefix></CommonPrefixes></ListBucketResult>",
        ),
        PAGE.replace(b' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"', b""),
    ],
    ids=[
        "page",
        "is-latest",
        "version-id",
        "blank-key",
        "escaped-key",
        "offset",
        "rfc822",
        "no-zone",
        "padded-size",
        "empty-etag",
        "common-prefixes",
        "no-namespace",
    ],
)
def test_a_page_parses_to_what_botocore_alone_gives(body: bytes) -> None:
    response, custom = _parse(body)
    ours = _botocore_parse(response)
    ours.update(custom)
    assert ours == _botocore_parse({"status_code": 200, "headers": {}, "body": body})
