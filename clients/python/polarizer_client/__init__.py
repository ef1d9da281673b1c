"""Polarizer's API from Python: trigger runs, read them, watch them live, tail events.

    from polarizer_client import Client
    c = Client("https://ops:7702", token_file="/etc/polarizer/operator-token",
               ca_file="/etc/polarizer/ca.pem")
    run = c.trigger(repo="https://git.example/tests.git", changed=["src/register.py"], kind="commit")
    for result in c.watch(run.id):
        print(result.test, result.status)

Everything the coordinator answers is JSON with the fields of the CLI's ``--json``; the typed objects
below keep the whole answer in ``.raw``. Errors raise :class:`PolarizerError` with the coordinator's
sentence and the HTTP status (or the WebSocket close code).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

__all__ = [
    "Client",
    "Event",
    "PolarizerError",
    "Run",
    "RunSummary",
    "TestResult",
    "Triggered",
]


class PolarizerError(Exception):
    """The coordinator refused or failed a request: its sentence, and the HTTP status or close code."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message if status is None else f"{status}: {message}")
        self.message = message
        self.status = status


@dataclass(frozen=True)
class TestResult:
    """One test of a run: ``runs show --json``'s ``tests[]``."""

    test: str
    name: str
    status: str
    agent: str
    attempt: int
    duration_ms: Optional[int]
    message: str
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> "TestResult":
        return cls(
            test=raw.get("test", ""),
            name=raw.get("name", ""),
            status=raw.get("status", ""),
            agent=raw.get("agent", ""),
            attempt=raw.get("attempt", 0),
            duration_ms=raw.get("duration_ms"),
            message=raw.get("message", ""),
            raw=dict(raw),
        )


@dataclass(frozen=True)
class RunSummary:
    """A run as ``runs --json`` lists it."""

    id: int
    state: str
    kind: str
    repo: str
    ref: str
    commit: str
    tests: int
    done: int
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> "RunSummary":
        return cls(
            id=raw["id"],
            state=raw.get("state", ""),
            kind=raw.get("kind", ""),
            repo=raw.get("repo", ""),
            ref=raw.get("ref", ""),
            commit=raw.get("commit", ""),
            tests=raw.get("tests", 0),
            done=raw.get("done", 0),
            raw=dict(raw),
        )

    @property
    def finished(self) -> bool:
        return self.state not in ("queued", "running")


@dataclass(frozen=True)
class Run(RunSummary):
    """A run as ``runs show --json`` has it: with every test."""

    results: List[TestResult] = field(default_factory=list, compare=False)

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> "Run":
        summary = RunSummary.of(raw)
        return cls(
            id=summary.id,
            state=summary.state,
            kind=summary.kind,
            repo=summary.repo,
            ref=summary.ref,
            commit=summary.commit,
            tests=summary.tests,
            done=summary.done,
            raw=dict(raw),
            results=[TestResult.of(test) for test in raw.get("tests", [])],
        )


@dataclass(frozen=True)
class Triggered:
    """What ``trigger --json`` says: the run made (``.id``), how many tests, why."""

    id: int
    tests: int
    commit: str
    features: List[str]
    warnings: List[str]
    raw: Dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Event:
    """One event as ``tail --json`` prints it."""

    id: int
    agent: str
    kind: str
    summary: str
    data: Any
    run: Optional[int]
    test: Optional[str]
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> "Event":
        return cls(
            id=raw["id"],
            agent=raw.get("agent", ""),
            kind=raw.get("kind", ""),
            summary=raw.get("summary", ""),
            data=raw.get("data"),
            run=raw.get("run"),
            test=raw.get("test"),
            raw=dict(raw),
        )


def _listed(values: Union[str, Iterable[str], None]) -> List[str]:
    if values is None:
        return []
    if isinstance(values, str):
        return [values]
    return list(values)


class Client:
    """A coordinator's API at ``url`` (``http://127.0.0.1:7702``, or ``https://…`` behind a proxy).

    The operator token comes from ``token`` or ``token_file`` (the coordinator's ``operator-token``);
    ``ca_file`` is the CA that signed the HTTPS certificate, when it is not a public one.
    """

    def __init__(
        self,
        url: str,
        *,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
        ca_file: Optional[str] = None,
        timeout: float = 30.0,
    ) -> None:
        if token is None:
            if token_file is None:
                raise ValueError("give token or token_file (the coordinator's operator-token)")
            with open(token_file, encoding="utf-8") as file:
                token = file.read().strip()
        if not token:
            raise ValueError("the operator token is empty")
        self._url = url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._ssl: Optional[ssl.SSLContext] = None
        if self._url.startswith("https://"):
            self._ssl = ssl.create_default_context(cafile=ca_file)

    # Requests and answers.

    def _request(self, method: str, path: str, body: Optional[Mapping[str, Any]] = None) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self._url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout, context=self._ssl) as answer:
                return answer.read()
        except urllib.error.HTTPError as failed:
            text = failed.read().decode("utf-8", "replace")
            try:
                message = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                message = text or failed.reason
            raise PolarizerError(str(message), failed.code) from None

    def _json(self, method: str, path: str, body: Optional[Mapping[str, Any]] = None) -> Any:
        return json.loads(self._request(method, path, body))

    @staticmethod
    def _query(**params: Any) -> str:
        pairs = {
            key.replace("_", "-"): (",".join(value) if isinstance(value, list) else value)
            for key, value in params.items()
            if value not in (None, [], False)
        }
        pairs = {key: ("true" if value is True else value) for key, value in pairs.items()}
        return "?" + urllib.parse.urlencode(pairs) if pairs else ""

    # Reads.

    def agents(self) -> List[Dict[str, Any]]:
        """The inventory, as ``agents --json``."""
        return self._json("GET", "/api/agents")

    def tests(self, **filters: Union[str, bool]) -> List[Dict[str, Any]]:
        """The catalog filtered as ``tests list`` (``feature=``, ``tag=``, ``type=``, …)."""
        return self._json("GET", "/api/tests" + self._query(**filters))

    def runs(self, limit: int = 20) -> List[RunSummary]:
        """The newest runs."""
        return [RunSummary.of(raw) for raw in self._json("GET", f"/api/runs?limit={int(limit)}")]

    def run(self, run_id: int) -> Run:
        """A run with every test."""
        return Run.of(self._json("GET", f"/api/runs/{int(run_id)}"))

    def report(self, run_id: int, format: str = "json") -> Union[Dict[str, Any], str]:
        """A run's report: ``json`` (a dict, as ``runs show --json``) or ``junit`` (XML text)."""
        answer = self._request("GET", f"/api/runs/{int(run_id)}/report?format={urllib.parse.quote(format)}")
        if format == "json":
            return json.loads(answer)
        return answer.decode("utf-8")

    # Changes.

    def trigger(
        self,
        repo: str,
        *,
        ref: str = "HEAD",
        kind: str = "manual",
        changed: Sequence[str] = (),
        feature: Union[str, Sequence[str]] = (),
        type: Union[str, Sequence[str]] = (),
        artifact: Union[str, Sequence[str]] = (),
        all: bool = False,
        context: Union[Mapping[str, str], Sequence[str], None] = None,
        plan: Optional[str] = None,
    ) -> Triggered:
        """Starts a run as ``polarizer trigger`` does, with the same arguments."""
        if isinstance(context, Mapping):
            context_items = [f"{key}={value}" for key, value in context.items()]
        else:
            context_items = _listed(context)
        body: Dict[str, Any] = {
            "repo": repo,
            "ref": ref,
            "kind": kind,
            "changed": _listed(changed),
            "feature": _listed(feature),
            "type": _listed(type),
            "artifact": _listed(artifact),
            "all": all,
            "context": context_items,
        }
        if plan:
            body["plan"] = plan
        raw = self._json("POST", "/api/runs", body)
        return Triggered(
            id=raw["run"],
            tests=raw.get("tests", 0),
            commit=raw.get("commit", ""),
            features=raw.get("features", []),
            warnings=raw.get("warnings", []),
            raw=raw,
        )

    def cancel(self, run_id: int) -> str:
        """Cancels a run; its state afterwards (``cancelled``, or how it had already ended)."""
        return self._json("POST", f"/api/runs/{int(run_id)}/cancel", {})["state"]

    # Live.

    def _socket(self, path: str) -> Iterator[Any]:
        url = "ws" + self._url[len("http"):] + path
        try:
            with connect(
                url,
                additional_headers={"Authorization": f"Bearer {self._token}"},
                ssl=self._ssl,
                open_timeout=self._timeout,
                max_size=None,
            ) as socket:
                try:
                    for message in socket:
                        yield json.loads(message)
                except ConnectionClosed:
                    pass
                close = socket.close_code
                if close not in (None, 1000):
                    raise PolarizerError(socket.close_reason or "closed", close)
        except InvalidStatus as refused:
            response = refused.response
            try:
                message = json.loads(response.body or b"{}")["error"]
            except (ValueError, KeyError, TypeError):
                message = str(refused)
            raise PolarizerError(str(message), response.status_code) from None

    def watch(self, run_id: int) -> Iterator[TestResult]:
        """Each test's result as it lands, until the run ends (``runs watch``): every final result once
        (a test retried on another agent gives one per attempt), those of a run already finished too."""
        seen = set()

        def final(raw: Mapping[str, Any]) -> Iterator[TestResult]:
            result = TestResult.of(raw)
            if result.status not in ("queued", "running") and (result.test, result.attempt) not in seen:
                seen.add((result.test, result.attempt))
                yield result

        for message in self._socket(f"/api/runs/{int(run_id)}/watch"):
            kind = message.get("type")
            if kind == "test_finished":
                yield from final(message["test"])
            elif kind == "run":
                for raw in message["run"].get("tests", []):
                    yield from final(raw)
            elif "error" in message:
                raise PolarizerError(message["error"])

    def updates(self, run_id: int, *, output: bool = False) -> Iterator[Dict[str, Any]]:
        """Every message of a run's watch: the run, each update (``type``), the final run."""
        yield from self._socket(f"/api/runs/{int(run_id)}/watch" + self._query(output=output))

    def tail(
        self,
        *,
        kind: Union[str, Sequence[str], None] = None,
        agent: Union[str, Sequence[str], None] = None,
        run: Optional[int] = None,
        test: Optional[str] = None,
        since: Union[str, int, None] = None,
        n: Optional[int] = None,
        grep: Optional[str] = None,
        follow: bool = True,
    ) -> Iterator[Event]:
        """Events as ``polarizer tail`` shows them; ``since`` a duration (``"10m"``) or the id of the last
        event seen, to resume after it. Ends when ``follow`` is false and the stored ones are out."""
        query = self._query(
            kind=_listed(kind),
            agent=_listed(agent),
            run=run,
            test=test,
            since=None if since is None else str(since),
            n=n,
            grep=grep,
        )
        if not follow:
            query += ("&" if query else "?") + "follow=false"
        for message in self._socket("/api/events" + query):
            if "id" in message:
                yield Event.of(message)
            elif "error" in message:
                raise PolarizerError(message["error"])
            elif message.get("end"):
                return
