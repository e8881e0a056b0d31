//! [`RedisWebhookDedup`]: the `webhook-id`s of a fleet of receivers, on Redis.

use std::fmt;
use std::time::Duration;

use ::redis::{Client, Cmd, FromRedisValue};
use async_trait::async_trait;

use super::dedup::bounded;
use super::{DEFAULT_WEBHOOK_DEDUP_TTL, WebhookDedup, WebhookDedupError, WebhookIdState};
use crate::redis_connection::{LazyRedis, delete_if_holds, eval, px, set_px};

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

/// A [`WebhookDedup`] on Redis (feature `redis`), shared by every receiver that uses the
/// same server, each transition one atomic command (claims expire with their lease, by
/// Redis's clock). It connects on first use and reconnects by itself after a failure; clones
/// share one connection. Keys are `understory-auth:webhook:<namespace>:<webhook-id>`, with the
/// layer's [namespace](crate::webhooks::WebhookLayer::dedup_namespace) (for a Redis ACL:
/// `~understory-auth:*`, with `GET`, `SET`, `DEL` and `EVAL`).
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
    redis: LazyRedis,
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
            redis: LazyRedis::new(client, None, COMMAND_TIMEOUT),
            ttl: DEFAULT_WEBHOOK_DEDUP_TTL,
        })
    }

    /// How long a processed id is remembered (default [`DEFAULT_WEBHOOK_DEDUP_TTL`]), within
    /// 1 ms and [`MAX_WEBHOOK_DEDUP_DURATION`](crate::webhooks::MAX_WEBHOOK_DEDUP_DURATION).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = bounded(ttl);
        self
    }

    async fn run<T: FromRedisValue>(&self, command: &Cmd) -> Result<T, WebhookDedupError> {
        self.redis
            .query(command)
            .await
            .map_err(|e| WebhookDedupError::with_source("Redis command failed", e))
    }
}

#[async_trait]
impl WebhookDedup for RedisWebhookDedup {
    async fn claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<WebhookIdState, WebhookDedupError> {
        let claim = eval(CLAIM_SCRIPT, &format!("{KEY_PREFIX}{key}"))
            .arg(format!("claimed:{owner}"))
            .arg(px(bounded(lease)))
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
        let done = set_px(&format!("{KEY_PREFIX}{key}"), DONE, self.ttl);
        let _ok: String = self.run(&done).await?;
        Ok(())
    }

    async fn release(&self, key: &str, owner: &str) -> Result<(), WebhookDedupError> {
        let release = delete_if_holds(&format!("{KEY_PREFIX}{key}"), &format!("claimed:{owner}"));
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
