//! One lazily connected Redis client, shared by the crate's Redis-backed stores (the shared
//! token cache's `RedisStore` and the webhooks' `RedisWebhookDedup`).

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisResult};
use tokio::sync::OnceCell;

/// A Redis client whose connection is set up by the first operation, not at construction.
pub(crate) struct LazyRedis {
    client: Client,
    connection: OnceCell<ConnectionManager>,
    timeout: Duration,
}

impl LazyRedis {
    /// Connecting and every answer are bounded by `timeout`.
    pub(crate) fn new(client: Client, timeout: Duration) -> Self {
        LazyRedis {
            client,
            connection: OnceCell::new(),
            timeout,
        }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The connection, set up on first use. It fails fast and lets the next operation
    /// reconnect (no retries): callers bound their operations and fall back without Redis.
    pub(crate) async fn connection(&self) -> RedisResult<ConnectionManager> {
        let connection = self
            .connection
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(0);
                self.client.get_connection_manager_lazy(config)
            })
            .await?;
        Ok(connection.clone())
    }
}
