//! Reading request bodies, bounded.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// The largest request body the sandbox accepts.
const BODY_LIMIT: usize = 1024 * 1024;

/// How much of a too large request body the sandbox reads (and discards) before answering.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Why a request body could not be read.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BodyError {
    /// It was larger than [`BODY_LIMIT`].
    TooLarge,
    /// The client stopped sending it.
    Incomplete,
}

impl BodyError {
    /// What to tell the client.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::TooLarge => "The request body is too large.",
            Self::Incomplete => "The request body could not be read.",
        }
    }
}

/// A request body, or why there is none.
pub(crate) type RequestBody = Result<Bytes, BodyError>;

/// Reads a body of at most [`BODY_LIMIT`] bytes. A larger one is still drained (up to
/// [`DRAIN_LIMIT`]) so that the client gets to read the answer instead of a connection reset.
pub(crate) async fn read_body(mut body: Incoming) -> RequestBody {
    let mut collected = BytesMut::new();
    let mut received = 0;
    while received <= DRAIN_LIMIT {
        let Some(frame) = body.frame().await else {
            break;
        };
        let Ok(data) = frame.map_err(|_| BodyError::Incomplete)?.into_data() else {
            continue; // trailers
        };
        received += data.len();
        if received <= BODY_LIMIT {
            collected.extend_from_slice(&data);
        }
    }
    if received > BODY_LIMIT {
        Err(BodyError::TooLarge)
    } else {
        Ok(collected.freeze())
    }
}

/// The first value of `key` in a form-urlencoded `body`, as Go's `url.Values.Get`.
pub(crate) fn form_value(body: &[u8], key: &str) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.into_owned())
}
