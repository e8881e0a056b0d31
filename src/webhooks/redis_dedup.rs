//! [`RedisWebhookDedup`]: the `webhook-id`s of a fleet of receivers, on Redis.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis::{Client, Cmd, FromRedisValue, cmd};
use async_trait::async_trait;

use super::{DEFAULT_WEBHOOK_DEDUP_TTL, WebhookDedup, WebhookDedupError};
use crate::redis_connection::LazyRedis;

/// The prefix of every key a [`RedisWebhookDedup`] writes; the `webhook-id` follows.
const KEY_PREFIX: &str = "understory-auth:webhook-id:";
/// How long one Redis command (or connecting) may take before the claim fails, so that
/// the layer answers 503 instead of keeping Understory's delivery waiting.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// A [`WebhookDedup`] on Redis (feature `redis`), shared by every receiver that uses the
/// same server: a claim is `SET <key> 1 NX PX <ttl>`, a release `DEL <key>`.
///
/// It connects on first use and reconnects by itself after a failure; clones share one
/// connection. Ids are remembered for [`DEFAULT_WEBHOOK_DEDUP_TTL`] unless
/// [`ttl`](Self::ttl) says otherwise. Keys start with `understory-auth:webhook-id:`.
///
/// ```no_run
/// use understory_auth::webhooks::{RedisWebhookDedup, WebhookLayer, WebhookVerifier};
///
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let verifier = WebhookVerifier::new(&std::env::var("UNDERSTORY_WEBHOOK_SECRET")?)?;
/// let layer = WebhookLayer::new(verifier)
///     .dedup(RedisWebhookDedup::new("redis://redis.internal:6379/0")?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisWebhookDedup {
    redis: Arc<LazyRedis>,
    ttl: Duration,
}

impl RedisWebhookDedup {
    /// A store on the server at `url` (`redis://[[user]:password@]host[:port][/db]`).
    /// Nothing is connected until the first webhook; fails only on a URL that cannot be
    /// parsed (the error never holds the URL).
    ///
    /// ```
    /// use understory_auth::webhooks::RedisWebhookDedup;
    ///
    /// assert!(RedisWebhookDedup::new("redis://127.0.0.1:6379/").is_ok());
    /// assert!(RedisWebhookDedup::new("not a url").is_err());
    /// ```
    pub fn new(url: &str) -> Result<Self, WebhookDedupError> {
        let client = Client::open(url)
            .map_err(|e| WebhookDedupError::with_source("invalid Redis URL", e))?;
        Ok(RedisWebhookDedup {
            redis: Arc::new(LazyRedis::new(client, COMMAND_TIMEOUT)),
            ttl: DEFAULT_WEBHOOK_DEDUP_TTL,
        })
    }

    /// How long an id is remembered (default [`DEFAULT_WEBHOOK_DEDUP_TTL`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use understory_auth::webhooks::RedisWebhookDedup;
    ///
    /// let dedup = RedisWebhookDedup::new("redis://127.0.0.1/")?.ttl(Duration::from_secs(3600));
    /// # Ok::<(), understory_auth::webhooks::WebhookDedupError>(())
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    async fn run<T: FromRedisValue>(&self, command: &Cmd) -> Result<T, WebhookDedupError> {
        let mut connection =
            self.redis.connection().await.map_err(|e| {
                WebhookDedupError::with_source("cannot set up the Redis connection", e)
            })?;
        command
            .query_async(&mut connection)
            .await
            .map_err(|e| WebhookDedupError::with_source("Redis command failed", e))
    }
}

#[async_trait]
impl WebhookDedup for RedisWebhookDedup {
    async fn claim(&self, id: &str) -> Result<bool, WebhookDedupError> {
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let set = cmd("SET")
            .arg(format!("{KEY_PREFIX}{id}"))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .take();
        let answer: Option<String> = self.run(&set).await?;
        Ok(answer.is_some())
    }

    async fn release(&self, id: &str) -> Result<(), WebhookDedupError> {
        let _deleted: i64 = self
            .run(cmd("DEL").arg(format!("{KEY_PREFIX}{id}")))
            .await?;
        Ok(())
    }
}

impl fmt::Debug for RedisWebhookDedup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.redis.client().get_connection_info();
        f.debug_struct("RedisWebhookDedup")
            .field("addr", &info.addr().to_string())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}
