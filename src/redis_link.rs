//! One multiplexed Redis connection shared by all requests, (re)established on demand,
//! one connect at a time. Callers drop it after an error so the next call reconnects.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};

pub struct RedisLink {
    client: Client,
    connection: ArcSwapOption<MultiplexedConnection>,
    connecting: tokio::sync::Mutex<()>,
    timeout: Duration,
}

impl RedisLink {
    /// `timeout` bounds connecting and each response.
    pub fn open(url: &str, timeout: Duration) -> Result<RedisLink, String> {
        let client = Client::open(url).map_err(|e| format!("invalid Redis URL: {e}"))?;
        Ok(RedisLink {
            client,
            connection: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            timeout,
        })
    }

    pub async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(c) = self.connection.load_full() {
            return Ok((*c).clone());
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(c) = self.connection.load_full() {
            return Ok((*c).clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        self.connection.store(Some(Arc::new(connection.clone())));
        Ok(connection)
    }

    /// Forgets the connection after an error; the next call connects afresh.
    pub fn reset(&self) {
        self.connection.store(None);
    }
}
