//! One lazily connected Redis client, shared by `RedisStore` and `RedisWebhookDedup`. The
//! redis crate buffers whatever a server announces, so it reads through a [`CappedStream`]
//! that follows the framing and drops the connection on a reply over its bounds.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use ::redis::aio::{AsyncStream, ConnectionLike, MultiplexedConnection};
use ::redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ErrorKind, FromRedisValue, Pipeline,
    RedisError, RedisFuture, RedisResult, ToRedisArgs, Value, cmd,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;

/// The most bytes one reply may take (the largest asked for: a 96 KiB entry and its `PTTL`).
pub(crate) const MAX_REPLY_BYTES: usize = 100 * 1024;
/// The most bytes connecting may read (a few hundred from a real Redis).
pub(crate) const MAX_SETUP_BYTES: usize = 16 * 1024;
/// Deeper nesting than this is refused (the redis crate's parser refuses beyond 100).
const MAX_DEPTH: usize = 128;
/// Replies beyond the commands written (`-ERR max number of clients reached`).
const UNASKED_REPLIES_ALLOWED: u64 = 1;

/// A Redis client whose connection is set up by the first command, not at construction;
/// clones share it.
#[derive(Clone)]
pub(crate) struct LazyRedis {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// The certificate authorities trusted for `rediss://` instead of the public ones.
    roots: Option<rustls::RootCertStore>,
    timeout: Duration,
    current: parking_lot::Mutex<Option<Current>>,
    /// One connection attempt at a time; the others wait for its outcome.
    connecting: tokio::sync::Mutex<()>,
    /// Connection attempts that failed, so that those who waited for one fail with it.
    failed_attempts: AtomicU64,
}

/// The live connection and what ends it.
#[derive(Clone)]
struct Current {
    connection: MultiplexedConnection,
    guard: Arc<Guard>,
    driver: Arc<Driver>,
}

/// What the connection's [`CappedStream`] shares with its users.
#[derive(Default)]
struct Guard {
    setup_done: AtomicBool,
    refused: parking_lot::Mutex<Option<Refusal>>,
}

/// The task reading and writing the connection, aborted with the last handle to it.
struct Driver(JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl LazyRedis {
    /// Connecting and every answer are bounded by `timeout`; `roots`, if given, are the only
    /// authorities trusted for `rediss://` (else the public ones).
    pub(crate) fn new(
        client: Client,
        roots: Option<rustls::RootCertStore>,
        timeout: Duration,
    ) -> Self {
        LazyRedis {
            inner: Arc::new(Inner {
                client,
                roots,
                timeout,
                current: parking_lot::Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                failed_attempts: AtomicU64::new(0),
            }),
        }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Runs `command`, connecting first if there is no live connection: after a failure the
    /// next command reconnects (no retries, no background work).
    pub(crate) async fn query<T: FromRedisValue>(&self, command: &Cmd) -> RedisResult<T> {
        command.query_async(&mut self.clone()).await
    }
}

/// `EVAL script 1 key`, for the caller to add the script's arguments.
pub(crate) fn eval(script: &str, key: &str) -> Cmd {
    cmd("EVAL").arg(script).arg(1).arg(key).take()
}

/// `SET key value PX ttl`.
pub(crate) fn set_px(key: &str, value: impl ToRedisArgs, ttl: Duration) -> Cmd {
    cmd("SET").arg(key).arg(value).arg("PX").arg(px(ttl)).take()
}

/// Deletes `key` only if it still holds `value` (its owner's), so that a holder whose lock or
/// claim expired cannot delete the next holder's; answers how many keys it deleted.
pub(crate) fn delete_if_holds(key: &str, value: &str) -> Cmd {
    const SCRIPT: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;
    eval(SCRIPT, key).arg(value).take()
}

/// `duration` in whole milliseconds for `PX`, at least 1 (Redis refuses `PX 0`).
pub(crate) fn px(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl ConnectionLike for LazyRedis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut current = self.inner.current().await?;
            let result = current.connection.req_packed_command(cmd).await;
            self.inner.settle(&current, result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut current = self.inner.current().await?;
            let result = current
                .connection
                .req_packed_commands(cmd, offset, count)
                .await;
            self.inner.settle(&current, result)
        })
    }

    fn get_db(&self) -> i64 {
        self.inner
            .client
            .get_connection_info()
            .redis_settings()
            .db()
    }
}

impl Inner {
    /// The live connection, connecting first if there is none (or it has ended).
    async fn current(&self) -> RedisResult<Current> {
        if let Some(current) = self.live() {
            return Ok(current);
        }
        let failed_before = self.failed_attempts.load(Relaxed);
        let _connecting = self.connecting.lock().await;
        if let Some(current) = self.live() {
            return Ok(current);
        }
        if self.failed_attempts.load(Relaxed) != failed_before {
            return Err(RedisError::from((
                ErrorKind::Io,
                "connecting to Redis failed just now",
            )));
        }
        let within = format!(
            "no connection to Redis within {}ms",
            self.timeout.as_millis()
        );
        let connected = tokio::time::timeout(self.timeout, self.connect())
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, within).into()));
        match &connected {
            Ok(current) => *self.current.lock() = Some(current.clone()),
            Err(_) => _ = self.failed_attempts.fetch_add(1, Relaxed),
        }
        connected
    }

    fn live(&self) -> Option<Current> {
        let mut slot = self.current.lock();
        if slot.as_ref().is_some_and(|c| c.driver.0.is_finished()) {
            *slot = None;
        }
        slot.clone()
    }

    /// Drops the connection after an error that ends it, and turns a refused reply into an
    /// error of its own (not an I/O error: retrying it would only read another one).
    fn settle<T>(&self, current: &Current, result: RedisResult<T>) -> RedisResult<T> {
        result.map_err(|error| {
            let refused = *current.guard.refused.lock();
            if refused.is_some() || error.is_unrecoverable_error() {
                let mut slot = self.current.lock();
                if slot
                    .as_ref()
                    .is_some_and(|c| Arc::ptr_eq(&c.guard, &current.guard))
                {
                    *slot = None;
                }
            }
            refused.map_or(error, RedisError::from)
        })
    }

    async fn connect(&self) -> RedisResult<Current> {
        let info = self.client.get_connection_info();
        let stream: Pin<Box<dyn AsyncStream + Send + Sync>> = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                Box::pin(tokio::net::TcpStream::connect((host.as_str(), *port)).await?)
            }
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                ..
            } => {
                if *insecure {
                    return Err(RedisError::from((
                        ErrorKind::InvalidClientConfig,
                        "rediss:// with #insecure is refused: the server's certificate is always verified",
                    )));
                }
                let name = rustls::pki_types::ServerName::try_from(host.as_str())?.to_owned();
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                let connector = tokio_rustls::TlsConnector::from(self.tls_config()?);
                Box::pin(connector.connect(name, tcp).await?)
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Box::pin(tokio::net::UnixStream::connect(path).await?),
            _ => {
                return Err(RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "unsupported kind of Redis address",
                )));
            }
        };
        let guard = Arc::new(Guard::default());
        let config = AsyncConnectionConfig::new().set_response_timeout(Some(self.timeout));
        let capped = CappedStream::new(stream, Arc::clone(&guard));
        let connected =
            MultiplexedConnection::new_with_config(info.redis_settings(), capped, config).await;
        let (connection, driver) =
            connected.map_err(|error| (*guard.refused.lock()).map_or(error, RedisError::from))?;
        guard.setup_done.store(true, Relaxed);
        Ok(Current {
            connection,
            guard,
            driver: Arc::new(Driver(tokio::spawn(driver))),
        })
    }

    fn tls_config(&self) -> RedisResult<Arc<rustls::ClientConfig>> {
        let roots = self.roots.clone().unwrap_or_else(|| rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// Why a connection was dropped for what the server sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Refusal {
    #[error("the server sent a reply longer than {MAX_REPLY_BYTES} bytes{ADVICE}")]
    TooLong,
    #[error("the server sent more than {MAX_SETUP_BYTES} bytes while connecting{ADVICE}")]
    SetupTooLong,
    #[error("the server sent replies to no command{ADVICE}")]
    Unasked,
    #[error("the server sent bytes that are not the Redis protocol{ADVICE}")]
    Malformed,
}

/// What every [`Refusal`] says after what the server sent.
const ADVICE: &str = ", which no honest Redis sends this crate; the connection was dropped. \
    Check that the URL names your Redis, and use rediss:// if the network between may be \
    tampered with";

impl From<Refusal> for RedisError {
    fn from(refusal: Refusal) -> Self {
        RedisError::from((
            ErrorKind::Client,
            "refused what Redis sent",
            refusal.to_string(),
        ))
    }
}

/// The connection's bytes, each reply bounded; a refusal fails every later read.
struct CappedStream {
    inner: Pin<Box<dyn AsyncStream + Send + Sync>>,
    replies: Framing,
    commands: Framing,
    replies_read: u64,
    commands_written: u64,
    setup_bytes: usize,
    guard: Arc<Guard>,
}

impl CappedStream {
    fn new(inner: Pin<Box<dyn AsyncStream + Send + Sync>>, guard: Arc<Guard>) -> Self {
        CappedStream {
            inner,
            replies: Framing::new(MAX_REPLY_BYTES as u64),
            commands: Framing::new(u64::MAX),
            replies_read: 0,
            commands_written: 0,
            setup_bytes: 0,
            guard,
        }
    }

    fn refuse(&self, refusal: Refusal) -> io::Error {
        let mut refused = self.guard.refused.lock();
        let refusal = *refused.get_or_insert(refusal);
        // "Aborted" is a dropped connection to the redis crate: it ends the connection.
        io::Error::new(io::ErrorKind::ConnectionAborted, refusal)
    }

    /// Follows `bytes` just read; `Err` refuses them.
    fn check_read(&mut self, bytes: &[u8]) -> Result<(), Refusal> {
        if !self.guard.setup_done.load(Relaxed) {
            self.setup_bytes = self.setup_bytes.saturating_add(bytes.len());
            if self.setup_bytes > MAX_SETUP_BYTES {
                return Err(Refusal::SetupTooLong);
            }
        }
        let replies = self.replies.feed(bytes)?;
        self.replies_read = self.replies_read.saturating_add(replies);
        if self.replies_read
            > self
                .commands_written
                .saturating_add(UNASKED_REPLIES_ALLOWED)
        {
            return Err(Refusal::Unasked);
        }
        Ok(())
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(refusal) = *self.guard.refused.lock() {
            return Poll::Ready(Err(self.refuse(refusal)));
        }
        // Never read past the bounds.
        let mut room = self.replies.room();
        let mut refusal = Refusal::TooLong;
        if !self.guard.setup_done.load(Relaxed) {
            let setup_room = MAX_SETUP_BYTES.saturating_sub(self.setup_bytes) as u64;
            if setup_room < room {
                (room, refusal) = (setup_room, Refusal::SetupTooLong);
            }
        }
        if room == 0 {
            return Poll::Ready(Err(self.refuse(refusal)));
        }
        let room = usize::try_from(room)
            .unwrap_or(usize::MAX)
            .min(buf.remaining());
        let this = &mut *self;
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room));
        ready!(this.inner.as_mut().poll_read(cx, &mut limited))?;
        if let Err(refusal) = this.check_read(limited.filled()) {
            return Poll::Ready(Err(this.refuse(refusal)));
        }
        let read = limited.filled().len();
        buf.advance(read);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(self.inner.as_mut().poll_write(cx, buf))?;
        let this = &mut *self;
        let sent = buf.get(..written).unwrap_or(buf);
        match this.commands.feed(sent) {
            Ok(commands) => {
                this.commands_written = this.commands_written.saturating_add(commands);
                Poll::Ready(Ok(written))
            }
            // The redis crate's own encoding: cannot happen, but never count blindly.
            Err(refusal) => Poll::Ready(Err(this.refuse(refusal))),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}

/// Follows a stream of RESP2/RESP3 values, keeping only where it is, to count the complete
/// top-level values and bound each one's length.
struct Framing {
    max_len: u64,
    /// Bytes of the top-level value being read so far.
    len: u64,
    state: State,
    /// Elements still due in each open aggregate, innermost last.
    open: Vec<u64>,
}

#[derive(Clone, Copy)]
enum State {
    /// Expecting a value's type byte.
    Type,
    /// In a value's first line, up to its CRLF. `number` is the length read so far, for the
    /// types that announce one.
    Line {
        kind: u8,
        number: Option<u64>,
        negative: bool,
        after_cr: bool,
    },
    /// In a blob's bytes and its closing CRLF: `left` bytes to go.
    Blob { left: u64 },
}

impl Framing {
    fn new(max_len: u64) -> Self {
        Framing {
            max_len,
            len: 0,
            state: State::Type,
            open: Vec::new(),
        }
    }

    /// How many more bytes the top-level value being read may take (all of the bound
    /// between values).
    fn room(&self) -> u64 {
        self.max_len.saturating_sub(self.len)
    }

    /// Follows `bytes`, returning how many top-level values they complete.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<u64, Refusal> {
        let mut completed = 0;
        while let Some(&byte) = bytes.first() {
            let taken = match self.state {
                State::Blob { left } => {
                    let taken = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    self.state = match left - taken as u64 {
                        0 => {
                            completed += u64::from(self.complete_value());
                            State::Type
                        }
                        left => State::Blob { left },
                    };
                    taken
                }
                State::Type if b"+-:_,#($!=*%~>|".contains(&byte) => {
                    self.state = State::Line {
                        kind: byte,
                        number: None,
                        negative: false,
                        after_cr: false,
                    };
                    1
                }
                State::Type => return Err(Refusal::Malformed),
                State::Line { .. } => {
                    completed += u64::from(self.line_byte(byte)?);
                    1
                }
            };
            self.len = self.len.saturating_add(taken as u64);
            if self.len > self.max_len {
                return Err(Refusal::TooLong);
            }
            if self.open.is_empty() && matches!(self.state, State::Type) {
                self.len = 0;
            }
            bytes = &bytes[taken..];
        }
        Ok(completed)
    }

    /// One byte of a first line; whether it completes a top-level value.
    fn line_byte(&mut self, byte: u8) -> Result<bool, Refusal> {
        let State::Line {
            kind,
            number,
            negative,
            after_cr,
        } = self.state
        else {
            return Ok(false);
        };
        let announces_length = b"$!=*%~>|".contains(&kind);
        if after_cr && byte == b'\n' {
            self.state = State::Type;
            return match (announces_length, number) {
                (false, _) => Ok(self.complete_value()),
                (true, Some(number)) => self.announced(kind, number, negative),
                (true, None) => Err(Refusal::Malformed),
            };
        }
        let (number, negative) = if !announces_length || byte == b'\r' {
            (number, negative)
        } else if byte == b'-' && number.is_none() && !negative {
            (None, true)
        } else if byte.is_ascii_digit() {
            let digit = u64::from(byte - b'0');
            let value = number
                .unwrap_or(0)
                .checked_mul(10)
                .and_then(|n| n.checked_add(digit))
                .ok_or(Refusal::TooLong)?;
            (Some(value), negative)
        } else {
            return Err(Refusal::Malformed);
        };
        if announces_length && after_cr {
            // A CR inside a length.
            return Err(Refusal::Malformed);
        }
        self.state = State::Line {
            kind,
            number,
            negative,
            after_cr: byte == b'\r',
        };
        Ok(false)
    }

    /// A length `number` (negative if `negative`) announced by a `kind` value; whether that
    /// completes a top-level value.
    fn announced(&mut self, kind: u8, number: u64, negative: bool) -> Result<bool, Refusal> {
        if negative {
            // `$-1` and `*-1` are RESP2's nil; nothing else may be negative.
            return match kind {
                b'$' | b'*' if number == 1 => Ok(self.complete_value()),
                _ => Err(Refusal::Malformed),
            };
        }
        // Each element takes at least 3 bytes ("_\r\n"), so a count above a third of the
        // bound cannot fit in it.
        let elements = match kind {
            b'$' | b'!' | b'=' => {
                if number > self.max_len {
                    return Err(Refusal::TooLong);
                }
                self.state = State::Blob {
                    left: number.saturating_add(2),
                };
                return Ok(false);
            }
            b'%' => number.checked_mul(2),
            b'|' => number.checked_mul(2).and_then(|n| n.checked_add(1)),
            _ => Some(number),
        }
        .filter(|&n| n <= self.max_len / 3)
        .ok_or(Refusal::TooLong)?;
        if elements == 0 {
            return Ok(self.complete_value());
        }
        if self.open.len() >= MAX_DEPTH {
            return Err(Refusal::Malformed);
        }
        self.open.push(elements);
        Ok(false)
    }

    /// A value ended: counts it in its aggregate, closing those it completes. Whether a
    /// top-level value is complete.
    fn complete_value(&mut self) -> bool {
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return false;
            }
            self.open.pop();
        }
        true
    }
}

#[cfg(test)]
mod tests;
