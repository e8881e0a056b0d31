use super::*;

/// Feeds `bytes` to a reply framing one byte at a time and all at once: both must agree.
fn replies(bytes: &[u8]) -> Result<u64, Refusal> {
    let whole = Framing::new(MAX_REPLY_BYTES as u64).feed(bytes);
    let mut framing = Framing::new(MAX_REPLY_BYTES as u64);
    let mut bytewise = Ok(0);
    for byte in bytes {
        match framing.feed(std::slice::from_ref(byte)) {
            Ok(n) => bytewise = bytewise.map(|total| total + n),
            Err(refusal) => {
                bytewise = Err(refusal);
                break;
            }
        }
    }
    assert_eq!(whole, bytewise, "{:?}", String::from_utf8_lossy(bytes));
    whole
}

#[test]
fn the_replies_the_crate_gets_are_counted_whole() {
    assert_eq!(replies(b"+OK\r\n"), Ok(1));
    assert_eq!(replies(b"+OK\r\n+O"), Ok(1));
    assert_eq!(replies(b":42\r\n$-1\r\n*-1\r\n_\r\n"), Ok(4));
    assert_eq!(replies(b"-ERR a \r inside\r\n"), Ok(1));
    assert_eq!(replies(b"*2\r\n$5\r\nab\r\nc\r\n:1200\r\n"), Ok(1));
    assert_eq!(replies(b"*2\r\n$5\r\nab\r\nc\r\n:120"), Ok(0));
    assert_eq!(replies(b"*0\r\n%0\r\n~1\r\n#t\r\n"), Ok(3));
    // RESP3: a map, and an attribute before its value.
    assert_eq!(replies(b"%2\r\n+a\r\n:1\r\n+b\r\n*1\r\n,1.5\r\n"), Ok(1));
    assert_eq!(replies(b"|1\r\n+ttl\r\n:3\r\n$2\r\nhi\r\n"), Ok(1));
    assert_eq!(replies(b"|1\r\n+ttl\r\n:3\r\n"), Ok(0));
    assert_eq!(replies(b">2\r\n+message\r\n=7\r\ntxt:abc\r\n"), Ok(1));
}

#[test]
fn the_largest_entry_read_fits() {
    let value = vec![b'v'; 96 * 1024 + 1];
    let mut reply = format!("*2\r\n${}\r\n", value.len()).into_bytes();
    reply.extend_from_slice(&value);
    reply.extend_from_slice(b"\r\n:3599000\r\n");
    assert_eq!(replies(&reply), Ok(1));
    // And the next reply has the whole bound again.
    let mut framing = Framing::new(MAX_REPLY_BYTES as u64);
    for _ in 0..3 {
        assert_eq!(framing.feed(&reply), Ok(1));
    }
}

#[test]
fn a_huge_announced_length_is_refused_before_any_of_it_is_read() {
    assert_eq!(replies(b"$4294967296\r\n"), Err(Refusal::TooLong));
    assert_eq!(replies(b"*2\r\n$102401\r\n"), Err(Refusal::TooLong));
    assert_eq!(
        replies(b"$99999999999999999999999\r\n"),
        Err(Refusal::TooLong)
    );
    assert_eq!(replies(b"*4294967296\r\n"), Err(Refusal::TooLong));
    assert_eq!(replies(b"%9223372036854775807\r\n"), Err(Refusal::TooLong));
    assert_eq!(replies(b"|9223372036854775807\r\n"), Err(Refusal::TooLong));
}

#[test]
fn a_reply_growing_past_the_bound_is_refused_at_the_bound() {
    // One long line, or many small elements: refused once the bound is crossed.
    let mut line = b"+".to_vec();
    line.resize(MAX_REPLY_BYTES, b'a');
    assert_eq!(replies(&line), Ok(0));
    line.push(b'a');
    assert_eq!(replies(&line), Err(Refusal::TooLong));

    let mut array = b"*30000\r\n".to_vec();
    for _ in 0..30000 {
        array.extend_from_slice(b":1234\r\n");
    }
    assert_eq!(replies(&array), Err(Refusal::TooLong));
}

#[test]
fn what_is_not_the_protocol_is_refused() {
    for malformed in [
        &b"hello\r\n"[..],
        b"$abc\r\n",
        b"$\r\n",
        b"$1-\r\n",
        b"$-2\r\n",
        b"%-1\r\n",
        b"$1\rx\n",
    ] {
        assert_eq!(
            replies(malformed),
            Err(Refusal::Malformed),
            "{}",
            String::from_utf8_lossy(malformed)
        );
    }
    let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
    assert_eq!(replies(&deep), Err(Refusal::Malformed));
}

#[test]
fn commands_written_are_counted_without_a_bound() {
    let mut commands = Framing::new(u64::MAX);
    let value = vec![b'x'; 1 << 20];
    let mut set = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", value.len()).into_bytes();
    set.extend_from_slice(&value);
    set.extend_from_slice(b"\r\n");
    assert_eq!(commands.feed(&set[..10]), Ok(0));
    assert_eq!(commands.feed(&set[10..]), Ok(1));
    assert_eq!(commands.feed(b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPI"), Ok(1));
}

#[test]
fn a_refusal_says_what_happened_and_what_to_do() {
    let error = RedisError::from(Refusal::TooLong);
    assert!(!error.is_io_error() && !error.is_unrecoverable_error());
    let message = error.to_string();
    assert!(message.contains("longer than 102400 bytes"), "{message}");
    assert!(message.contains("rediss://"), "{message}");
}

/// Reads `from_server` through a capped stream (after writing `commands`), as the redis
/// crate would, in reads of up to 1 MiB: the bytes it let through and how it ended.
async fn read_capped(commands: &[u8], from_server: &[u8], setup_done: bool) -> (usize, io::Error) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client, mut server) = tokio::io::duplex(4 << 20);
    let guard = Arc::new(Guard::default());
    guard.setup_done.store(setup_done, Relaxed);
    let mut capped = CappedStream::new(Box::pin(client), Arc::clone(&guard));
    capped.write_all(commands).await.expect("write");
    server.write_all(from_server).await.expect("server writes");
    drop(server);
    let (mut total, mut buffer) = (0, vec![0; 1 << 20]);
    loop {
        match capped.read(&mut buffer).await {
            Ok(0) => panic!("read to the end ({total} bytes) without a refusal"),
            Ok(n) => total += n,
            Err(error) => {
                assert!(guard.refused.lock().is_some());
                return (total, error);
            }
        }
    }
}

#[tokio::test]
async fn no_byte_past_the_bound_is_read() {
    let mut endless = b"+".to_vec();
    endless.resize(3 << 20, b'a');
    let (read, error) = read_capped(b"*1\r\n$4\r\nPING\r\n", &endless, true).await;
    assert_eq!(read, MAX_REPLY_BYTES);
    assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    assert!(
        error.to_string().contains("longer than 102400 bytes"),
        "{error}"
    );

    // While connecting, the setup's bound.
    let (read, error) = read_capped(b"*1\r\n$4\r\nPING\r\n", &endless, false).await;
    assert_eq!(read, MAX_SETUP_BYTES);
    assert!(error.to_string().contains("while connecting"), "{error}");
}

#[tokio::test]
async fn replies_to_no_command_are_refused() {
    let ping = b"*1\r\n$4\r\nPING\r\n";
    let (read, error) = read_capped(ping, &b"+OK\r\n".repeat(1000), true).await;
    // At most the answer and the one greeting a full server may send first get through
    // (here none: they came in the same read as the third, which refused it whole).
    assert!(read <= 10, "{read}");
    assert!(
        error.to_string().contains("replies to no command"),
        "{error}"
    );
}
