//! Prometheus metrics, with the `metrics` crate family.
//!
//! Each gateway has its own recorder ([`PrometheusBuilder::build_recorder`]), not
//! a global one, so that several gateways (tests, embedders) never mix their
//! numbers and no listener is started: `GET /metrics` renders the handle. Metric
//! handles are registered once, through [`metrics::with_local_recorder`].
//!
//! Gauges and totals come from the manager's [`Stats`] at scrape time (the core
//! keeps them; the gateway decides nothing and counts nothing twice). What only
//! the gateway sees is recorded as it happens: time to first chunk and stream
//! duration per client stream, and upstream streams opened, failed, and aborted
//! (dropped before their end: the last member left, or a deadline expired).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_lite::Stream;
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use super::ChunkStream;
use crate::{Item, RequestId, ResultStream, Stats};

/// Buckets of the time histograms, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The APIs whose client streams are observed.
const APIS: [&str; 2] = ["seeds", "openai"];

/// The gateway's metrics. Clones share one registry.
#[derive(Clone)]
pub struct GatewayMetrics {
    inner: Arc<Registry>,
}

impl core::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GatewayMetrics").finish_non_exhaustive()
    }
}

/// A gauge set from one field of the manager's stats.
type StatsGauge = (fn(&Stats) -> usize, Gauge);
/// A counter set from one of the manager's totals.
type StatsCounter = (fn(&Stats) -> u64, Counter);

struct Registry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    gauges: Vec<StatsGauge>,
    totals: Vec<StatsCounter>,
}

fn register<T>(recorder: &PrometheusRecorder, f: impl FnOnce() -> T) -> T {
    metrics::with_local_recorder(recorder, f)
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    /// A fresh registry with every series described.
    #[must_use]
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        let (gauges, totals) = register(&recorder, || {
            metrics::describe_gauge!(
                "flightdeck_queue_length",
                "Flights waiting in the admission queue"
            );
            metrics::describe_gauge!(
                "flightdeck_preparations",
                "Preparations running (preparation slots in use)"
            );
            metrics::describe_gauge!(
                "flightdeck_waiting_for_stream",
                "Prepared flights waiting for a stream slot"
            );
            metrics::describe_gauge!(
                "flightdeck_streams",
                "Upstream streams running (stream slots in use)"
            );
            metrics::describe_gauge!("flightdeck_readers", "Clients attached to a result stream");
            metrics::describe_gauge!("flightdeck_live_requests", "Requests not ended yet");
            metrics::describe_gauge!("flightdeck_cache_entries", "Results in the cache");
            metrics::describe_counter!("flightdeck_requests_submitted_total", "Requests accepted");
            metrics::describe_counter!(
                "flightdeck_requests_coalesced_total",
                "Requests that joined a live flight"
            );
            metrics::describe_counter!(
                "flightdeck_cache_hits_total",
                "Requests served from the cache"
            );
            metrics::describe_counter!("flightdeck_flights_total", "Flights created");
            metrics::describe_counter!(
                "flightdeck_upstream_streams_started_total",
                "Upstream streams started"
            );
            metrics::describe_counter!(
                "flightdeck_requests_completed_total",
                "Requests that completed"
            );
            metrics::describe_counter!(
                "flightdeck_requests_cancelled_total",
                "Requests cancelled (client disconnects included)"
            );
            metrics::describe_counter!("flightdeck_requests_failed_total", "Requests that failed");
            metrics::describe_counter!(
                "flightdeck_requests_timed_out_total",
                "Requests that timed out"
            );
            metrics::describe_counter!(
                "flightdeck_upstream_opened_total",
                "Upstream streams opened, by job kind"
            );
            metrics::describe_counter!(
                "flightdeck_upstream_failed_total",
                "Upstream streams that ended with an error, by job kind"
            );
            metrics::describe_counter!("flightdeck_upstream_aborted_total", "Upstream streams dropped before their end (nobody waits, or a deadline), by job kind");
            metrics::describe_histogram!(
                "flightdeck_time_to_first_chunk_seconds",
                metrics::Unit::Seconds,
                "From a client's request to its first chunk, by API"
            );
            metrics::describe_histogram!(
                "flightdeck_stream_duration_seconds",
                metrics::Unit::Seconds,
                "From a client's request to its stream's terminal item, by API"
            );
            let gauges: Vec<StatsGauge> = vec![
                (|s| s.queued, metrics::gauge!("flightdeck_queue_length")),
                (|s| s.preparing, metrics::gauge!("flightdeck_preparations")),
                (
                    |s| s.waiting_for_stream,
                    metrics::gauge!("flightdeck_waiting_for_stream"),
                ),
                (|s| s.streaming, metrics::gauge!("flightdeck_streams")),
                (|s| s.readers, metrics::gauge!("flightdeck_readers")),
                (
                    |s| s.live_requests,
                    metrics::gauge!("flightdeck_live_requests"),
                ),
                (
                    |s| s.cache_entries,
                    metrics::gauge!("flightdeck_cache_entries"),
                ),
            ];
            let totals: Vec<StatsCounter> = vec![
                (
                    |s| s.totals.submitted,
                    metrics::counter!("flightdeck_requests_submitted_total"),
                ),
                (
                    |s| s.totals.coalesced,
                    metrics::counter!("flightdeck_requests_coalesced_total"),
                ),
                (
                    |s| s.totals.cache_hits,
                    metrics::counter!("flightdeck_cache_hits_total"),
                ),
                (
                    |s| s.totals.flights,
                    metrics::counter!("flightdeck_flights_total"),
                ),
                (
                    |s| s.totals.streams_started,
                    metrics::counter!("flightdeck_upstream_streams_started_total"),
                ),
                (
                    |s| s.totals.completed,
                    metrics::counter!("flightdeck_requests_completed_total"),
                ),
                (
                    |s| s.totals.cancelled,
                    metrics::counter!("flightdeck_requests_cancelled_total"),
                ),
                (
                    |s| s.totals.failed,
                    metrics::counter!("flightdeck_requests_failed_total"),
                ),
                (
                    |s| s.totals.timed_out,
                    metrics::counter!("flightdeck_requests_timed_out_total"),
                ),
            ];
            for api in APIS {
                // Register the histograms up front, so they are listed before the
                // first observation.
                drop(metrics::histogram!("flightdeck_time_to_first_chunk_seconds", "api" => api));
                drop(metrics::histogram!("flightdeck_stream_duration_seconds", "api" => api));
            }
            (gauges, totals)
        });
        GatewayMetrics {
            inner: Arc::new(Registry {
                recorder,
                handle,
                gauges,
                totals,
            }),
        }
    }

    /// The Prometheus text format of every series, with gauges and totals set from
    /// `stats` first.
    #[must_use]
    pub fn render(&self, stats: &Stats) -> String {
        #[allow(clippy::cast_precision_loss)]
        for (read, gauge) in &self.inner.gauges {
            gauge.set(read(stats) as f64);
        }
        for (read, counter) in &self.inner.totals {
            counter.absolute(read(stats));
        }
        self.inner.handle.run_upkeep();
        self.inner.handle.render()
    }

    fn histogram(&self, name: &'static str, api: &'static str) -> Histogram {
        register(
            &self.inner.recorder,
            || metrics::histogram!(name, "api" => api),
        )
    }

    fn counter(&self, name: &'static str, kind: &'static str) -> Counter {
        register(
            &self.inner.recorder,
            || metrics::counter!(name, "kind" => kind),
        )
    }

    /// Wraps a client's result stream: its first chunk and its terminal item are
    /// timed from `started` under the label `api`.
    pub fn observe(&self, api: &'static str, started: Instant, stream: ResultStream) -> Observed {
        Observed {
            stream,
            started,
            first_chunk: Some(self.histogram("flightdeck_time_to_first_chunk_seconds", api)),
            duration: Some(self.histogram("flightdeck_stream_duration_seconds", api)),
        }
    }

    /// Wraps an upstream stream of job kind `kind`: counts it opened, failed, or
    /// aborted (dropped before its end), and logs those in `span`.
    #[must_use]
    pub fn watch_upstream(
        &self,
        kind: &'static str,
        span: tracing::Span,
        stream: ChunkStream,
    ) -> ChunkStream {
        self.counter("flightdeck_upstream_opened_total", kind)
            .increment(1);
        span.in_scope(|| tracing::debug!("upstream opened"));
        Box::pin(WatchedUpstream {
            stream,
            span,
            chunks: 0,
            ended: false,
            failed: self.counter("flightdeck_upstream_failed_total", kind),
            aborted: self.counter("flightdeck_upstream_aborted_total", kind),
        })
    }
}

/// A client's result stream whose time to first chunk and duration are recorded.
/// It yields exactly the items of the stream it wraps; dropping it drops that
/// stream (a detach).
#[must_use = "dropping it detaches from the request"]
pub struct Observed {
    stream: ResultStream,
    started: Instant,
    first_chunk: Option<Histogram>,
    duration: Option<Histogram>,
}

impl core::fmt::Debug for Observed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Observed")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl Observed {
    /// The request being read.
    #[must_use]
    pub fn id(&self) -> RequestId {
        self.stream.id()
    }

    /// The next item, or `None` after the terminal one.
    pub async fn next_item(&mut self) -> Option<Item> {
        core::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for Observed {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let this = self.get_mut();
        let item = Pin::new(&mut this.stream).poll_next(cx);
        if let Poll::Ready(Some(item)) = &item {
            let elapsed = this.started.elapsed();
            match item {
                Item::Chunk(_) => {
                    if let Some(h) = this.first_chunk.take() {
                        h.record(elapsed);
                    }
                }
                Item::End(_) => {
                    if let Some(h) = this.duration.take() {
                        h.record(elapsed);
                    }
                }
            }
        }
        item
    }
}

/// An upstream stream that counts how it ended.
struct WatchedUpstream {
    stream: ChunkStream,
    span: tracing::Span,
    chunks: u64,
    ended: bool,
    failed: Counter,
    aborted: Counter,
}

impl Stream for WatchedUpstream {
    type Item = Result<crate::Bytes, String>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let polled = this.stream.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => this.chunks += 1,
            Poll::Ready(Some(Err(e))) => {
                this.ended = true;
                this.failed.increment(1);
                let chunks = this.chunks;
                this.span
                    .in_scope(|| tracing::warn!(chunks, error = %e, "upstream failed"));
            }
            Poll::Ready(None) => {
                this.ended = true;
                let chunks = this.chunks;
                this.span
                    .in_scope(|| tracing::info!(chunks, "upstream finished"));
            }
            Poll::Pending => {}
        }
        polled
    }
}

impl Drop for WatchedUpstream {
    fn drop(&mut self) {
        if !self.ended {
            self.aborted.increment(1);
            let chunks = self.chunks;
            self.span
                .in_scope(|| tracing::info!(chunks, "upstream aborted"));
        }
    }
}
