//! The gateway's cluster mode (features `http` and `cluster`): request ids that
//! name their instance, and the **control plane** that carries a cancel or a status
//! to the instance that owns the request.
//!
//! # Why a control plane
//! A request lives in the manager of the instance that admitted it: its record, its
//! reader, its flight's membership. Behind a load balancer the cancel for it may land
//! on another instance. Rather than copying request state into Redis (two sources of
//! truth, and a "cancelled" that the owning core never confirmed), the command goes
//! to the owner, whose core decides, and the owner's own answer comes back. So the
//! confirmation rule holds across instances: "cancelled" is answered only after the
//! owning instance's core confirmed it; when the owner cannot be reached the answer
//! is a clear `503`/`504` naming it, never a guess.
//!
//! # Request ids
//! In cluster mode the ids HTTP clients see are `"<instance>.<number>"` (e.g.
//! `"gw-a.17"`); instance ids are letters, digits, `-` and `_`, so the id splits at
//! its last dot. Without cluster mode (or in the single-instance fallback) ids stay
//! plain numbers, exactly as before.
//!
//! # Wire protocol on Redis
//! With the cluster's key prefix `P` (default `fd:`):
//! - every instance subscribes to the pub/sub channel `Pctl:<instance>` on a
//!   connection of its own (a subscribed connection cannot send commands anyway);
//! - a requester opens a connection of its own for the answer, `PUBLISH`es
//!   `{"op": "cancel"|"status", "id": <number>, "reply": "Preply:<nonce>"}` on the
//!   owner's channel (on its command connection; `PUBLISH` never blocks) and waits
//!   with `BLPOP Preply:<nonce>` for at most the control timeout;
//! - the owner runs the command on its manager and pushes
//!   `{"status": <HTTP status>, "body": <JSON>}` on the reply list with an expiry of
//!   the control timeout (`RPUSH` + `PEXPIRE` in one `MULTI`), so an answer nobody
//!   waits for any more is gone after that.
//!
//! `PUBLISH` answers how many subscribers received the command: 0 means no instance
//! of that id listens (stopped, crashed, or never existed): `503` at once. An owner
//! that received it but does not answer in time: `504`. Because the answer is a list,
//! not a message, it cannot be missed even if it is pushed before `BLPOP` starts.
//!
//! The subscriber reconnects by itself (with a back-off up to 2 s) if its connection
//! drops, for example when Redis restarts; meanwhile commands to this instance get
//! `503`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt;
use redis::aio::ConnectionManager;
use redis::AsyncConnectionConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cluster::{redis, ClusterError};
use crate::RequestId;

/// A request id as an HTTP client gives it, in cluster mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoutedId {
    /// A request of this instance.
    Local(RequestId),
    /// A request of another instance.
    Remote {
        /// The owning instance's id.
        instance: String,
        /// The request's number on that instance.
        number: u64,
    },
}

/// The id a client sees for request `number` of `instance`: `"<instance>.<number>"`.
#[must_use]
pub fn format_id(instance: &str, number: u64) -> String {
    format!("{instance}.{number}")
}

/// Parses a client's request id on instance `me`: `"<instance>.<number>"` (local
/// when the instance is `me`), or a plain number (a local id). `None`: not an id.
#[must_use]
pub fn parse_id(me: &str, text: &str) -> Option<RoutedId> {
    if let Ok(number) = text.parse::<u64>() {
        return Some(RoutedId::Local(RequestId::from_raw(number)));
    }
    let (instance, number) = text.rsplit_once('.')?;
    let number = number.parse::<u64>().ok()?;
    if !super::config::is_valid_instance_id(instance) {
        return None;
    }
    Some(if instance == me {
        RoutedId::Local(RequestId::from_raw(number))
    } else {
        RoutedId::Remote {
            instance: instance.to_owned(),
            number,
        }
    })
}

/// A command of the control plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlOp {
    /// `POST /v1/requests/{id}/cancel` on the owner.
    Cancel,
    /// `GET /v1/requests/{id}` on the owner.
    Status,
}

#[derive(Serialize, Deserialize)]
struct Command {
    op: ControlOp,
    id: u64,
    reply: String,
}

/// The owner's answer: the HTTP status and JSON body its own route gives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlAnswer {
    /// The HTTP status code.
    pub status: u16,
    /// The JSON body.
    pub body: serde_json::Value,
}

/// Why a command to another instance got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No instance of that id listens on its channel: it stopped, crashed, or never
    /// existed.
    #[error("instance `{instance}` is not reachable: nothing listens on its control channel `{channel}` (it stopped, or the id names no instance)")]
    Unreachable {
        /// The owning instance's id.
        instance: String,
        /// Its control channel.
        channel: String,
    },
    /// The instance received the command but did not answer in time.
    #[error("instance `{instance}` did not answer within {timeout:?}")]
    Timeout {
        /// The owning instance's id.
        instance: String,
        /// The control timeout.
        timeout: Duration,
    },
    /// Redis failed (unreachable, connection lost), or answered nonsense.
    #[error("the cluster's Redis failed: {0}")]
    Redis(#[from] ClusterError),
}

impl From<redis::RedisError> for ControlError {
    fn from(error: redis::RedisError) -> Self {
        ControlError::Redis(ClusterError::Redis(error))
    }
}

/// What the control plane calls to answer a command for a local request.
pub type ControlHandler = Arc<dyn Fn(ControlOp, RequestId) -> ControlAnswer + Send + Sync>;

/// The control plane of one instance: its subscriber (answering commands for its
/// requests) and the client side (sending commands to other instances).
pub struct ControlPlane {
    instance: String,
    prefix: String,
    client: redis::Client,
    commands: ConnectionManager,
    timeout: Duration,
    nonce: AtomicU64,
    subscribed: Arc<std::sync::atomic::AtomicBool>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl core::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("instance", &self.instance)
            .field("channel", &self.channel(&self.instance))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Longest wait between two attempts to resubscribe.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl ControlPlane {
    /// Connects to the Redis at `url`, checks that no other instance listens as
    /// `instance`, subscribes to this instance's channel and starts answering
    /// commands with `handler`. Keys and channels start with `prefix`; `timeout`
    /// bounds every Redis command and the wait for another instance's answer.
    ///
    /// # Errors
    /// [`ControlError::Redis`] if Redis is unreachable or fails;
    /// [`ControlError::Unreachable`] is never returned here. An instance id already
    /// listening is [`ClusterError::Config`] (inside [`ControlError::Redis`]).
    pub async fn start(
        url: &str,
        instance: &str,
        prefix: &str,
        timeout: Duration,
        handler: ControlHandler,
    ) -> Result<ControlPlane, ControlError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(1);
        let mut commands = client.get_connection_manager_with_config(config).await?;
        let plane = ControlPlane {
            instance: instance.to_owned(),
            prefix: prefix.to_owned(),
            client,
            commands: commands.clone(),
            timeout,
            nonce: AtomicU64::new(clock_seed()),
            subscribed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            stop: Mutex::new(None),
            task: tokio::sync::Mutex::new(None),
        };
        let channel = plane.channel(instance);
        let (_, listening): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(&mut commands)
            .await?;
        if listening > 0 {
            return Err(ControlError::Redis(ClusterError::Config(format!(
                "instance id `{instance}` is already in use: {listening} instance(s) listen on `{channel}`; give each instance its own --instance-id"
            ))));
        }
        let pubsub = subscribe(&plane.client, &channel, timeout).await?;
        plane.subscribed.store(true, Ordering::SeqCst);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(Subscriber {
            client: plane.client.clone(),
            commands,
            channel,
            timeout,
            handler,
            subscribed: Arc::clone(&plane.subscribed),
            first: Some(pubsub),
            stopped,
        }));
        *plane
            .stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stop);
        *plane.task.lock().await = Some(task);
        Ok(plane)
    }

    /// The control channel of `instance`.
    #[must_use]
    pub fn channel(&self, instance: &str) -> String {
        format!("{}ctl:{instance}", self.prefix)
    }

    /// This instance's id.
    #[must_use]
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether the subscriber listens now (false while it reconnects, and after
    /// [`stop`](Self::stop)).
    #[must_use]
    pub fn is_listening(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
    }

    /// Whether the subscriber task still runs (0 or 1, for task accounting).
    #[must_use]
    pub fn tasks_running(&self) -> u64 {
        match self.task.try_lock() {
            Ok(task) => u64::from(task.as_ref().is_some_and(|t| !t.is_finished())),
            // Someone is stopping it right now: it still counts.
            Err(_) => 1,
        }
    }

    /// Sends `op` for request `number` to `instance` and waits for its answer.
    ///
    /// # Errors
    /// [`ControlError::Unreachable`] if no instance of that id listens,
    /// [`ControlError::Timeout`] if it does not answer in time,
    /// [`ControlError::Redis`] if Redis fails.
    pub async fn call(
        &self,
        instance: &str,
        op: ControlOp,
        number: u64,
    ) -> Result<ControlAnswer, ControlError> {
        let nonce = self.nonce.fetch_add(1, Ordering::Relaxed);
        let reply = format!("{}reply:{}.{nonce:x}", self.prefix, self.instance);
        let channel = self.channel(instance);
        // The answer is read on a connection of its own: a BLPOP would hold up every
        // other command on the shared one. The read may block for the whole timeout,
        // so the connection's own timeout is longer.
        let wait_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout.saturating_add(Duration::from_secs(1))));
        let mut waiter = self
            .client
            .get_multiplexed_async_connection_with_config(&wait_config)
            .await?;
        let command = serde_json::to_string(&Command {
            op,
            id: number,
            reply: reply.clone(),
        })
        .map_err(|e| ClusterError::Protocol(e.to_string()))?;
        let received: u64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(command)
            .query_async(&mut self.commands.clone())
            .await?;
        if received == 0 {
            return Err(ControlError::Unreachable {
                instance: instance.to_owned(),
                channel,
            });
        }
        let answer: Option<(String, Vec<u8>)> = redis::cmd("BLPOP")
            .arg(&reply)
            .arg(self.timeout.as_secs_f64())
            .query_async(&mut waiter)
            .await?;
        let Some((_, answer)) = answer else {
            return Err(ControlError::Timeout {
                instance: instance.to_owned(),
                timeout: self.timeout,
            });
        };
        serde_json::from_slice(&answer).map_err(|e| {
            ControlError::Redis(ClusterError::Protocol(format!(
                "answer of instance `{instance}`: {e}"
            )))
        })
    }

    /// Stops answering (unsubscribes) and waits for the subscriber task to end.
    /// Idempotent.
    pub async fn stop(&self) {
        let stop = self
            .stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let task = self.task.lock().await.take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.subscribed.store(false, Ordering::SeqCst);
    }
}

/// A start for reply nonces that differs between runs of one instance id.
fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // The low 64 bits of the clock in ns: distinct across restarts.
    #[allow(clippy::cast_possible_truncation)]
    let seed = nanos as u64;
    seed
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
    timeout: Duration,
) -> Result<redis::aio::PubSub, ControlError> {
    let subscribing = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    match tokio::time::timeout(timeout, subscribing).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ControlError::Redis(ClusterError::Protocol(format!(
            "no answer to SUBSCRIBE {channel} within {timeout:?}"
        )))),
    }
}

struct Subscriber {
    client: redis::Client,
    commands: ConnectionManager,
    channel: String,
    timeout: Duration,
    handler: ControlHandler,
    subscribed: Arc<std::sync::atomic::AtomicBool>,
    first: Option<redis::aio::PubSub>,
    stopped: oneshot::Receiver<()>,
}

/// The subscriber task: answers every command on this instance's channel until
/// stopped (or until the gateway is dropped: the stop sender goes with it),
/// resubscribing after a lost connection.
async fn serve(mut subscriber: Subscriber) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let pubsub = match subscriber.first.take() {
            Some(pubsub) => pubsub,
            None => {
                let attempt =
                    subscribe(&subscriber.client, &subscriber.channel, subscriber.timeout);
                tokio::select! {
                    _ = &mut subscriber.stopped => break,
                    result = attempt => match result {
                        Ok(pubsub) => {
                            tracing::info!(channel = %subscriber.channel, "control plane listening again");
                            backoff = Duration::from_millis(50);
                            pubsub
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, channel = %subscriber.channel, "control plane cannot subscribe; retrying");
                            tokio::select! {
                                _ = &mut subscriber.stopped => break,
                                () = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            continue;
                        }
                    }
                }
            }
        };
        subscriber.subscribed.store(true, Ordering::SeqCst);
        let mut messages = pubsub.into_on_message();
        let stop = loop {
            tokio::select! {
                _ = &mut subscriber.stopped => break true,
                message = messages.next() => match message {
                    Some(message) => answer(&subscriber, message.get_payload_bytes()).await,
                    None => break false,
                }
            }
        };
        subscriber.subscribed.store(false, Ordering::SeqCst);
        if stop {
            break;
        }
        tracing::warn!(channel = %subscriber.channel, "control plane connection lost; resubscribing");
    }
    subscriber.subscribed.store(false, Ordering::SeqCst);
}

/// Runs one command and pushes its answer (a malformed command is logged and
/// dropped: its sender times out).
async fn answer(subscriber: &Subscriber, payload: &[u8]) {
    let command: Command = match serde_json::from_slice(payload) {
        Ok(command) => command,
        Err(e) => {
            tracing::warn!(error = %e, "control plane: malformed command dropped");
            return;
        }
    };
    if !command.reply.contains("reply:") {
        tracing::warn!(reply = %command.reply, "control plane: command without a reply list dropped");
        return;
    }
    let answer = (subscriber.handler)(command.op, RequestId::from_raw(command.id));
    let Ok(answer) = serde_json::to_vec(&answer) else {
        return;
    };
    let expiry_ms = u64::try_from(subscriber.timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let pushed: Result<(), redis::RedisError> = redis::pipe()
        .atomic()
        .rpush(&command.reply, answer)
        .ignore()
        .pexpire(&command.reply, i64::try_from(expiry_ms).unwrap_or(i64::MAX))
        .ignore()
        .query_async(&mut subscriber.commands.clone())
        .await;
    if let Err(e) = pushed {
        tracing::warn!(error = %e, op = ?command.op, id = command.id, "control plane: cannot push the answer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_instance() {
        assert_eq!(format_id("gw-a", 17), "gw-a.17");
        assert_eq!(
            parse_id("gw-a", "gw-a.17"),
            Some(RoutedId::Local(RequestId::from_raw(17)))
        );
        assert_eq!(
            parse_id("gw-a", "gw_b-2.5"),
            Some(RoutedId::Remote {
                instance: "gw_b-2".to_owned(),
                number: 5
            })
        );
        assert_eq!(
            parse_id("gw-a", "9"),
            Some(RoutedId::Local(RequestId::from_raw(9)))
        );
        for bad in ["", "gw-a.", ".5", "gw a.5", "gw-a.x", "a.b.c", "gw-a.-1"] {
            assert_eq!(parse_id("gw-a", bad), None, "{bad:?}");
        }
    }
}
