//! [`RedisWebhookDedup`]: the `webhook-id`s of a fleet of receivers, on Redis.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis::{Client, Cmd, FromRedisValue, cmd};
use async_trait::async_trait;

use super::dedup::bounded;
use super::{DEFAULT_WEBHOOK_DEDUP_TTL, WebhookDedup, WebhookDedupError, WebhookIdState};
use crate::redis_connection::LazyRedis;

/// The prefix of every key a [`RedisWebhookDedup`] writes; the layer's namespace, `:` and
/// the `webhook-id` follow.
const KEY_PREFIX: &str = "understory-auth:webhook:";
/// The value of a processed id's key; a claim's value is `claimed:<owner>`.
const DONE: &str = "done";
/// How long one Redis command (or connecting) may take before the claim fails, so that
/// the layer answers 503 instead of keeping Understory's delivery waiting.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Claims `KEYS[1]` for `ARGV[1]` (`claimed:<owner>`) for `ARGV[2]` ms if it is absent
/// (never claimed, released, or its lease ran out); answers 0 (new), 1 (in progress) or 2
/// (done).
const CLAIM_SCRIPT: &str = r"
local found = redis.call('GET', KEYS[1])
if not found then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 0
end
if found == 'done' then return 2 end
return 1
";

/// Deletes `KEYS[1]` if `ARGV[1]` (`claimed:<owner>`) still holds it.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A [`WebhookDedup`] on Redis (feature `redis`), shared by every receiver that uses the
/// same server, each transition one atomic command:
///
/// * a claim is a script that sets `<key> claimed:<owner> PX <lease>` if the key is absent
///   and otherwise answers whether it is claimed or done;
/// * a completion is `SET <key> done PX <ttl>`;
/// * a release a script that deletes the key if `claimed:<owner>` still holds it.
///
/// A claim whose process died expires with its lease (Redis's clock), and the next delivery
/// is processed. It connects on first use and reconnects by itself after a failure; clones
/// share one connection. Processed ids are remembered for [`DEFAULT_WEBHOOK_DEDUP_TTL`]
/// unless [`ttl`](Self::ttl) says otherwise.
///
/// Keys are `understory-auth:webhook:<namespace>:<webhook-id>` (for a Redis ACL:
/// `~understory-auth:*`; the commands used are `GET`, `SET`, `DEL` and `EVAL`). The
/// namespace is the layer's ([`WebhookLayer::dedup_namespace`]): by default a short hash
/// derived from the verifier's first secret, so that two services (two subscriptions) sharing
/// one Redis never take each other's ids for their own, even though a sender reuses a
/// message's `webhook-id` for every endpoint subscribed to it.
///
/// [`WebhookLayer::dedup_namespace`]: crate::webhooks::WebhookLayer::dedup_namespace
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

    /// How long a processed id is remembered (default [`DEFAULT_WEBHOOK_DEDUP_TTL`]),
    /// saturated to [`MAX_WEBHOOK_DEDUP_DURATION`](crate::webhooks::MAX_WEBHOOK_DEDUP_DURATION)
    /// and at least 1 ms.
    ///
    /// ```
    /// use std::time::Duration;
    /// use understory_auth::webhooks::RedisWebhookDedup;
    ///
    /// let dedup = RedisWebhookDedup::new("redis://127.0.0.1/")?.ttl(Duration::from_secs(3600));
    /// # Ok::<(), understory_auth::webhooks::WebhookDedupError>(())
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = bounded(ttl);
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

/// `duration` in whole milliseconds, within what a store keeps (never 0, which Redis refuses).
fn millis(duration: Duration) -> u64 {
    u64::try_from(bounded(duration).as_millis()).unwrap_or(u64::MAX)
}

/// `EVAL script 1 <key>`, for the caller to add the script's arguments.
fn eval(script: &str, key: &str) -> Cmd {
    cmd("EVAL")
        .arg(script)
        .arg(1)
        .arg(format!("{KEY_PREFIX}{key}"))
        .take()
}

#[async_trait]
impl WebhookDedup for RedisWebhookDedup {
    async fn claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<WebhookIdState, WebhookDedupError> {
        let claim = eval(CLAIM_SCRIPT, key)
            .arg(format!("claimed:{owner}"))
            .arg(millis(lease))
            .take();
        match self.run::<i64>(&claim).await? {
            0 => Ok(WebhookIdState::New),
            1 => Ok(WebhookIdState::InProgress),
            2 => Ok(WebhookIdState::Done),
            _ => Err(WebhookDedupError::new(
                "unexpected answer from Redis to a webhook id claim",
            )),
        }
    }

    async fn complete(&self, key: &str, _owner: &str) -> Result<(), WebhookDedupError> {
        let set = cmd("SET")
            .arg(format!("{KEY_PREFIX}{key}"))
            .arg(DONE)
            .arg("PX")
            .arg(millis(self.ttl))
            .take();
        let _ok: String = self.run(&set).await?;
        Ok(())
    }

    async fn release(&self, key: &str, owner: &str) -> Result<(), WebhookDedupError> {
        let release = eval(RELEASE_SCRIPT, key)
            .arg(format!("claimed:{owner}"))
            .take();
        let _deleted: i64 = self.run(&release).await?;
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
