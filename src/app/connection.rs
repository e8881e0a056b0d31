//! [`Connection`]: which company a request through the app is for, and the app as reqwest
//! middleware, which reads it.

use std::sync::Arc;

/// Says which connection (the key given to [`UnderstoryApp::complete`]) a request is
/// for, when one client serves every company: a reqwest-middleware extension
/// (`with_extension`), or an `http::Request` extension in tower stacks.
///
/// A request to the API without one, or with a key that was never completed, fails with
/// a clear error ([`Error::MissingConnection`], [`Error::UnknownConnection`]): it is never
/// sent with another company's token.
///
/// [`UnderstoryApp::complete`]: crate::UnderstoryApp::complete
/// [`Error::MissingConnection`]: crate::Error::MissingConnection
/// [`Error::UnknownConnection`]: crate::Error::UnknownConnection
///
/// ```
/// use understory_auth::Connection;
/// let connection = Connection::new("tenant-42");
/// assert_eq!(connection.key(), "tenant-42");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Connection(Arc<str>);

impl Connection {
    /// The connection with this key.
    pub fn new(key: impl AsRef<str>) -> Self {
        Connection(Arc::from(key.as_ref()))
    }

    /// Its key.
    pub fn key(&self) -> &str {
        &self.0
    }
}

#[cfg(feature = "middleware")]
mod middleware {
    use http::Extensions;
    use reqwest::{Request, Response};
    use reqwest_middleware::{Middleware, Next, Result};

    use super::Connection;
    use crate::{Error, UnderstoryApp};

    #[async_trait::async_trait]
    impl Middleware for UnderstoryApp {
        async fn handle(
            &self,
            request: Request,
            extensions: &mut Extensions,
            next: Next<'_>,
        ) -> Result<Response> {
            let connection = extensions.get::<Connection>().cloned();
            match connection {
                Some(connection) => {
                    let auth = self.connection(connection.key());
                    auth.handle(request, extensions, next).await
                }
                None if self.is_allowed(request.url()) => Err(
                    reqwest_middleware::Error::middleware(Error::MissingConnection),
                ),
                None => next.run(request, extensions).await,
            }
        }
    }
}
