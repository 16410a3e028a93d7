//! The HTTP layer: a `tiny_http` server on its own threads, the token check, and the
//! translation between `tiny_http` requests and the plain [`ApiRequest`] /
//! [`ApiResponse`] the routes work with.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tiny_http::{Header, Method, Server};

use super::token::AdminToken;
use crate::error::{Error, Result};

/// Largest request body accepted, in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// Name of the cookie the page is authenticated with.
pub const COOKIE: &str = "multilane_admin";
/// Header a cookie-authenticated browser must add to any request that changes something
/// (a cross-site form cannot set it, so a foreign page cannot act for the operator).
pub const CSRF_HEADER: &str = "X-Multilane-Request";
/// Threads answering requests.
const WORKERS: usize = 2;
/// How often an idle worker checks whether the server is stopping.
const POLL: Duration = Duration::from_millis(100);

/// A request as the routes see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE`...
    pub method: String,
    /// Path segments, percent-decoded, without empty ones (`/api/hosts/h1` → `api,hosts,h1`).
    pub segments: Vec<String>,
    /// Query parameters, percent-decoded.
    pub query: HashMap<String, String>,
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

/// A running HTTP service; dropping it stops the workers and closes the listener.
pub struct HttpService {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
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
    /// token check.
    pub fn start(addr: SocketAddr, token: AdminToken, handler: Handler) -> Result<HttpService> {
        let server = Server::http(addr).map_err(|e| {
            Error::io(
                format!("listening for admin HTTP on {addr}"),
                std::io::Error::other(e),
            )
        })?;
        let addr = server.server_addr().to_ip().ok_or_else(|| {
            Error::io("admin listener", std::io::Error::other("not an IP address"))
        })?;
        let server = Arc::new(server);
        let token = Arc::new(token);
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..WORKERS)
            .map(|i| {
                let (server, token, handler, stop) =
                    (server.clone(), token.clone(), handler.clone(), stop.clone());
                std::thread::Builder::new()
                    .name(format!("admin-http-{i}"))
                    .spawn(move || serve_loop(&server, &token, &handler, &stop))
                    .map_err(|e| Error::io("spawning an admin HTTP thread", e))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(HttpService {
            addr,
            stop,
            workers,
        })
    }

    /// The address the service listens on (with the real port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn serve_loop(server: &Server, token: &AdminToken, handler: &Handler, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match server.recv_timeout(POLL) {
            Ok(Some(request)) => answer(request, token, handler),
            Ok(None) => {}
            Err(e) => log::warn!("admin HTTP: {e}"),
        }
    }
}

fn answer(mut request: tiny_http::Request, token: &AdminToken, handler: &Handler) {
    let response = match read_request(&mut request) {
        Ok(api) => match authenticate(&request, &api, token) {
            Auth::Allowed => handler(&api),
            Auth::Login(response) | Auth::Denied(response) => response,
        },
        Err(response) => response,
    };
    let path = split_url(request.url()).0;
    log::debug!("admin {} {path} -> {}", request.method(), response.status);
    if let Err(e) = request.respond(to_tiny(response)) {
        log::debug!("admin HTTP: answering failed: {e}");
    }
}

fn read_request(request: &mut tiny_http::Request) -> Result<ApiRequest, ApiResponse> {
    let too_large = || ApiResponse::error(413, format!("request body above {MAX_BODY} bytes"));
    if request.body_length().is_some_and(|len| len > MAX_BODY) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiResponse::error(400, format!("reading the request body: {e}")))?;
    if body.len() > MAX_BODY {
        return Err(too_large());
    }
    let (path, query) = split_url(request.url());
    let segments = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ApiResponse::error(400, "the path is not valid percent-encoded UTF-8"))?;
    Ok(ApiRequest {
        method: request.method().as_str().to_owned(),
        segments,
        query: parse_query(query),
        body,
    })
}

enum Auth {
    Allowed,
    /// A page request carried `?token=`: set the cookie and send the browser on.
    Login(ApiResponse),
    Denied(ApiResponse),
}

fn authenticate(request: &tiny_http::Request, api: &ApiRequest, token: &AdminToken) -> Auth {
    let is_api = api
        .segments
        .first()
        .is_some_and(|s| s == "api" || s == "metrics");
    if let Some(bearer) = header(request, "Authorization").and_then(|v| bearer_token(&v)) {
        return if token.matches(&bearer) {
            Auth::Allowed
        } else {
            Auth::Denied(unauthorized(is_api, "the admin token given is wrong"))
        };
    }
    if let Some(given) = api.query.get("token").filter(|_| !is_api) {
        return if token.matches(given) {
            Auth::Login(login_redirect(api, given))
        } else {
            Auth::Denied(unauthorized(false, "the admin token given is wrong"))
        };
    }
    match header(request, "Cookie").and_then(|v| cookie_value(&v, COOKIE)) {
        Some(cookie) if token.matches(&cookie) => {
            let mutating = !matches!(request.method(), Method::Get | Method::Head);
            if mutating && header(request, CSRF_HEADER).is_none() {
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

fn login_redirect(api: &ApiRequest, token: &str) -> ApiResponse {
    let location = format!("/{}", api.segments.join("/"));
    ApiResponse::bytes(303, "text/plain", b"logged in\n".to_vec())
        .with_header("Location", location)
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

fn header(request: &tiny_http::Request, name: &str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_owned())
}

fn bearer_token(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim().to_owned())
}

fn cookie_value(header: &str, name: &str) -> Option<String> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then(|| value.to_owned())
    })
}

fn split_url(url: &str) -> (&str, &str) {
    url.split_once('?').unwrap_or((url, ""))
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

fn to_tiny(response: ApiResponse) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let mut out = tiny_http::Response::from_data(response.body).with_status_code(response.status);
    let mut add = |name: &str, value: &str| {
        if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            out.add_header(h);
        }
    };
    add("Content-Type", response.content_type);
    add("Cache-Control", "no-store");
    add("X-Content-Type-Options", "nosniff");
    add("X-Frame-Options", "DENY");
    for (name, value) in &response.headers {
        add(name, value);
    }
    out
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
            cookie_value("x=1; multilane_admin=tok; y=2", COOKIE).as_deref(),
            Some("tok")
        );
        assert_eq!(cookie_value("x=1", COOKIE), None);
    }
}
