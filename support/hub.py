"""
The Hugging Face hub client (support module): list a dataset's parquet files, download one resumably.

    files = list_hub_files()                       # [{"name", "path", "size", "sha256"}] of FineWeb-Edu 10BT
    download_file(url, dest, size, sha256)         # HTTP Range into dest.incomplete, verified, then renamed

A request's first contact (connecting, the status line) is retried by urllib3 (requests' HTTPAdapter with a
Retry): server errors and 429 too, with exponential backoff; 4xx are reported at once with a hint. A body
cut mid-stream is not something urllib3 resumes, so download_file goes on from the bytes it has (Range).
Until the hub has answered once in this run, a failure to reach it most likely means no network or a wrong
endpoint, not a glitch: one retry only, so that the user hears it in seconds, not minutes.
Environment: HF_ENDPOINT (a mirror), HF_TOKEN (sent as a Bearer token).
"""

import os
import re
import sys
import time
from pathlib import Path

import requests
import urllib3
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.util import Retry

from support.files import sha256_file

HF_ENDPOINT = "https://huggingface.co"
FINEWEB_REPO = "HuggingFaceFW/fineweb-edu"
FINEWEB_SUBSET = "sample/10BT"
RETRIES = 5              # failed attempts (with no progress) before a request gives up
RETRY_BASE_DELAY = 1.0   # seconds; the backoff doubles after each failure (tests set it to 0)
FIRST_CONTACT_RETRIES = 1  # before the hub has answered once (see above)
CONNECT_TIMEOUT = 10.0   # seconds to open a connection
LIST_TIMEOUT = 10.0      # seconds to wait for the (small) listing
READ_TIMEOUT = 30.0      # seconds without a byte before a download attempt counts as failed
RETRY_STATUS = (429, *range(500, 600))  # worth another try; 4xx (bad token, wrong path) will not fix itself
_hub_answered = False    # set once any hub request got an HTTP answer


def _say(msg, quiet=False):
    if not quiet:  # stderr, next to tqdm's bars; stdout is kept for prepare_data.py's summary line
        print(msg, file=sys.stderr, flush=True)


def hub_endpoint(endpoint=None):
    return (endpoint or os.environ.get("HF_ENDPOINT") or HF_ENDPOINT).rstrip("/")


def _hub_headers():
    token = os.environ.get("HF_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


class _Retry(Retry):
    """urllib3's Retry that says each retry on stderr (a backoff can last a while): label, and the retries
    allowed for no answer at all (tries) and for a server error (RETRIES)."""
    label, quiet, tries = "", True, RETRIES

    def new(self, **kw):  # urllib3 makes a new Retry for every attempt
        new = super().new(**kw)
        new.label, new.quiet, new.tries = self.label, self.quiet, self.tries
        return new

    def increment(self, method=None, url=None, response=None, error=None, *args, **kw):
        new = super().increment(method, url, response, error, *args, **kw)  # raises when retries are spent
        what, limit = (type(error).__name__, self.tries) if error else (f"HTTP {response.status}", RETRIES)
        _say(f"{self.label}: {what}, retry {len(new.history)}/{limit}", self.quiet)
        return new


def _get(url, label, quiet, read_timeout, headers=None, stream=False):
    """GET url with urllib3's retries and backoff (see above); returns the response, whatever its status."""
    global _hub_answered
    tries = RETRIES if _hub_answered else FIRST_CONTACT_RETRIES  # for connecting and for the status line
    retry = _Retry(total=RETRIES, connect=tries, read=tries, backoff_factor=RETRY_BASE_DELAY,
                   status_forcelist=RETRY_STATUS, raise_on_status=False, respect_retry_after_header=False)
    retry.label, retry.quiet, retry.tries = label, quiet, tries
    with requests.Session() as session:  # requests.get does the same; a streamed body outlives it
        session.mount("http://", HTTPAdapter(max_retries=retry))
        session.mount("https://", HTTPAdapter(max_retries=retry))
        r = session.get(url, headers=_hub_headers() | (headers or {}), stream=stream,
                        timeout=(CONNECT_TIMEOUT, read_timeout))
    _hub_answered = True
    return r


def _attempts(r):
    """How many times urllib3 sent the request that got response r."""
    return len(r.raw.retries.history) + 1 if getattr(r.raw, "retries", None) else 1


def _gave_up(tmp, attempts, e):
    return RuntimeError(f"{tmp.name.removesuffix('.incomplete')}: download failed {attempts} times in a row, last: "
                        f"{e}; check the network or HF_ENDPOINT and re-run ({tmp.name} is kept and resumes)")


def _http_hint(e):
    code = getattr(e.response, "status_code", None) if isinstance(e, requests.HTTPError) else None
    return {401: " (set HF_TOKEN if the endpoint needs one)", 403: " (set HF_TOKEN if the endpoint needs one)",
            404: " (not on this endpoint: check HF_ENDPOINT)"}.get(code, "")


def _no_contact(e):
    """A failure to get any answer from the endpoint before it has answered once in this run."""
    return not _hub_answered and isinstance(e, (requests.ConnectionError, requests.Timeout))


def _offline(e, endpoint):
    reason = getattr(e.args[0], "reason", None) if e.args else None  # what urllib3 gave up on
    if isinstance(e, requests.ConnectTimeout):
        why = f"no connection within {CONNECT_TIMEOUT:g} s"
    elif isinstance(e, requests.ReadTimeout) or isinstance(reason, urllib3.exceptions.ReadTimeoutError):
        why = "it accepted the connection but never answered"
    else:  # urllib3's text is long: keep its "[Errno 111] Connection refused" or name-resolution part
        why = (m := re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(e))) and m[1] or type(e).__name__
    return (f"cannot reach {endpoint} ({why}); offline? --source embedded or --input FILES need no network, "
            "and HF_ENDPOINT or --endpoint can name a mirror")

# -----------------------------------------------------------------------------
# the listing


def list_hub_files(endpoint=None, repo=FINEWEB_REPO, subset=FINEWEB_SUBSET, quiet=False):
    """The subset's parquet files from the hub's tree API: [{"name", "path", "size", "sha256"}], sorted."""
    url = f"{hub_endpoint(endpoint)}/api/datasets/{repo}/tree/main/{subset}"
    entries = []
    while url:
        try:
            r = _get(url, f"listing {url}", quiet, LIST_TIMEOUT)
            r.raise_for_status()
        except requests.RequestException as e:
            if _no_contact(e):
                raise RuntimeError(_offline(e, hub_endpoint(endpoint))) from None
            raise RuntimeError(f"cannot list {url}: {e}{_http_hint(e)}") from None
        try:
            page = r.json()
        except ValueError:  # say an HTML page: a captive portal, or an endpoint that is not a hub
            page = None
        if not isinstance(page, list) or not all(isinstance(e, dict) and "path" in e for e in page):
            raise RuntimeError(f"{url} answered {r.headers.get('Content-Type', 'something')} that is not the hub's "
                               "JSON file listing: is HF_ENDPOINT (or --endpoint) a Hugging Face hub or mirror?")
        entries += page
        url = r.links.get("next", {}).get("url")  # the hub pages long listings through a Link header
    files = [{"name": e["path"].rsplit("/", 1)[-1], "path": e["path"],
              "size": (e.get("lfs") or e)["size"], "sha256": (e.get("lfs") or {}).get("oid")}
             for e in entries if e.get("type") == "file" and e["path"].endswith(".parquet")]
    if not files:
        raise RuntimeError(f"no parquet files under {subset} in {repo} at {hub_endpoint(endpoint)}")
    return sorted(files, key=lambda f: f["path"])

# -----------------------------------------------------------------------------
# resumable downloads


def _verify(path, size, sha256):
    got_size = path.stat().st_size
    if got_size != size:
        return f"size mismatch (got {got_size} bytes, expected {size})"
    if sha256 and (got := sha256_file(path)) != sha256:
        return f"sha256 mismatch (got {got}, expected {sha256})"
    return None


def download_file(url, dest, size, sha256=None, quiet=False):
    """Download url to dest: resumable (HTTP Range into dest.incomplete), retried with backoff, verified
    against size and sha256 before it is renamed to dest. An existing valid dest is reused as is."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if (problem := _verify(dest, size, sha256)) is None:
            return dest
        _say(f"{dest}: cached copy is bad ({problem}); downloading it again", quiet)
        dest.unlink()
    tmp = dest.with_name(dest.name + ".incomplete")
    if tmp.exists() and tmp.stat().st_size > size:
        tmp.unlink()  # longer than the file can be: start over
    stalls = 0  # cuts in a row that brought no new bytes
    while (have := tmp.stat().st_size if tmp.exists() else 0) < size:
        r = _contact(url, dest, tmp, have, quiet)
        try:
            _append(r, tmp, have, size, quiet)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            # cut mid-body: urllib3 does not resume, this loop does. A cut that moved the file forward is
            # progress, not a failure: only stalls use up retries
            stalls = 0 if tmp.exists() and tmp.stat().st_size > have else stalls + 1
            if stalls > RETRIES:
                raise _gave_up(tmp, stalls, e) from None
            _say(f"{dest.name}: {type(e).__name__}, {f'retry {stalls}/{RETRIES}' if stalls else 'resuming'}", quiet)
            time.sleep(min(60.0, RETRY_BASE_DELAY * 2 ** (stalls - 1)))
    if (problem := _verify(tmp, size, sha256)) is not None:
        tmp.unlink()  # resuming onto bad bytes could never succeed
        raise ValueError(f"{dest.name}: {problem}; the download was deleted, re-run to fetch it again")
    os.replace(tmp, dest)
    return dest


def _contact(url, dest, tmp, have, quiet):
    """The streamed response to a GET of url from byte `have` on (urllib3 retries it); one line if it fails."""
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:  # follows the CDN redirect; the read timeout is per read, so a slow but moving transfer never hits it
        r = _get(url, dest.name, quiet, READ_TIMEOUT, headers, stream=True)
    except requests.RequestException as e:
        if _no_contact(e):  # say a resumed build (no listing needed), offline
            raise RuntimeError(f"{dest.name}: {_offline(e, url.split('/datasets/')[0])}") from None
        raise _gave_up(tmp, RETRIES + 1, e) from None
    try:
        r.raise_for_status()
    except requests.HTTPError as e:
        r.close()
        if r.status_code in RETRY_STATUS:  # urllib3 retried it until it gave up
            raise _gave_up(tmp, _attempts(r), e) from None
        raise RuntimeError(f"{dest.name}: download failed: {e}{_http_hint(e)}") from None
    return r


def _append(r, tmp, have, size, quiet):
    """Write the body of r to tmp: appended at `have` if the server honoured Range, else from byte 0."""
    if have and r.status_code != 206:  # a 200 is the whole file from byte 0
        have = 0
    with r, open(tmp, "ab" if have else "wb") as f, \
            tqdm(total=size, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                 desc=tmp.name.removesuffix(".incomplete"), disable=quiet, leave=False) as bar:
        # 64 KiB: a cut connection loses the chunk in flight (urllib3 drops a partial read), no more
        for chunk in r.iter_content(chunk_size=1 << 16):
            f.write(chunk)
            bar.update(len(chunk))
        f.flush()
        os.fsync(f.fileno())
