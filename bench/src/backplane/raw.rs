//! Raw JetStream publishing, the baseline of the backplane's throughput: the engine's own
//! client library (async-nats, the workspace's one version) on a current-thread tokio
//! runtime, as the engine's backplane thread runs it, publishing plain messages to a
//! stream configured like the engine's, with at most `window` acknowledgements awaited.
//!
//! Must never: wait without a bound (every call runs under a timeout), or run ahead of
//! JetStream by more than `window` unacknowledged publishes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;

/// A JetStream context and the runtime that drives it.
pub struct Raw {
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
    js: jetstream::Context,
}

/// Bound on one JetStream API call (stream lookups and creation).
const API_TIMEOUT: Duration = Duration::from_secs(10);

impl Raw {
    /// Connects to `url` and waits until JetStream answers, until `deadline`.
    ///
    /// # Errors
    /// If no runtime can be built, or JetStream does not answer by `deadline`.
    pub fn connect(url: &str, deadline: Instant) -> Result<Raw, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let (client, js) = runtime.block_on(async {
            let mut last = String::new();
            while Instant::now() < deadline {
                let connect = async_nats::ConnectOptions::new()
                    .name("ringcast-bench raw")
                    .connection_timeout(API_TIMEOUT)
                    .connect(url);
                match tokio::time::timeout(API_TIMEOUT, connect).await {
                    Ok(Ok(client)) => {
                        let js = jetstream::new(client.clone());
                        match tokio::time::timeout(API_TIMEOUT, js.query_account()).await {
                            Ok(Ok(_)) => return Ok((client, js)),
                            Ok(Err(e)) => last = e.to_string(),
                            Err(_) => last = "no answer".into(),
                        }
                    }
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "connect timed out".into(),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(format!("JetStream at {url} is not ready: {last}"))
        })?;
        Ok(Raw { runtime, client, js })
    }

    /// Creates stream `name` over `<name>.*` with every other setting of the stream
    /// `like` (the one the engine created), and returns the settings.
    ///
    /// # Errors
    /// If `like` cannot be read or `name` cannot be created.
    pub fn create_like(&self, like: &str, name: &str) -> Result<jetstream::stream::Config, String> {
        self.runtime.block_on(async {
            let call = async {
                let mut stream = self
                    .js
                    .get_stream(like)
                    .await
                    .map_err(|e| format!("stream {like}: {e}"))?;
                let mut config = stream
                    .info()
                    .await
                    .map_err(|e| format!("stream {like}: {e}"))?
                    .config
                    .clone();
                config.name = name.to_owned();
                config.subjects = vec![format!("{name}.*")];
                config.description = Some("ringcast-bench: raw JetStream publishing".into());
                self.js
                    .create_stream(config.clone())
                    .await
                    .map_err(|e| format!("create stream {name}: {e}"))?;
                Ok(config)
            };
            tokio::time::timeout(API_TIMEOUT, call)
                .await
                .map_err(|_| format!("stream {like} / {name}: no answer within {API_TIMEOUT:?}"))?
        })
    }

    /// Publishes `count` messages of `payload` to `subject`, keeping at most `window`
    /// unacknowledged (the oldest is awaited before the next is sent), and returns the
    /// time from the first publish to the last acknowledgement.
    ///
    /// # Errors
    /// A failed publish or acknowledgement, or more than `timeout` in all.
    pub fn publish(
        &self,
        subject: &str,
        count: u64,
        payload: &Bytes,
        window: usize,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let window = window.max(1);
        let subject = async_nats::Subject::from(subject);
        let run = async {
            let start = Instant::now();
            let mut pending = VecDeque::with_capacity(window);
            for _ in 0..count {
                if pending.len() == window {
                    awaited(pending.pop_front()).await?;
                }
                let ack = self
                    .js
                    .publish(subject.clone(), payload.clone())
                    .await
                    .map_err(|e| format!("JetStream publish: {e}"))?;
                pending.push_back(ack);
            }
            while let Some(ack) = pending.pop_front() {
                awaited(Some(ack)).await?;
            }
            Ok(start.elapsed())
        };
        self.runtime.block_on(async {
            tokio::time::timeout(timeout, run)
                .await
                .map_err(|_| format!("raw JetStream publishing ran past {timeout:?}"))?
        })
    }
}

impl Raw {
    /// Publishes `count` messages of `payload` to `subject` as JetStream atomic batches
    /// of `batch` messages, one batch in flight (the engine's way, without its
    /// predecessor headers), and returns the time from the first publish to the last
    /// batch's acknowledgement.
    ///
    /// # Errors
    /// A failed publish, a refused batch, or more than `timeout` in all.
    pub fn publish_batches(
        &self,
        subject: &str,
        count: u64,
        payload: &Bytes,
        batch: u64,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let batch = batch.clamp(1, 1000);
        let subject = async_nats::Subject::from(subject);
        let run = async {
            let start = Instant::now();
            let mut sent = 0u64;
            let mut serial = 0u64;
            while sent < count {
                serial += 1;
                let id = format!("raw-{}-{serial}", std::process::id());
                let n = batch.min(count - sent);
                for i in 1..=n {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Batch-Id", id.as_str());
                    headers.insert("Nats-Batch-Sequence", i.to_string().as_str());
                    if i < n {
                        self.client
                            .publish_with_headers(subject.clone(), headers, payload.clone())
                            .await
                            .map_err(|e| format!("publish: {e}"))?;
                        continue;
                    }
                    headers.insert("Nats-Batch-Commit", "1");
                    let request = async_nats::Request::new()
                        .headers(headers)
                        .payload(payload.clone())
                        .timeout(Some(API_TIMEOUT));
                    let reply = self
                        .client
                        .send_request(subject.clone(), request)
                        .await
                        .map_err(|e| format!("batch commit: {e}"))?;
                    let text = String::from_utf8_lossy(&reply.payload);
                    if text.contains("\"error\"") {
                        return Err(format!("JetStream refused the batch: {text}"));
                    }
                }
                sent += n;
            }
            Ok(start.elapsed())
        };
        self.runtime.block_on(async {
            tokio::time::timeout(timeout, run)
                .await
                .map_err(|_| format!("raw JetStream batches ran past {timeout:?}"))?
        })
    }
}

/// Awaits one acknowledgement.
async fn awaited(ack: Option<jetstream::context::PublishAckFuture>) -> Result<(), String> {
    match ack {
        Some(ack) => ack
            .await
            .map(|_| ())
            .map_err(|e| format!("JetStream acknowledgement: {e}")),
        None => Ok(()),
    }
}
