"""The stdlib S3 reader (publish/s3read.py): botocore's signatures, botocore's answers, real servers."""

from __future__ import annotations

import datetime
import http.server
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegraph.publish.s3 import S3Index, S3Settings, make_client
from imagegraph.publish.s3read import EMPTY_SHA256, Keys, S3ReadError, reader_for, sign

from .fixtures_servers import S3_TEST_ACCESS, S3_TEST_SECRET, S3Server
from .httpstub import reply, serving

FAST = S3Settings.quick()

# ------------------------------------------------------------------ signatures against botocore's signer

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24)


def _botocore_authorization(
    method: str, url: str, keys: Keys, region: str, when: datetime.datetime, headers: dict[str, str]
) -> str:
    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials

    req = botocore.awsrequest.AWSRequest(method=method, url=url, headers=dict(headers))
    creds = botocore.credentials.Credentials(keys.access, keys.secret, keys.token)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=when):
        botocore.auth.S3SigV4Auth(creds, "s3", region).add_auth(req)
    return req.headers["Authorization"]


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from(["GET", "HEAD"]),
    scheme=st.sampled_from(["http", "https"]),
    port=st.sampled_from([None, 80, 443, 9000]),
    base=st.sampled_from(["", "/s3", "/gw/s3"]),
    bucket=st.from_regex(r"[a-z0-9][a-z0-9.-]{2,20}[a-z0-9]", fullmatch=True),
    key=_text,
    prefix=st.none() | _text,
    token=st.none() | st.text("ABCDEFGHIJ0123456789+/=", min_size=8, max_size=40),
    continuation=st.none() | st.text("abcXYZ0189+/=", min_size=1, max_size=30),
    region=st.sampled_from(["us-east-1", "eu-west-3", "default"]),
    when=st.datetimes(min_value=datetime.datetime(2000, 1, 1), max_value=datetime.datetime(2099, 12, 31)),
)
def test_signatures_are_botocores(
    method, scheme, port, base, bucket, key, prefix, token, continuation, region, when
) -> None:
    """Every request the reader can send is signed exactly as botocore's S3 signer signs it."""
    from imagegraph.publish.s3read import _quote

    when = when.replace(tzinfo=datetime.UTC)
    keys = Keys("AKIAEXAMPLE123", "secret/with+chars=", token)
    host = "gw.example.org" + (f":{port}" if port else "")
    path = f"{base}/{bucket}" + (f"/{_quote(key, '/~')}" if prefix is None else "")
    query: dict[str, str] = {}
    if prefix is not None:
        query = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
        if continuation:
            query["continuation-token"] = continuation
    payload = EMPTY_SHA256  # botocore signs a bodiless request's payload over http and https alike
    signed = sign(method, host, path, query, keys, region, when, payload)
    # the Host header as http.client sends it (default ports left out)
    default = {"http": 80, "https": 443}[scheme]
    sent_host = host if port not in (None, default) else "gw.example.org"
    if sent_host != host:
        signed = sign(method, sent_host, path, query, keys, region, when, payload)
    target = path + ("?" + "&".join(f"{_quote(k)}={_quote(v)}" for k, v in query.items()) if query else "")
    url = f"{scheme}://{host}{target}"
    theirs = _botocore_authorization(
        method,
        url,
        keys,
        region,
        when,
        {k: v for k, v in signed.items() if k not in ("authorization", "host")},
    )
    assert signed["authorization"] == theirs


# ------------------------------------------------------------------ a real S3 server (moto over HTTP)

ODD_KEYS = [
    "rocky9.6-compute-1",
    "efi-images/vmlinuz-6.1.0",
    "a b+c",
    "ü/é~x",
    "100%/sure?yes&no=1",
    "tab\there",
    "sp ace/",
]


@pytest.fixture
def bucket(s3_env: S3Server) -> str:
    name = s3_env.make_bucket("read")
    c = s3_env.client()
    for i, k in enumerate(ODD_KEYS):
        c.put_object(Bucket=name, Key=k, Body=b"x" * i, Metadata={"imagegraph-key": f"k{i}", "Sha256": "ab"})
    return name


def _answers(index: S3Index, endpoint: str, bucket: str) -> tuple:
    return (
        index.objects(endpoint, bucket, ""),
        index.objects(endpoint, bucket, "efi-images/"),
        [index.metadata(endpoint, bucket, k) for k in [*ODD_KEYS, "absent", "efi-images/"]],
        index.objects(endpoint, "no-such-bucket-here", ""),
        index.unreachable(endpoint),
    )


def test_reads_what_botocore_reads(s3_env: S3Server, bucket: str) -> None:
    """Listings (odd keys, prefixes), metadata, a missing key and a missing bucket: the same answers,
    and not one botocore request on the reader's side."""
    ours = S3Index(settings=FAST)
    assert ours.reader(s3_env.endpoint) is not None
    theirs = S3Index(settings=FAST, client_factory=make_client)
    assert _answers(ours, s3_env.endpoint, bucket) == _answers(theirs, s3_env.endpoint, bucket)
    got = ours.objects(s3_env.endpoint, bucket, "")
    assert set(got or {}) == set(ODD_KEYS)
    assert ours.metadata(s3_env.endpoint, bucket, "a b+c") == {"imagegraph-key": "k2", "sha256": "ab"}
    assert ours.objects(s3_env.endpoint, "no-such-bucket-here") == {}
    assert ours.unreachable(s3_env.endpoint) is None  # absent is not "cannot tell"
    assert ours._clients == {}  # botocore never asked
    assert ours.request_count == theirs.request_count


def test_listings_page_as_botocore_pages(s3_env: S3Server) -> None:
    """More than one page (S3 answers 1,000 keys a page): every key, each once."""
    name = s3_env.make_bucket("pages")
    c = s3_env.client()
    keys = [f"k/{i:05d} +" for i in range(1003)]
    for k in keys:
        c.put_object(Bucket=name, Key=k, Body=b"")
    index = S3Index(settings=FAST)
    got = index.objects(s3_env.endpoint, name, "k/")
    assert sorted(got or {}) == sorted(keys)
    assert index.request_count == 2


def test_a_dead_endpoint_is_unknown_not_absent(s3_env: S3Server) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    dead = f"http://127.0.0.1:{port}"
    index = S3Index(settings=FAST)
    assert index.reader(dead) is not None
    assert index.objects(dead, "boot") is None
    assert index.metadata(dead, "boot", "x") is None
    why = index.unreachable(dead) or ""
    assert "is unreachable or failing" in why and dead in why and S3_TEST_SECRET not in why


@pytest.fixture
def iam_s3(tmp_path: Path) -> Iterator[tuple[S3Server, str, str]]:
    """moto checking every S3 request's signature against an IAM user's key (made by the first 3 requests)."""
    import boto3

    server = S3Server(tmp_path, env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    server.start()
    try:
        iam = boto3.client(
            "iam", endpoint_url=server.endpoint, aws_access_key_id="x", aws_secret_access_key="y",
            region_name="us-east-1",
        )  # fmt: skip
        iam.create_user(UserName="ig")
        key = iam.create_access_key(UserName="ig")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="ig", PolicyName="all", PolicyDocument=json.dumps(policy))
        yield server, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        server.close()


def test_a_signature_checking_server_accepts_ours_and_refuses_a_wrong_secret(
    iam_s3: tuple[S3Server, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    server, access, secret = iam_s3
    s3 = boto3.client(
        "s3", endpoint_url=server.endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
        region_name="us-east-1",
    )  # fmt: skip
    s3.create_bucket(Bucket="signed")
    for k in ODD_KEYS:
        s3.put_object(Bucket="signed", Key=k, Body=b"1", Metadata={"imagegraph-key": "k"})
    monkeypatch.setenv("S3_ACCESS", access)
    monkeypatch.setenv("S3_SECRET", secret)
    index = S3Index(settings=FAST)
    assert set(index.objects(server.endpoint, "signed") or {}) == set(ODD_KEYS)
    assert all(index.metadata(server.endpoint, "signed", k) == {"imagegraph-key": "k"} for k in ODD_KEYS)
    assert index.unreachable(server.endpoint) is None

    wrong = "wrong-" + secret[:10]
    monkeypatch.setenv("S3_SECRET", wrong)
    index = S3Index(settings=FAST)
    assert index.objects(server.endpoint, "signed") is None  # cannot tell, not "absent"
    why = index.unreachable(server.endpoint) or ""
    assert "access denied" in why and "SignatureDoesNotMatch" in why
    assert wrong not in why and secret not in why


# ------------------------------------------------------------------ when botocore answers instead


@pytest.mark.parametrize(
    ("env", "reads"),
    [
        ({"S3_ACCESS": "a", "S3_SECRET": "b"}, True),
        ({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "AWS_SESSION_TOKEN": "t"}, True),
        ({}, False),  # boto3's chain: profiles, SSO, instance metadata
        ({"S3_ACCESS": "a"}, False),
        ({"S3_ACCESS": "a", "S3_SECRET": "b", "AWS_PROFILE": "site"}, False),
        ({"S3_ACCESS": "a", "S3_SECRET": "b", "HTTPS_PROXY": "http://proxy:3128"}, False),
        ({"S3_ACCESS": "a", "S3_SECRET": "b", "http_proxy": "http://proxy:3128"}, False),
        ({"S3_ACCESS": "a", "S3_SECRET": "b", "IMAGEGRAPH_S3_READ": "botocore"}, False),
        ({"S3_ACCESS": "a", "S3_SECRET": "b", "AWS_CONFIG_FILE": "{config}"}, False),
    ],
)
def test_the_reader_only_where_it_reads_as_botocore(
    env: dict[str, str], reads: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in list(os.environ):
        if var.startswith(("AWS_", "S3_")) or var.lower().endswith("_proxy") or var == "IMAGEGRAPH_S3_READ":
            monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws/config
    config = tmp_path / "aws-config"
    config.write_text("[default]\nca_bundle = /etc/site-ca.pem\n")
    for k, v in env.items():
        monkeypatch.setenv(k, v.format(config=config))
    assert (reader_for("http://127.0.0.1:9000") is not None) is reads
    if reads:  # and an https endpoint verifies with the CA bundle botocore would use
        import certifi

        assert reader_for("https://s3.site.example").cafile == certifi.where()
        monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/site-ca.pem")
        assert reader_for("https://s3.site.example").cafile == "/etc/site-ca.pem"


# ------------------------------------------------------------------ retries and region redirects


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers from a script: (status, headers, body) per request, then 200 with an empty listing."""

    script: list[tuple[int, dict[str, str], bytes]] = []
    seen: list[tuple[str, str]] = []
    EMPTY = b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><IsTruncated>false</IsTruncated></ListBucketResult>'

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append((self.path, self.headers.get("Authorization", "")))
        reply(self, *(self.script.pop(0) if self.script else (200, {}, self.EMPTY)))

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, type[_Scripted]]]:
    monkeypatch.setenv("S3_ACCESS", S3_TEST_ACCESS)
    monkeypatch.setenv("S3_SECRET", S3_TEST_SECRET)
    handler = type("Handler", (_Scripted,), {"script": [], "seen": []})
    with serving(handler) as port:
        yield f"http://127.0.0.1:{port}", handler


def test_transient_answers_are_retried_and_lasting_ones_are_not(scripted) -> None:
    endpoint, handler = scripted
    slow = b"<Error><Code>SlowDown</Code><Message>reduce your rate</Message></Error>"
    handler.script = [(503, {}, slow)]
    reader = reader_for(endpoint, attempts=3)
    assert list(reader.list_objects("boot", "")) == []
    assert len(handler.seen) == 2
    handler.script = [(503, {}, slow)] * 3
    with pytest.raises(S3ReadError) as err:
        list(reader.list_objects("boot", ""))
    assert err.value.code == "SlowDown" and err.value.transient
    denied = b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>"
    handler.script, before = [(403, {}, denied)], len(handler.seen)
    with pytest.raises(S3ReadError) as err:
        list(reader.list_objects("boot", ""))
    assert err.value.code == "AccessDenied" and len(handler.seen) == before + 1


def test_a_bucket_in_another_region_is_asked_again_there(scripted) -> None:
    endpoint, handler = scripted
    moved = b"<Error><Code>PermanentRedirect</Code><Message>elsewhere</Message></Error>"
    handler.script = [(301, {"x-amz-bucket-region": "eu-west-3"}, moved)]
    reader = reader_for(endpoint, region="us-east-1")
    assert list(reader.list_objects("boot", "")) == []
    (_, first), (_, second) = handler.seen
    assert "/us-east-1/s3/" in first and "/eu-west-3/s3/" in second


# ------------------------------------------------------------------ a no-op `up` without botocore


def test_noop_up_with_s3_targets_loads_no_botocore(s3_env: S3Server, tmp_path: Path) -> None:
    """A no-op `up` of a layer published to S3 asks S3 through the reader: all up to date, botocore
    not loaded; made to use botocore, the same answer (and botocore loaded: the probe can tell)."""
    from .fakebuildah import install
    from .test_cli_startup import UP_PROBE
    from .test_executor import KERNEL, layer

    fake = install(tmp_path)
    bucket = s3_env.make_bucket()
    root = tmp_path / "layers"
    root.mkdir()
    extra = f"publish_s3: {s3_env.endpoint}\ns3_bucket: {bucket}\n"
    (root / "base.yaml").write_text(layer("base", None, [KERNEL], extra))
    state = tmp_path / "state" / "state.db"
    env = fake.env(XDG_CACHE_HOME=str(tmp_path / "xdg"), S3_ACCESS=S3_TEST_ACCESS, S3_SECRET=S3_TEST_SECRET)
    env = {k: v for k, v in env.items() if not k.lower().endswith("_proxy")}
    up = [sys.executable, "-m", "imagegraph.cli", "up", str(root), "--state", str(state)]
    first = subprocess.run(up, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    assert s3_env.client().list_objects_v2(Bucket=bucket)["KeyCount"] >= 3  # rootfs, kernel, initramfs
    for extra_env, botocore_loaded in (({}, False), ({"IMAGEGRAPH_S3_READ": "botocore"}, True)):
        r = subprocess.run(
            [sys.executable, "-c", UP_PROBE, *up[3:], "--json"],
            capture_output=True,
            text=True,
            env={**env, **extra_env},
            timeout=300,
        )
        probe = json.loads(r.stderr.strip().splitlines()[-1])
        assert probe["status"] == 0, r.stderr
        doc = json.loads(r.stdout)
        assert {x["status"] for x in doc["layers"]} == {"up-to-date"}, doc
        assert ("botocore" in probe["modules"]) is botocore_loaded


def test_checking_a_bucket_says_what_botocore_says(s3_env: S3Server, bucket: str) -> None:
    """The check before mksquashfs, through the reader: the same outcome and words as S3Target's."""
    import socket

    from imagegraph.errors import PublishError
    from imagegraph.publish.s3 import S3Target, check_bucket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    fast = S3Settings(retry=FAST.retry, botocore_attempts=1, connect_timeout=2)
    check_bucket(s3_env.endpoint, bucket, layer="compute", settings=fast)  # there: nothing raised
    for endpoint, name in ((s3_env.endpoint, "no-such-bucket-here"), (dead, bucket)):
        with pytest.raises(PublishError) as ours:
            check_bucket(endpoint, name, layer="compute", settings=fast)
        with pytest.raises(PublishError) as theirs:
            S3Target(endpoint, name, layer="compute", settings=fast).check_bucket()
        if endpoint == dead:  # the connection error's own text differs; the sentence does not
            assert "is unreachable or failing" in str(ours.value) and "is unreachable or failing" in str(
                theirs.value
            )
        else:
            assert str(ours.value) == str(theirs.value)
            assert "does not exist" in str(ours.value)
