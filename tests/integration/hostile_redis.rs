//! A hostile Redis (or someone on the path of a plain `redis://` connection): a fake server
//! on 127.0.0.1 that answers the connection's setup, then announces a 4 GiB bulk reply to
//! every command and streams it. Both Redis-backed stores must fail the operation and stop
//! reading; the server counts what it managed to send until the client closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use understory_auth::TokenStore;
use understory_auth::webhooks::{RedisWebhookDedup, WebhookDedup};

/// What the fake server sends at most per connection: far more than the bound, so that a
/// client without one reads all of it.
const FLOOD: usize = 64 << 20;
/// What the client may let the server send before it stops reading: the bound on one
/// reply plus what the kernel's socket buffers take in (a few MiB on loopback).
const AT_MOST: usize = 8 << 20;

struct HostileRedis {
    url: String,
    sent: Arc<AtomicUsize>,
    connections: mpsc::UnboundedReceiver<JoinHandle<()>>,
    commands: Arc<parking_lot::Mutex<Vec<String>>>,
}

impl HostileRedis {
    async fn start(announce: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("redis://{}/", listener.local_addr().expect("addr"));
        let sent = Arc::new(AtomicUsize::new(0));
        let commands = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (tx, connections) = mpsc::unbounded_channel();
        let (total, names) = (Arc::clone(&sent), Arc::clone(&commands));
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let serve = serve(socket, announce, Arc::clone(&total), Arc::clone(&names));
                if tx.send(tokio::spawn(serve)).is_err() {
                    return;
                }
            }
        });
        HostileRedis {
            url,
            sent,
            connections,
            commands,
        }
    }

    /// Waits for every connection so far to end (the client closed it, or stopped reading
    /// for 10 s), then says how many bytes the server sent over all of them.
    async fn sent_until_closed(&mut self) -> usize {
        while let Ok(connection) = self.connections.try_recv() {
            let _ = connection.await;
        }
        self.sent.load(Ordering::Relaxed)
    }
}

/// Answers `+OK` to the setup commands (`CLIENT`, `SELECT`, `AUTH`); to any other command,
/// `announce` and then [`FLOOD`] bytes.
async fn serve(
    mut socket: TcpStream,
    announce: &'static [u8],
    sent: Arc<AtomicUsize>,
    commands: Arc<parking_lot::Mutex<Vec<String>>>,
) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some((name, len)) = parse_command(&buffer) {
            buffer.drain(..len);
            commands.lock().push(name.clone());
            if matches!(name.as_str(), "CLIENT" | "SELECT" | "AUTH") {
                if socket.write_all(b"+OK\r\n").await.is_err() {
                    return;
                }
                continue;
            }
            if socket.write_all(announce).await.is_err() {
                return;
            }
            let junk = vec![b'x'; 64 * 1024];
            let mut flooded = 0;
            while flooded < FLOOD {
                let write = tokio::time::timeout(Duration::from_secs(10), socket.write(&junk));
                match write.await {
                    Ok(Ok(n)) if n > 0 => {
                        flooded += n;
                        sent.fetch_add(n, Ordering::Relaxed);
                    }
                    // Closed by the client, or it stopped reading.
                    _ => return,
                }
            }
            // Flooded whole: wait until the client closes.
            let _ = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut chunk)).await;
            return;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The first complete command in `buffer` (`*N\r\n` and N bulk strings): its name, upper
/// case, and its length in bytes.
fn parse_command(buffer: &[u8]) -> Option<(String, usize)> {
    fn line(buffer: &[u8], at: usize, kind: u8) -> Option<(usize, usize)> {
        let end = at + buffer.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        if buffer[at] != kind {
            return None;
        }
        let number = std::str::from_utf8(&buffer[at + 1..end])
            .ok()?
            .parse()
            .ok()?;
        Some((number, end + 2))
    }
    let (count, mut at) = line(buffer, 0, b'*')?;
    let mut name = None;
    for _ in 0..count {
        let (len, start) = line(buffer, at, b'$')?;
        let arg = buffer.get(start..start + len)?;
        name.get_or_insert_with(|| String::from_utf8_lossy(arg).to_uppercase());
        at = start + len + 2;
        if buffer.len() < at {
            return None;
        }
    }
    Some((name?, at))
}

#[tokio::test]
async fn a_redis_announcing_a_huge_reply_fails_the_store_call_which_stops_reading() {
    let mut redis = HostileRedis::start(b"$4294967296\r\n").await;
    let store = understory_auth::RedisStore::new(&redis.url).expect("store");

    let error = store
        .get("understory-auth:token:v1:k", 96 * 1024)
        .await
        .expect_err("a 4 GiB reply");
    let message = error.to_string();
    assert!(message.contains("longer than 102400 bytes"), "{message}");
    drop(store);

    let sent = redis.sent_until_closed().await;
    assert!(
        sent <= AT_MOST,
        "the client let the server send {sent} bytes"
    );
    // Refused, not retried on another connection.
    assert_eq!(
        redis
            .commands
            .lock()
            .iter()
            .filter(|c| *c == "EVAL")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_redis_streaming_an_endless_line_fails_the_store_call_at_the_bound() {
    // No length to refuse up front: the line itself grows past the bound.
    let mut redis = HostileRedis::start(b"+").await;
    let store = understory_auth::RedisStore::new(&redis.url).expect("store");

    let error = store.next_generation("understory-auth:token:v1:g").await;
    assert!(error.is_err());
    drop(store);

    let sent = redis.sent_until_closed().await;
    assert!(
        sent <= AT_MOST,
        "the client let the server send {sent} bytes"
    );
}

#[tokio::test]
async fn a_redis_announcing_a_huge_reply_fails_the_webhook_claim_which_stops_reading() {
    let mut redis = HostileRedis::start(b"*1\r\n$4294967296\r\n").await;
    let dedup = RedisWebhookDedup::new(&redis.url).expect("dedup");

    let error = dedup
        .claim("msg_1", "owner", Duration::from_secs(60))
        .await
        .expect_err("a 4 GiB reply");
    let chain = format!("{error} {:?}", std::error::Error::source(&error));
    assert!(chain.contains("longer than 102400 bytes"), "{chain}");
    drop(dedup);

    let sent = redis.sent_until_closed().await;
    assert!(
        sent <= AT_MOST,
        "the client let the server send {sent} bytes"
    );
}
