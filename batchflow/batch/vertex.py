"""The Vertex AI batch backend: Gemini batch prediction jobs, BigQuery in and BigQuery out (google-genai).

Text-embedding models (text-embedding-005, ...) go through the same generic `batches.create` (contract
§3: `create_embeddings` is Gemini-API only); their input table holds `content` (and `task_type`,
`title`) columns, their parameters travel once per job as `modelParameters` (in `extra_body`, which
google-genai merges into the REST body), and their output holds `predictions` and `status`.

Contract: /work/shared/contract/vertex-batch.md §4. Three things shape this module:
- `create` is not idempotent. Only a 429 proves nothing was created; after a 5xx, a timeout or a dropped
  connection the job is looked up by its `batchflow_job_key` label and adopted before any new attempt.
- The SDK rebuilds job URLs from the client's own project/location (§4.3), so get/cancel route each job
  name to a client for the name's own project and location.
- `batches.get` can fail to parse a job (pydantic, on google.rpc `error.details` objects, §4.4) and
  drops `labels`: such reads fall back to the raw REST JSON through the same client's transport.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import threading
from typing import Any, Callable, TypeVar
from urllib.parse import urlencode

import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from batchflow.batch.base import JobNotFoundError, JobSpec, JobState, JobStatus
from batchflow.errors import ConfigError, ExecutionError
from batchflow.relation import Relation

try:  # google-genai 3.x talks through httpx2; 2.x (and an injected client) through httpx
    import httpx2

    _TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, httpx2.TransportError)
except ImportError:  # pragma: no cover
    _TRANSPORT_ERRORS = (httpx.TransportError,)

JOB_KEY_LABEL = "batchflow_job_key"
_NAME = re.compile(r"^projects/([^/]+)/locations/([^/]+)/batchPredictionJobs/([^/]+)$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_TRANSIENT_CODES = frozenset({408, 429, 500, 502, 503, 504})
_PAGE_SIZE = 100
#: create() waits at most this long (ms) for an answer; a timeout is an ambiguous create, resolved by
#: looking the job up by its label before any new attempt (a hung create must not hang the run)
CREATE_TIMEOUT_MS = 120_000
_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
T = TypeVar("T")




class VertexBackend:
    """`BatchBackend` on Vertex AI batch prediction (jobs in `project`/`location`, a regional location).

    `client` (optional) serves (`project`, `location`); clients for jobs named under another project or
    location are built from `credentials`, `base_url` and `api_version` (None: the SDK's defaults).
    `retry_attempts`/`retry_delay` bound the backoff on transient API errors.
    """

    name = "vertex"
    #: jobs run on Vertex: they go on when this process ends, and a rerun adopts them by name
    jobs_outlive_process = True
    #: a batch job reads a BigQuery input table (contract §1); views are not assumed to work
    reads_views = False
    #: the default poll interval; the constructor's `poll_interval` sets this instance's
    poll_interval: float = 30.0

    def __init__(
        self,
        project: str,
        location: str,
        *,
        client: genai.Client | None = None,
        credentials: Any = None,
        base_url: str | None = None,
        api_version: str | None = None,
        poll_interval: float = 30.0,
        retry_attempts: int = 5,
        retry_delay: float = 1.0,
    ):
        if not project or not location:
            raise ConfigError("the vertex backend needs a project and a location")
        if location.strip().lower() == "global":
            raise ConfigError(
                "vertex location `global` cannot run BigQuery batch jobs; use a regional location "
                "(e.g. us-central1) in the same region as the input and output datasets"
            )
        self.project = project
        self.location = location
        self.poll_interval = poll_interval
        self.retry_attempts = max(1, retry_attempts)
        self.retry_delay = retry_delay
        if credentials is None and client is None:
            credentials = _default_credentials()
        self._credentials = credentials
        self._http_options = (
            types.HttpOptions(base_url=base_url, api_version=api_version) if base_url or api_version else None
        )
        self._clients: dict[tuple[str, str], genai.Client] = {}
        self._built: list[genai.Client] = []  # clients we own (and close)
        if client is not None:
            self._clients[(project, location)] = client
        self._labels: dict[str, dict[str, str]] = {}  # job name → labels (the SDK's BatchJob drops them)
        self._lock = threading.Lock()

    # -- protocol ------------------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> JobStatus:
        """Create the job; retry a 429, adopt-or-retry after an ambiguous failure (see module doc)."""
        _check_labels(spec.labels)
        client = self._client(self.project, self.location)
        body: dict[str, Any] = {"labels": dict(spec.labels)}
        if spec.model_parameters:  # an embedding job's TextEmbeddingPredictionParams, once per job (§3)
            body["modelParameters"] = dict(spec.model_parameters)
        config = types.CreateBatchJobConfig(
            dest=spec.output.bq_uri,
            display_name=spec.display_name,
            http_options=types.HttpOptions(extra_body=body, timeout=CREATE_TIMEOUT_MS),
        )
        # Adopt by the job key when there is one, else by all labels; with no labels we cannot tell.
        key = {JOB_KEY_LABEL: spec.labels[JOB_KEY_LABEL]} if JOB_KEY_LABEL in spec.labels else dict(spec.labels)
        adopted: list[JobStatus] = []

        def create() -> types.BatchJob:
            try:
                return client.batches.create(model=spec.model, src=spec.input.bq_uri, config=config)
            except Exception as exc:
                if not _ambiguous(exc):
                    raise
                if not key:
                    raise ExecutionError(
                        f"creating batch job {spec.display_name!r} failed ambiguously ({_describe(exc)}) and it "
                        "carries no labels to look it up by; not retrying (a retry could create a second job)"
                    ) from exc
                try:
                    found = self.list(key)
                except ExecutionError as lookup:  # cannot tell whether the job exists: must not create again
                    raise ExecutionError(
                        f"creating batch job {spec.display_name!r} failed ambiguously ({_describe(exc)}) and "
                        f"looking it up by labels {key} failed too ({lookup}); not retrying"
                    ) from exc
                if found:
                    adopted.append(found[0])
                    return None  # type: ignore[return-value]
                raise

        try:  # a 429 created nothing; an ambiguous failure gets here only when the lookup found no job
            job = self._retrying(create, _transient)
        except (genai_errors.APIError, *_TRANSPORT_ERRORS) as exc:
            raise ExecutionError(f"creating batch job {spec.display_name!r} failed: {_describe(exc)}") from exc
        if adopted:
            return adopted[0]
        self._labels[job.name] = dict(spec.labels)
        return self._status_from_sdk(job, requested=spec.output)

    def get(self, name: str) -> JobStatus:
        """Current status; raises `JobNotFoundError` for an unknown job."""
        client, full = self._locate(name)
        try:
            job = self._call(lambda: client.batches.get(name=full), f"reading batch job {full}")
        except (ValueError, TypeError, KeyError):  # SDK parsing failed (pydantic ValidationError is a ValueError)
            return self._status_from_rest(self._raw_job(client, full))
        status = self._status_from_sdk(job)
        if status.name not in self._labels:  # a job this process did not create or list: read its labels once
            try:
                self._labels[status.name] = dict(self._raw_job(client, full).get("labels") or {})
            except ExecutionError:  # the state is what matters; labels are tried again next time
                return status
        status.labels = dict(self._labels[status.name])
        return status

    def cancel(self, name: str) -> None:
        """Ask the service to cancel; a job that already finished is left as it is."""
        client, full = self._locate(name)
        try:
            self._call(lambda: client.batches.cancel(name=full), f"cancelling batch job {full}")
        except ExecutionError as exc:
            cause = exc.__cause__
            if isinstance(cause, genai_errors.APIError) and cause.code == 400 and cause.status == "FAILED_PRECONDITION":
                return  # Vertex refuses to cancel a finished job
            raise

    def check(self) -> str:
        jobs = self.list({"batchflow_debug": "1"})  # one real call: credentials, endpoint, permissions
        return f"listing jobs in {self.project}/{self.location} works ({len(jobs)} matched a probe label)"

    def describe(self) -> str:
        """Project, region and endpoint of the jobs."""
        base = self._http_options.base_url if self._http_options and self._http_options.base_url else "Vertex AI"
        return f"project {self.project}, location {self.location}, {base}"

    def list(self, labels: dict[str, str] | None = None) -> list[JobStatus]:
        """Jobs of `project`/`location` carrying all `labels` (server-side filter, every page).

        Raw REST rather than `batches.list`: the SDK drops `labels` and can fail to parse a job (§4.4).
        """
        _check_labels(labels or {})
        client = self._client(self.project, self.location)
        query: dict[str, Any] = {"pageSize": _PAGE_SIZE}
        if labels:
            query["filter"] = " AND ".join(f'labels.{k}="{v}"' for k, v in sorted(labels.items()))
        out: list[JobStatus] = []
        while True:
            path = f"projects/{self.project}/locations/{self.location}/batchPredictionJobs?{urlencode(query)}"
            page = self._call(lambda: _raw(client, "get", path), "listing batch jobs")
            for raw in page.get("batchPredictionJobs") or []:
                out.append(self._status_from_rest(raw))
            token = page.get("nextPageToken")
            if not token:
                return out
            query["pageToken"] = token

    def close(self) -> None:
        """Close the HTTP clients this backend built."""
        with self._lock:
            built, self._built = self._built, []
            self._clients = {k: c for k, c in self._clients.items() if all(c is not b for b in built)}
        for client in built:
            client.close()

    # -- clients and calls -----------------------------------------------------------------------
    def _client(self, project: str, location: str) -> genai.Client:
        with self._lock:
            client = self._clients.get((project, location))
            if client is None:
                client = genai.Client(
                    vertexai=True,
                    project=project,
                    location=location,
                    credentials=self._credentials,
                    http_options=self._http_options,
                )
                self._clients[(project, location)] = client
                self._built.append(client)
            return client

    def _locate(self, name: str) -> tuple[genai.Client, str]:
        """The client for a job name's own project/location, and the full name (a bare id is ours)."""
        match = _NAME.match(name)
        if match:
            project, location, job_id = match.groups()
        elif name.isdigit():
            project, location, job_id = self.project, self.location, name
        else:
            raise ExecutionError(f"not a Vertex batch job name: {name!r}")
        return self._client(project, location), f"projects/{project}/locations/{location}/batchPredictionJobs/{job_id}"

    def _retrying(self, fn: Callable[[], T], retryable: Callable[[BaseException], bool]) -> T:
        retrying = Retrying(
            stop=stop_after_attempt(self.retry_attempts),
            wait=wait_exponential_jitter(initial=self.retry_delay, max=60 * self.retry_delay, jitter=self.retry_delay),
            retry=retry_if_exception(retryable),
            reraise=True,
        )
        return retrying(fn)

    def _call(self, fn: Callable[[], T], what: str) -> T:
        """Run an idempotent API call, retrying transient errors; API failures become ExecutionError."""
        try:
            return self._retrying(fn, _transient)
        except genai_errors.APIError as exc:
            kind = JobNotFoundError if exc.code == 404 else ExecutionError
            raise kind(f"{what} failed: {_describe(exc)}") from exc
        except _TRANSPORT_ERRORS as exc:
            raise ExecutionError(f"{what} failed: {_describe(exc)}") from exc

    def _raw_job(self, client: genai.Client, full_name: str) -> dict:
        return self._call(lambda: _raw(client, "get", full_name), f"reading batch job {full_name}")

    # -- mapping -----------------------------------------------------------------------------------
    def _status_from_sdk(self, job: types.BatchJob, requested: Relation | None = None) -> JobStatus:
        stats = job.completion_stats
        return _status(
            name=job.name or "",
            state=job.state,
            model=job.model,
            # proto3 JSON omits zero counts, which the SDK leaves as None
            counts=(stats.successful_count or 0, stats.failed_count or 0, stats.incomplete_count or 0)
            if stats
            else None,
            error=(job.error.message or f"error code {job.error.code}") if job.error else None,
            output_table=job.output_info.bigquery_output_table if job.output_info else None,
            dest=requested.bq_uri if requested else (job.dest.bigquery_uri if job.dest else None),
            labels=self._labels.get(job.name or "", {}),
            create_time=_iso(job.create_time),
            update_time=_iso(job.update_time),
        )

    def _status_from_rest(self, raw: dict) -> JobStatus:
        status = status_from_rest(raw)
        self._labels[status.name] = dict(status.labels)
        return status


def status_from_rest(raw: dict) -> JobStatus:
    """A JobStatus from a REST `BatchPredictionJob` (camelCase, int64 counts as strings)."""
    stats = raw.get("completionStats")
    error = raw.get("error")
    return _status(
        name=raw.get("name", ""),
        state=raw.get("state"),
        model=raw.get("model"),
        # proto3 JSON omits zero counts: a present stats object with a missing count means 0
        counts=tuple(int(stats.get(k, 0)) for k in ("successfulCount", "failedCount", "incompleteCount"))
        if isinstance(stats, dict)
        else None,
        error=(error.get("message") or f"error code {error.get('code')}") if isinstance(error, dict) else None,
        output_table=(raw.get("outputInfo") or {}).get("bigqueryOutputTable"),
        dest=((raw.get("outputConfig") or {}).get("bigqueryDestination") or {}).get("outputUri"),
        labels=raw.get("labels") or {},
        create_time=raw.get("createTime"),
        update_time=raw.get("updateTime"),
    )


def output_relation(output_table: str | None, dest: str | None) -> Relation | None:
    """Where the output landed: `outputInfo.bigqueryOutputTable` (`bq://p.d.t` or a bare table name,
    contract §2.1) resolved against the requested `dest` URI; the requested table when absent."""
    base = _parse_bq(dest) if dest else None
    if output_table:
        parsed = _parse_bq(output_table)
        if parsed is not None and parsed.schema:
            return parsed
        if base is not None and base.schema:  # a bare name lives in the requested dataset
            return Relation(base.database, base.schema, output_table.removeprefix("bq://"))
    return base if base is not None and base.identifier else None


def _status(*, name, state, model, counts, error, output_table, dest, labels, create_time, update_time) -> JobStatus:
    successful, failed, incomplete = counts if counts is not None else (0, 0, None)
    return JobStatus(
        name=name,
        state=JobState.parse(state),
        model=model or "",
        output=output_relation(output_table, dest),
        successful=max(int(successful or 0), 0),  # -1 means unknown
        failed=max(int(failed or 0), 0),
        incomplete=None if incomplete is None or int(incomplete) < 0 else int(incomplete),
        error=error,
        labels=dict(labels),
        create_time=create_time,
        update_time=update_time,
    )


def _parse_bq(uri: str) -> Relation | None:
    """`bq://p.d.t` / `p.d.t` → Relation(p, d, t); `bq://p.d` → Relation(p, d, ""); a bare name → None."""
    parts = uri.removeprefix("bq://").split(".")
    if len(parts) == 3:
        return Relation(*parts)
    if len(parts) == 2 and uri.startswith("bq://"):
        return Relation(parts[0], parts[1], "")
    return None


def _raw(client: genai.Client, method: str, path: str) -> dict:
    """A REST call through the client's own transport (auth, base URL, API version); JSON body as dict."""
    response = client._api_client.request(method, path, {})  # private, but the SDK's own code path
    return json.loads(response.body) if response.body else {}


def _default_credentials() -> Any:
    """Application default credentials, looked up now: without them the first API call would fail deep
    inside the SDK with a long traceback, after the upstream models already ran."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, _ = google.auth.default(scopes=list(_SCOPES))
    except DefaultCredentialsError as exc:
        raise ConfigError(
            f"the vertex backend found no Google credentials ({str(exc).splitlines()[0]}); run "
            "`gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service "
            "account key file, or give the target's `batch:` an `access_token`") from None
    return credentials


def _iso(value: _dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    return value.astimezone(_dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, genai_errors.APIError):
        return exc.code in _TRANSIENT_CODES or (exc.code or 0) >= 500
    return isinstance(exc, _TRANSPORT_ERRORS)


def _ambiguous(exc: BaseException) -> bool:
    """True when a failed create may nevertheless have created the job."""
    return _transient(exc) and not (isinstance(exc, genai_errors.APIError) and exc.code == 429)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, genai_errors.APIError):
        return f"{exc.code} {exc.status}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _check_labels(labels: dict[str, str]) -> None:
    for k, v in labels.items():
        if not _LABEL_KEY.match(k) or not _LABEL_VALUE.match(str(v)):
            raise ConfigError(
                f"invalid Vertex label {k}={v!r}: keys and values take lowercase letters, digits, `_` and `-`"
                " (at most 63 characters; keys start with a letter)"
            )
