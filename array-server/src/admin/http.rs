//! The HTTP layer: hyper's HTTP/1 server on a current-thread tokio runtime of its own
//! thread (handlers run on its blocking pool, since they write metadata synchronously),
//! the token check, and the translation between hyper's requests and the plain
//! [`ApiRequest`] / [`ApiResponse`] the routes work with.
//!
//! # Limits
//!
//! The service shares the process's file descriptors with the data path, and anyone who
//! can reach the port may connect before proving the token, so a client can only hold
//! what [`Limits`] allows: request headers must arrive within `header_read_timeout`
//! (an idle keep-alive connection waiting for its next request too), a body within
//! `body_read_timeout` (408 and the connection closes), and at most `max_connections`
//! connections are open at once: a connection beyond that is accepted and closed at once.
//! A failed `accept` (out of file descriptors) pauses the loop for
//! [`ACCEPT_RETRY_DELAY`] instead of retrying (and logging) at full speed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::token::AdminToken;
use crate::error::{Error, Result};

/// Largest request body accepted, in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// Name of the cookie the page is authenticated with.
pub const COOKIE: &str = "multilane_admin";
/// Header a cookie-authenticated browser must add to any request that changes something
/// (a cross-site form cannot set it, so a foreign page cannot act for the operator).
pub const CSRF_HEADER: &str = "X-Multilane-Request";
/// Threads of the blocking pool that runs handlers.
const HANDLER_THREADS: usize = 2;
/// Default deadline for a request's headers (and for an idle connection's next request).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline for a request's body, from the end of its headers.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on open connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// Pause after a failed `accept` (out of file descriptors...) before trying again.
pub const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// What one client may hold of the service (see the module's "Limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deadline for a request's headers, and for the next request on an idle connection.
    pub header_read_timeout: Duration,
    /// Deadline for a request's body once its headers arrived.
    pub body_read_timeout: Duration,
    /// Most connections open at once; more are accepted and closed at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// A request as the routes see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE`...
    pub method: String,
    /// Path segments, percent-decoded, without empty ones (`/api/hosts/h1` → `api,hosts,h1`).
    pub segments: Vec<String>,
    /// Query parameters, percent-decoded.
    pub query: HashMap<String, String>,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (at most [`MAX_BODY`] bytes).
    pub body: Vec<u8>,
}

/// A response as the routes produce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type` value.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl ApiResponse {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> ApiResponse {
        ApiResponse::bytes(status, "application/json", value.to_string().into_bytes())
    }

    /// `{"error": message}` with a 4xx or 5xx status.
    pub fn error(status: u16, message: impl Into<String>) -> ApiResponse {
        ApiResponse::json(status, &serde_json::json!({ "error": message.into() }))
    }

    /// A body of the given type.
    pub fn bytes(status: u16, content_type: &'static str, body: Vec<u8>) -> ApiResponse {
        ApiResponse {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// 204 No Content.
    pub fn no_content() -> ApiResponse {
        ApiResponse::bytes(204, "text/plain", Vec::new())
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> ApiResponse {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

/// What answers an authenticated request.
pub type Handler = Arc<dyn Fn(&ApiRequest) -> ApiResponse + Send + Sync>;

/// A running HTTP service; dropping it stops accepting, ends its connections and joins
/// its thread.
pub struct HttpService {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HttpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpService")
            .field("addr", &self.addr)
            .finish()
    }
}

impl HttpService {
    /// Listens on `addr` and answers every request with `handler` once it passes the
    /// token check, within `limits`.
    pub fn start(
        addr: SocketAddr,
        token: AdminToken,
        limits: Limits,
        handler: Handler,
    ) -> Result<HttpService> {
        let context = || format!("listening for admin HTTP on {addr}");
        let listener = std::net::TcpListener::bind(addr).map_err(|e| Error::io(context(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io(context(), e))?;
        let addr = listener.local_addr().map_err(|e| Error::io(context(), e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(HANDLER_THREADS)
            .thread_name("admin-http-handler")
            .build()
            .map_err(|e| Error::io("starting the admin HTTP runtime", e))?;
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            token,
            handler,
            limits,
        });
        let thread = std::thread::Builder::new()
            .name("admin-http".into())
            .spawn(move || runtime.block_on(accept_loop(listener, shared, stopped)))
            .map_err(|e| Error::io("spawning the admin HTTP thread", e))?;
        Ok(HttpService {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address the service listens on (with the real port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpService {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Shared {
    token: AdminToken,
    handler: Handler,
    limits: Limits,
}

async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => return log::error!("admin HTTP listener: {e}"),
    };
    let permits = Arc::new(Semaphore::new(shared.limits.max_connections));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("admin HTTP accept failed: {e}; pausing {ACCEPT_RETRY_DELAY:?}");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_RETRY_DELAY) => continue,
                    _ = stopped.changed() => return,
                }
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            log::debug!(
                "admin HTTP: {} connections open already; closing a new one",
                shared.limits.max_connections
            );
            continue;
        };
        tokio::spawn(serve_connection(
            stream,
            permit,
            shared.clone(),
            stopped.clone(),
        ));
    }
}

/// Serves one connection until it ends, times out or the service stops; `_permit` holds
/// its place under the connection cap.
async fn serve_connection(
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let header_read_timeout = shared.limits.header_read_timeout;
    let service = service_fn(move |request| answer(request, shared.clone()));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = connection => if let Err(e) = result {
            log::debug!("admin HTTP connection: {e}");
        },
        _ = stopped.changed() => {}
    }
}

async fn answer(
    request: hyper::Request<Incoming>,
    shared: Arc<Shared>,
) -> std::result::Result<hyper::Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = match read_request(request, shared.limits.body_read_timeout).await {
        Ok(api) => {
            let work = move || match authenticate(&api, &shared.token) {
                Auth::Allowed => (shared.handler)(&api),
                Auth::Login(response) => response,
                // Closed after the answer: a client without the token must not keep its
                // place under the connection cap by asking again and again (each refusal
                // would restart the header deadline), nor pipeline requests it never reads.
                Auth::Denied(response) => response.with_header("Connection", "close"),
            };
            tokio::task::spawn_blocking(work)
                .await
                .unwrap_or_else(|e| ApiResponse::error(500, format!("the handler failed: {e}")))
        }
        Err(response) => response,
    };
    log::debug!("admin {method} {path} -> {}", response.status);
    Ok(to_hyper(response))
}

async fn read_request(
    request: hyper::Request<Incoming>,
    body_read_timeout: Duration,
) -> Result<ApiRequest, ApiResponse> {
    let too_large = || ApiResponse::error(413, format!("request body above {MAX_BODY} bytes"));
    let (parts, body) = request.into_parts();
    let collect = Limited::new(body, MAX_BODY).collect();
    let body = match tokio::time::timeout(body_read_timeout, collect).await {
        Err(_) => {
            let why = format!("the request body did not arrive within {body_read_timeout:?}");
            return Err(ApiResponse::error(408, why).with_header("Connection", "close"));
        }
        Ok(Ok(collected)) => collected.to_bytes().to_vec(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(e)) => {
            return Err(ApiResponse::error(
                400,
                format!("reading the request body: {e}"),
            ))
        }
    };
    let segments = parts
        .uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ApiResponse::error(400, "the path is not valid percent-encoded UTF-8"))?;
    let headers = parts
        .headers
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    Ok(ApiRequest {
        method: parts.method.as_str().to_owned(),
        segments,
        query: parse_query(parts.uri.query().unwrap_or("")),
        headers,
        body,
    })
}

impl ApiRequest {
    /// A header's value (`name` in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

enum Auth {
    Allowed,
    /// A page request carried `?token=`: set the cookie and send the browser on.
    Login(ApiResponse),
    Denied(ApiResponse),
}

fn authenticate(api: &ApiRequest, token: &AdminToken) -> Auth {
    let is_api = api
        .segments
        .first()
        .is_some_and(|s| s == "api" || s == "metrics");
    if let Some(bearer) = api.header("authorization").and_then(bearer_token) {
        return if token.matches(&bearer) {
            Auth::Allowed
        } else {
            Auth::Denied(unauthorized(is_api, "the admin token given is wrong"))
        };
    }
    if let Some(given) = api.query.get("token").filter(|_| !is_api) {
        return if token.matches(given) {
            Auth::Login(login_redirect(given))
        } else {
            Auth::Denied(unauthorized(false, "the admin token given is wrong"))
        };
    }
    // Every cookie of the name counts: cookies do not keep to a port, so another web
    // service on this machine can set one of the same name, and the browser may send that
    // one first.
    let cookies = api
        .header("cookie")
        .map(|header| cookie_values(header, COOKIE))
        .unwrap_or_default();
    let matching = cookies.iter().find(|cookie| token.matches(cookie));
    match matching.or(cookies.first()) {
        Some(cookie) if token.matches(cookie) => {
            let mutating = !matches!(api.method.as_str(), "GET" | "HEAD");
            if mutating && api.header(CSRF_HEADER).is_none() {
                return Auth::Denied(ApiResponse::error(
                    403,
                    format!(
                        "a browser request that changes something needs the {CSRF_HEADER} header"
                    ),
                ));
            }
            Auth::Allowed
        }
        Some(_) => Auth::Denied(unauthorized(
            is_api,
            "the admin token in the cookie is wrong",
        )),
        None => Auth::Denied(unauthorized(is_api, "no admin token given")),
    }
}

/// Where a `?token=` login sends the browser: always the page itself, a fixed path, so
/// that no request can make the service redirect anywhere else (a path decoded from the
/// request, such as `/%2Fevil.example`, would make a `//evil.example` location).
pub const LOGIN_LOCATION: &str = "/";

fn login_redirect(token: &str) -> ApiResponse {
    ApiResponse::bytes(303, "text/plain", b"logged in\n".to_vec())
        .with_header("Location", LOGIN_LOCATION)
        .with_header(
            "Set-Cookie",
            format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"),
        )
}

fn unauthorized(is_api: bool, why: &str) -> ApiResponse {
    let hint = "send the admin token as 'Authorization: Bearer <token>', or open the page \
                as /?token=<token>; the token is in the file given to `serve \
                --admin-token-file` (created by `format`)";
    let response = if is_api {
        ApiResponse::error(401, format!("unauthorized: {why}; {hint}"))
    } else {
        let page = super::page::LOGIN_HTML.replace("{{why}}", why);
        ApiResponse::bytes(401, "text/html; charset=utf-8", page.into_bytes())
    };
    response.with_header("WWW-Authenticate", "Bearer realm=\"multilane admin\"")
}

fn bearer_token(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim().to_owned())
}

/// The values of every cookie named `name` in a `Cookie` header, in order.
fn cookie_values(header: &str, name: &str) -> Vec<String> {
    header
        .split(';')
        .filter_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then(|| value.to_owned())
        })
        .collect()
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(key)?, percent_decode(value)?))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (as a space); `None` if the result is not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn to_hyper(response: ApiResponse) -> hyper::Response<Full<Bytes>> {
    let mut builder = hyper::Response::builder()
        .status(response.status)
        .header("Content-Type", response.content_type)
        .header("Cache-Control", "no-store")
        .header("X-Content-Type-Options", "nosniff")
        .header("X-Frame-Options", "DENY");
    for (name, value) in &response.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(Bytes::from(response.body)))
        .unwrap_or_else(|e| {
            let mut fallback = hyper::Response::new(Full::new(Bytes::from(e.to_string())));
            *fallback.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            fallback
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_paths_and_queries() {
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
        let query = parse_query("force=true&token=a%2Bb");
        assert_eq!(query["force"], "true");
        assert_eq!(query["token"], "a+b");
    }

    #[test]
    fn reads_credentials() {
        assert_eq!(bearer_token("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(bearer_token("basic abc"), None);
        assert_eq!(
            cookie_values("x=1; multilane_admin=tok; y=2", COOKIE),
            vec!["tok".to_string()]
        );
        assert!(cookie_values("x=1", COOKIE).is_empty());
    }

    #[test]
    fn any_cookie_of_the_name_may_carry_the_token() {
        let token = AdminToken::generate().unwrap();
        let request = |cookie: String| ApiRequest {
            method: "GET".into(),
            segments: vec!["api".into(), "array".into()],
            query: HashMap::new(),
            headers: vec![("cookie".into(), cookie)],
            body: Vec::new(),
        };
        // Set by another service on this machine (cookies do not keep to a port) and sent
        // first by the browser.
        let planted = format!("{COOKIE}=junk; {COOKIE}={}", token.expose());
        assert!(matches!(
            authenticate(&request(planted), &token),
            Auth::Allowed
        ));
        let wrong = format!("{COOKIE}=junk; {COOKIE}=other");
        assert!(matches!(
            authenticate(&request(wrong), &token),
            Auth::Denied(_)
        ));
    }
}
