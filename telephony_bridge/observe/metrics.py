"""The bridge's Prometheus metrics: calls live and ended, audio frames, barge-ins, faults and latencies.

Served at `GET /metrics` in the text format (docs/operations.md lists every metric). The figures
that change with every frame cost the hot path nothing extra, or almost nothing:

* Frames, malformed messages, barge-ins, reconnects and Realtime errors are already counted by each
  call (`CallCounters`). They are not counted twice: a scrape adds the live calls' summaries to the
  totals of the calls that have ended, which are folded in once, when each call ends. A scrape
  costs one pass over the live calls; a frame costs nothing.
* The bridge's added latency is observed once per audio frame into a plain bucket array: a bisect
  and two additions, about 0.1 µs (prometheus_client's `Histogram.observe` takes a lock: 0.6 µs).
  At 500 calls that is 50 000 observations a second, 0.5 % of a core instead of 3 %.

Each app has its own registry, so several bridges in one process (the tests) keep their own figures.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from telephony_bridge.call.summary import CallCounters, CallSummary

if TYPE_CHECKING:
    from telephony_bridge.call.switchboard import Switchboard
    from telephony_bridge.outbound.placing import OutboundOutcome

Refusal = Literal["busy", "drained", "database"]
"""A call the webhook turned away: at `max_calls` (busy), or while the bridge shuts down (drained)."""


WebhookRefusal = Literal["replayed"]
"""A webhook refused without a call: a CallSid this bridge has answered already (a replayed request)."""

ADDED_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
RESPONSE_LATENCY_BUCKETS_S = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
TRUNCATE_POINT_BUCKETS_S = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
TOOL_LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
TOKEN_KINDS = ("audio_in", "text_in", "cached_in", "cached_audio_in", "audio_out", "text_out")


class Buckets:
    """A histogram as counts per bucket and their sum; bounds are inclusive upper limits, as Prometheus' `le`."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def with_values(self, values: Iterable[float]) -> Buckets:
        """A copy with `values` observed too: the ended calls' figures plus the live calls'."""
        merged = Buckets(self.bounds)
        merged.counts = list(self.counts)
        merged.total = self.total
        for value in values:
            merged.observe(value)
        return merged

    def cumulative(self) -> list[tuple[str, float]]:
        """The `le` buckets of the text format: each counts every value at or below its bound."""
        bounds = [*(floatToGoString(bound) for bound in self.bounds), "+Inf"]
        running = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(bounds, self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets


@dataclass
class _Totals:
    """The counters and error codes of many calls, summed."""

    counters: CallCounters = field(default_factory=CallCounters)
    realtime_errors: Tally[str] = field(default_factory=Tally)
    tool_calls: Tally[tuple[str, str]] = field(default_factory=Tally)
    """(tool name, outcome): names come from the configuration, outcomes from a fixed list, so the series are bounded."""
    tokens: Tally[tuple[str, str, str]] = field(default_factory=Tally)
    """(number, model, kind) -> tokens, kind one of `TOKEN_KINDS`."""
    line_seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    cost: dict[tuple[str, str], float] = field(default_factory=dict)
    """(number, model) -> estimated cost, of calls whose model has `[prices]`."""

    def add(self, summary: CallSummary) -> None:
        self.counters += summary.counters
        self.realtime_errors.update(summary.realtime_errors)
        self.tool_calls.update((record.name, record.outcome) for record in summary.tool_calls)
        key = (summary.called_number, summary.model)
        self.tokens.update({(*key, kind): getattr(summary.usage, kind) for kind in TOKEN_KINDS})
        self.line_seconds[key] = self.line_seconds.get(key, 0.0) + summary.duration_s
        if summary.cost is not None:
            self.cost[key] = self.cost.get(key, 0.0) + summary.cost

    def plus(self, live: Iterable[CallSummary]) -> _Totals:
        summed = _Totals(self.counters, Tally(self.realtime_errors), Tally(self.tool_calls), Tally(self.tokens),
                         dict(self.line_seconds), dict(self.cost))
        for summary in live:
            summed.add(summary)
        return summed


class BridgeMetrics:
    """One bridge's figures, in its own registry; `render()` is the body of `GET /metrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._calls = Counter(
            "telephony_bridge_calls",
            "Calls by the number called and how they ended; busy and drained calls were refused at the webhook.",
            ["number", "outcome"],
            registry=self.registry,
        )
        self._transfers = Counter(
            "telephony_bridge_transfers",
            "Transfers Twilio was asked to dial, by configured target name and whether the person answered.",
            ["target", "connected"],
            registry=self.registry,
        )
        self._call_log_failures = Counter(
            "telephony_bridge_call_log_failures",
            "Calls the call log could not store: the database failed (locked, disk full) or its queue was full.",
            ["reason"],
            registry=self.registry,
        )
        self._rejected_before_start = Counter(
            "telephony_bridge_rejected_before_start",
            "Messages a media socket sent before its start that were malformed or over the rate cap.",
            registry=self.registry,
        )
        self._webhooks_refused = Counter(
            "telephony_bridge_webhooks_refused",
            "Voice webhooks answered with a hang-up and no session: replayed, for a call answered already.",
            ["reason"],
            registry=self.registry,
        )
        self._config_reloads = Counter(
            "telephony_bridge_config_reloads",
            "Configuration reloads (SIGHUP or POST /admin/reload): ok, or refused for a file with problems.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("ok", "refused"):
            self._config_reloads.labels(outcome)
        self._stream_errors = Counter(
            "telephony_bridge_stream_errors",
            "Errors Twilio reported for media streams (its statusCallback), by Twilio error code; unknown codes as other.",
            ["code"],
            registry=self.registry,
        )
        self._calls_by_direction = Counter(
            "telephony_bridge_calls_by_direction",
            "Calls that reached the bridge by direction (inbound, outbound) and how they ended.",
            ["direction", "outcome"],
            registry=self.registry,
        )
        self._outbound = Counter(
            "telephony_bridge_outbound_calls",
            "Calls the bridge placed, by final outcome (human, voicemail, no-answer, busy, failed, fax, do-not-call, "
            "opted-out).",
            ["outcome"],
            registry=self.registry,
        )
        self._config_digest = ""
        self._ended = _Totals()
        self._response_latency = Buckets(RESPONSE_LATENCY_BUCKETS_S)
        self._truncate_points = Buckets(TRUNCATE_POINT_BUCKETS_S)
        self._tool_latency = Buckets(TOOL_LATENCY_BUCKETS_S)
        self._added_latency = {
            "caller>model": Buckets(ADDED_LATENCY_BUCKETS_S),
            "model>caller": Buckets(ADDED_LATENCY_BUCKETS_S),
        }
        self._switchboard: Switchboard | None = None
        self.registry.register(self)

    def watch(self, switchboard: Switchboard) -> None:
        """Take the live calls from `switchboard` at each scrape."""
        self._switchboard = switchboard

    def latency_observer(self, direction: Literal["caller>model", "model>caller"]) -> Callable[[float], None]:
        """The switchboard's `on_latency` hook: what each call's leg in `direction` tells of every audio frame.

        The histogram's own `observe`, with nothing in between: it runs 75 times a call-second.
        """
        return self._added_latency[direction].observe

    def call_ended(self, summary: CallSummary) -> None:
        """Fold an ended call's figures into the totals (part of the switchboard's `on_call_end` hook)."""
        self._calls.labels(summary.called_number, summary.outcome or "unknown").inc()
        self._calls_by_direction.labels(summary.direction, summary.outcome or "unknown").inc()
        for transfer in summary.transfers:
            self._transfers.labels(transfer.target_name, str(transfer.connected).lower()).inc()
        self._ended.add(summary)
        for seconds in _response_latencies_s(summary):
            self._response_latency.observe(seconds)
        for seconds in _truncate_points_s(summary):
            self._truncate_points.observe(seconds)
        for seconds in _tool_latencies_s(summary):
            self._tool_latency.observe(seconds)

    def outbound_outcome(self, outcome: OutboundOutcome) -> None:
        """An outcome listener of the server's `OutboundCalls`."""
        self._outbound.labels(outcome.outcome).inc()

    def call_refused(self, called_number: str, refusal: Refusal) -> None:
        self._calls.labels(called_number, refusal).inc()

    def rejected_before_start(self, count: int) -> None:
        if count:
            self._rejected_before_start.inc(count)

    def webhook_refused(self, reason: WebhookRefusal) -> None:
        self._webhooks_refused.labels(reason).inc()

    def call_log_failed(self, reason: Literal["database", "queue_full"]) -> None:
        """Counted from the call log's writer thread; prometheus_client's counters are thread-safe."""
        self._call_log_failures.labels(reason).inc()

    def stream_error(self, code: str) -> None:
        """A stream error Twilio reported; `code` is one of `STREAM_ERROR_CODES` or `other` (see `stream_errors.py`)."""
        self._stream_errors.labels(code).inc()

    def config_loaded(self, digest: str) -> None:
        """The configuration now in force for new calls (at start, and after each reload that took)."""
        self._config_digest = digest

    def config_reloaded(self, outcome: Literal["ok", "refused"], digest: str) -> None:
        """A reload's outcome, and the hash in force after it (the old one, when the file was refused)."""
        self._config_reloads.labels(outcome).inc()
        self._config_digest = digest

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        """The figures read at scrape time: the ended calls' totals plus what the live calls have counted so far."""
        live = self._switchboard.calls_in_progress() if self._switchboard is not None else []
        live_summaries = [call.summary() for call in live]
        totals = self._ended.plus(live_summaries)
        counters = totals.counters
        yield GaugeMetricFamily("telephony_bridge_calls_live", "Calls in progress.", value=len(live))
        info = GaugeMetricFamily("telephony_bridge_config_info", "The configuration new calls get: sha256 of its file.",
                                 labels=["hash"])
        info.add_metric([self._config_digest], 1)
        yield info
        yield _counter("telephony_bridge_media_frames", "Media messages: in from callers, out to callers.", "direction",
                       {"in": counters.frames_in, "out": counters.frames_out})
        yield _counter("telephony_bridge_malformed_messages", "Messages that could not be understood, by sender.", "source",
                       {"twilio": counters.malformed_twilio, "realtime": counters.malformed_realtime})
        yield CounterMetricFamily("telephony_bridge_barge_ins", "Times a caller spoke over the model and its answer was cut.",
                                  value=counters.barge_ins)
        yield CounterMetricFamily("telephony_bridge_realtime_reconnects", "Realtime sessions replaced after one was lost.",
                                  value=counters.reconnects)
        yield CounterMetricFamily("telephony_bridge_realtime_sessions_opened",
                                  "Realtime sessions opened: one per call, plus reconnects and renewals.",
                                  value=counters.sessions_opened)
        yield CounterMetricFamily("telephony_bridge_audio_frames_dropped",
                                  "Audio frames dropped because a socket (Twilio's or the service's) did not keep up.",
                                  value=counters.frames_dropped)
        yield _counter("telephony_bridge_realtime_errors", "Error events from the Realtime service, by error code.", "code",
                       dict(totals.realtime_errors))
        tools = CounterMetricFamily("telephony_bridge_tool_calls", "Operator tool calls, by tool and outcome.",
                                    labels=["tool", "outcome"])
        for (name, outcome), count in sorted(totals.tool_calls.items()):
            tools.add_metric([name, outcome], count)
        yield tools
        tokens = CounterMetricFamily("telephony_bridge_tokens", "Realtime tokens the calls used (response.done usage), "
                                     "by number called, model and kind; cached_in is part of the input.",
                                     labels=["number", "model", "kind"])
        for labels, count in sorted(totals.tokens.items()):
            tokens.add_metric(list(labels), count)
        yield tokens
        line = CounterMetricFamily("telephony_bridge_line_seconds", "Time calls spent on the line, by number and model.",
                                   labels=["number", "model"])
        for (number, model), seconds in sorted(totals.line_seconds.items()):
            line.add_metric([number, model], seconds)
        yield line
        cost = CounterMetricFamily("telephony_bridge_estimated_cost", "Calls' cost estimated from the operator's [prices], "
                                   "by number and model (models without prices are left out).", labels=["number", "model"])
        for (number, model), amount in sorted(totals.cost.items()):
            cost.add_metric([number, model], amount)
        yield cost
        yield _histogram(
            "telephony_bridge_tool_latency_seconds",
            "From a tool request's start to its answer (or its failure).",
            self._tool_latency.with_values(s for summary in live_summaries for s in _tool_latencies_s(summary)),
        )
        yield _histogram(
            "telephony_bridge_truncate_point_seconds",
            "How far into an answer the caller was when they interrupted it (the truncate's audio_end_ms).",
            self._truncate_points.with_values(s for summary in live_summaries for s in _truncate_points_s(summary)),
        )
        yield _histogram(
            "telephony_bridge_response_latency_seconds",
            "From the caller stopping speaking to the model's first audio of its answer.",
            self._response_latency.with_values(s for summary in live_summaries for s in _response_latencies_s(summary)),
        )
        added = HistogramMetricFamily(
            "telephony_bridge_added_latency_seconds",
            "Time each audio frame spends in the bridge, from its arrival to its audio leaving.",
            labels=["direction"],
        )
        for direction, buckets in self._added_latency.items():
            added.add_metric([direction], buckets.cumulative(), buckets.total)
        yield added


def _response_latencies_s(summary: CallSummary) -> Iterator[float]:
    return (ms / 1000.0 for ms in summary.response_latencies_ms)


def _tool_latencies_s(summary: CallSummary) -> Iterator[float]:
    return (record.latency_ms / 1000.0 for record in summary.tool_calls)


def _truncate_points_s(summary: CallSummary) -> Iterator[float]:
    return (audio_end_ms / 1000.0 for _, audio_end_ms in summary.truncates)


def _counter(name: str, documentation: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value_label, value in values.items():
        family.add_metric([value_label], value)
    return family


def _histogram(name: str, documentation: str, buckets: Buckets) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=buckets.cumulative(), sum_value=buckets.total)
