//! Authentication of TCP requests: Basic credentials from the configuration
//! (WebJobs' deployment credentials) or the daemon's bearer token, compared in
//! constant time. Requests from another site (a page elsewhere making the
//! browser send its cached credentials) are refused by their Origin.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use subtle::ConstantTimeEq;

/// The accepted credentials.
#[derive(Debug)]
pub struct Auth {
    pub basic: Option<(String, String)>,
    pub token: String,
}

/// Reads the bearer token, creating it (32 random bytes, hex, mode 0600) at first start.
pub fn load_or_create_token(path: &Path) -> std::io::Result<String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let token = text.trim().to_string();
        if token.len() >= 32 {
            return Ok(token);
        }
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(format!("{token}\n").as_bytes())?;
    std::fs::rename(&tmp, path)?;
    Ok(token)
}

fn eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

impl Auth {
    /// Whether the `Authorization` header carries valid credentials.
    pub fn check(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
        if let Some(token) = value.strip_prefix("Bearer ") {
            return eq(token.trim(), &self.token);
        }
        let Some(encoded) = value.strip_prefix("Basic ") else { return false };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else { return false };
        let text = String::from_utf8_lossy(&decoded);
        let Some((u, p)) = text.split_once(':') else { return false };
        // The token also works as a Basic password (any user name), so a
        // browser's login prompt works without configured credentials.
        let by_token = eq(p, &self.token);
        let by_credentials = match &self.basic {
            // Both compared, always, so timing says nothing about which was wrong.
            Some((user, password)) => eq(u, user) & eq(p, password),
            None => false,
        };
        by_token | by_credentials
    }
}

/// True when a browser says this request comes from a page of another site.
fn cross_site(headers: &HeaderMap) -> bool {
    if headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()).is_some_and(|v| v == "cross-site") {
        return true;
    }
    let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    if origin == "null" {
        return true;
    }
    // Same origin = same scheme, host and port: the daemon's own pages are
    // `http://<Host>`, or https through a proxy that says so.
    let scheme = headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).unwrap_or("http");
    normalize(origin) != normalize(&format!("{scheme}://{host}"))
}

/// `scheme://host:port`, lowercase, with the scheme's default port made explicit.
fn normalize(origin: &str) -> String {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let Some((scheme, authority)) = origin.split_once("://") else { return origin };
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']'));
    match (has_port, scheme) {
        (false, "http") => format!("http://{authority}:80"),
        (false, "https") => format!("https://{authority}:443"),
        _ => origin,
    }
}

/// Sent by the dashboard's script with each of its requests.
const DASHBOARD: &str = "x-webjobs-dashboard";

/// Middleware for the TCP listener.
pub async fn require(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    if !auth.check(request.headers()) {
        let mut response = super::error(
            StatusCode::UNAUTHORIZED,
            "authentication required: Basic credentials (api_user/api_password) or `Authorization: Bearer <token>` (token in data/api-token)",
        );
        // The dashboard's own requests get no challenge: the browser would
        // prompt in the middle of the page (or, headless, wait forever); the
        // page says the credentials were refused instead.
        if !request.headers().contains_key(DASHBOARD) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"webjobs\", charset=\"UTF-8\"".parse().expect("static header"),
            );
        }
        return response;
    }
    let unsafe_method = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if unsafe_method && cross_site(request.headers()) {
        return super::error(StatusCode::FORBIDDEN, "cross-site request refused").into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn basic_and_bearer() {
        let auth = Auth { basic: Some(("deploy".into(), "s3cret".into())), token: "t".repeat(64) };
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("deploy:s3cret"));
        assert!(auth.check(&headers(&[("authorization", &basic)])));
        let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("deploy:nope"));
        assert!(!auth.check(&headers(&[("authorization", &wrong)])));
        assert!(auth.check(&headers(&[("authorization", &format!("Bearer {}", "t".repeat(64)))])));
        assert!(!auth.check(&headers(&[("authorization", "Bearer x")])));
        assert!(!auth.check(&headers(&[])));
        let token_as_password =
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("any:{}", "t".repeat(64))));
        assert!(auth.check(&headers(&[("authorization", &token_as_password)])));
    }

    #[test]
    fn cross_site_detection() {
        assert!(cross_site(&headers(&[("origin", "http://evil.example"), ("host", "127.0.0.1:8719")])));
        assert!(!cross_site(&headers(&[("origin", "http://127.0.0.1:8719"), ("host", "127.0.0.1:8719")])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!cross_site(&headers(&[("host", "127.0.0.1:8719")])), "curl sends no Origin");
        assert!(
            cross_site(&headers(&[("origin", "https://127.0.0.1:8719"), ("host", "127.0.0.1:8719")])),
            "another scheme"
        );
        assert!(
            cross_site(&headers(&[("origin", "http://127.0.0.1:9999"), ("host", "127.0.0.1:8719")])),
            "another port"
        );
        assert!(
            !cross_site(&headers(&[("origin", "http://jobs.example"), ("host", "jobs.example:80")])),
            "default port"
        );
        assert!(!cross_site(&headers(&[
            ("origin", "https://jobs.example"),
            ("host", "jobs.example"),
            ("x-forwarded-proto", "https")
        ])));
    }

    #[test]
    fn the_token_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("api-token");
        let first = load_or_create_token(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_token(&path).unwrap(), first);
    }
}
