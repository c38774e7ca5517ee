//! Configuration and its validation.
//!
//! Every limit and every deadline of the behaviour contract is a field here. A
//! configuration is checked once, when the machine is built: a zero capacity or a
//! zero timeout is a [`ConfigError`], never a panic and never a machine that can
//! make no progress.
//!
//! The defaults follow the Go original where its blog posts state a value
//! (`MAX_CONCURRENT_REQUESTS = 10`, `MAX_CONCURRENT_LLM_STREAMS = 5`); where they do
//! not, the default is a conservative value for an LLM backend and the field's
//! doc says so. The Go original had no per-phase deadlines at all: one janitor
//! swept every two minutes and reaped records idle for "30-60 seconds".

use core::time::Duration;

use serde::{Deserialize, Serialize};

/// Limits and deadlines of a [`Machine`](crate::Machine).
///
/// Build one with struct update syntax, `Config { max_concurrent_streams: 2,
/// ..Config::default() }`; the machine validates it ([`Config::validate`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Config {
    /// Flights that may wait in the admission queue. A submit that would create a
    /// flight beyond this is rejected with `QueueFull` ([rule 3](crate::contract#rule-3)).
    /// Default 1024.
    pub queue_capacity: usize,
    /// Preparations that may run at once (Go: `MAX_CONCURRENT_REQUESTS`, 10).
    /// [Rule 4](crate::contract#rule-4).
    pub max_concurrent_requests: usize,
    /// Upstream streams that may run at once (Go: `MAX_CONCURRENT_LLM_STREAMS`, 5).
    /// [Rule 4](crate::contract#rule-4).
    pub max_concurrent_streams: usize,
    /// Bytes one response may reach; a flight whose upstream goes beyond it fails
    /// with `ResponseTooLarge` ([rule 22](crate::contract#rule-22)). Default 16 MiB.
    pub max_response_bytes: u64,
    /// Completed results kept in the cache; the oldest entry is evicted first.
    /// Zero disables the cache. Default 1024.
    pub cache_capacity: usize,
    /// How long a cached result may be served. Default 10 minutes.
    pub cache_ttl: Duration,
    /// Longest time a flight may wait in the admission queue. Default 60 s.
    pub queue_timeout: Duration,
    /// Longest time a preparation may run. Default 30 s.
    pub preparation_timeout: Duration,
    /// Longest time a prepared flight may wait for a stream slot. Default 60 s.
    pub stream_slot_timeout: Duration,
    /// Longest total time of one upstream stream. Default 5 minutes.
    pub stream_timeout: Duration,
    /// Longest silence between two chunks (and before the first). Default 30 s.
    pub idle_timeout: Duration,
    /// Longest time a live request may go without a client attaching
    /// (Go: `CLIENT_PICKUP_TIMEOUT`). Default 30 s.
    pub attach_timeout: Duration,
    /// How long a cancelled request's record is kept for a client to attach and
    /// read the cancellation ([rule 13](crate::contract#rule-13)). Default 30 s.
    pub cancelled_retention: Duration,
    /// How long a finished request's record (completed, failed, timed out, or
    /// served from the cache) is kept for a client to attach. Default 60 s.
    pub finished_retention: Duration,
    /// Cluster mode ([`crate::cluster`]): a submit that creates a flight first
    /// claims its key ([`Action::Claim`](crate::Action::Claim)) and the flight
    /// owns, follows, or is served from the cluster's cache (rules
    /// [25](crate::contract#rule-25)-[29](crate::contract#rule-29)). Default
    /// `false`: a single machine, and nothing of cluster mode happens at all.
    /// The driver's `Manager::with_coordinator` sets it.
    #[serde(default)]
    pub cluster: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            queue_capacity: 1024,
            max_concurrent_requests: 10,
            max_concurrent_streams: 5,
            max_response_bytes: 16 * 1024 * 1024,
            cache_capacity: 1024,
            cache_ttl: Duration::from_secs(600),
            queue_timeout: Duration::from_secs(60),
            preparation_timeout: Duration::from_secs(30),
            stream_slot_timeout: Duration::from_secs(60),
            stream_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(30),
            attach_timeout: Duration::from_secs(30),
            cancelled_retention: Duration::from_secs(30),
            finished_retention: Duration::from_secs(60),
            cluster: false,
        }
    }
}

/// Why a [`Config`] was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A limit that must be at least one is zero.
    #[error("config field `{field}` must be at least 1")]
    ZeroLimit {
        /// The offending field.
        field: &'static str,
    },
    /// A deadline that must be positive is zero.
    #[error("config field `{field}` must be a positive duration")]
    ZeroTimeout {
        /// The offending field.
        field: &'static str,
    },
}

impl Config {
    /// How long an ended record is kept for a client that has not read its end:
    /// `cancelled_retention` for a cancelled one, `finished_retention` otherwise.
    pub(crate) fn retention(&self, outcome: &crate::Outcome) -> Duration {
        if *outcome == crate::Outcome::Cancelled {
            self.cancelled_retention
        } else {
            self.finished_retention
        }
    }

    /// Checks every field; the first problem found is returned.
    ///
    /// # Errors
    /// [`ConfigError::ZeroLimit`] for a zero capacity or limit (except
    /// `cache_capacity`, where zero disables the cache), and
    /// [`ConfigError::ZeroTimeout`] for a zero deadline.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let limits = [
            ("queue_capacity", self.queue_capacity as u64),
            (
                "max_concurrent_requests",
                self.max_concurrent_requests as u64,
            ),
            ("max_concurrent_streams", self.max_concurrent_streams as u64),
            ("max_response_bytes", self.max_response_bytes),
        ];
        for (field, value) in limits {
            if value == 0 {
                return Err(ConfigError::ZeroLimit { field });
            }
        }
        let timeouts = [
            ("cache_ttl", self.cache_ttl),
            ("queue_timeout", self.queue_timeout),
            ("preparation_timeout", self.preparation_timeout),
            ("stream_slot_timeout", self.stream_slot_timeout),
            ("stream_timeout", self.stream_timeout),
            ("idle_timeout", self.idle_timeout),
            ("attach_timeout", self.attach_timeout),
            ("cancelled_retention", self.cancelled_retention),
            ("finished_retention", self.finished_retention),
        ];
        for (field, value) in timeouts {
            if value.is_zero() {
                return Err(ConfigError::ZeroTimeout { field });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [Rule 22](crate::contract#rule-22): zero limits in a configuration are errors, not panics.
    #[test]
    fn rule22_zero_limits_and_timeouts_are_errors() {
        assert_eq!(Config::default().validate(), Ok(()));
        let c = Config {
            max_concurrent_streams: 0,
            ..Config::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::ZeroLimit {
                field: "max_concurrent_streams"
            })
        );
        let c = Config {
            idle_timeout: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::ZeroTimeout {
                field: "idle_timeout"
            })
        );
        let c = Config {
            cache_capacity: 0,
            ..Config::default()
        };
        assert_eq!(
            c.validate(),
            Ok(()),
            "a zero cache capacity disables the cache"
        );
    }
}
