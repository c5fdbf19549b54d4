//! HTTP routes: a method and a path template bound to a function, served by every
//! gateway (they watch the routes KV bucket, key = route id). Requests become API
//! Gateway HTTP API v2 events.

use serde::{Deserialize, Serialize};

use crate::codec::{current_version, versioned};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    #[serde(default = "current_version")]
    pub v: u16,
    pub id: String,
    /// `GET`, `POST`, … or `ANY`.
    pub method: String,
    /// `/hello/{name}`, `/files/{proxy+}` (a greedy last segment).
    pub path: String,
    pub function: String,
    pub created_ms: u64,
}
versioned!(RouteConfig);

/// A function's URL (`CreateFunctionUrlConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionUrlConfig {
    /// `NONE` (the only type served so far).
    pub auth_type: String,
    pub created_ms: u64,
    pub modified_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(
        "path {0:?} must start with / and use segments of letters, digits, - _ . ~ or {{param}} ({{proxy+}} only last)"
    )]
    BadPath(String),
    #[error("path {0:?} is reserved for the gateway's own API")]
    Reserved(String),
    #[error("method {0:?} is not one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS, ANY")]
    BadMethod(String),
}

/// Prefixes routes may not use: the Lambda API, the native API, function URLs,
/// health and metrics.
pub const RESERVED_PREFIXES: [&str; 7] = [
    "/2015-03-31",
    "/2019-09-25",
    "/2021-10-31",
    "/nimbus",
    "/fn",
    "/healthz",
    "/metrics",
];

pub fn validate_route(method: &str, path: &str) -> Result<(), RouteError> {
    if !matches!(
        method,
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" | "ANY"
    ) {
        return Err(RouteError::BadMethod(method.into()));
    }
    let bad = || RouteError::BadPath(path.into());
    let rest = path.strip_prefix('/').ok_or_else(bad)?;
    if path.len() > 512 {
        return Err(bad());
    }
    let segments: Vec<&str> = if rest.is_empty() {
        vec![]
    } else {
        rest.split('/').collect()
    };
    for (i, seg) in segments.iter().enumerate() {
        if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let name = inner.strip_suffix('+').unwrap_or(inner);
            let greedy = inner.ends_with('+');
            if name.is_empty()
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                || (greedy && i != segments.len() - 1)
            {
                return Err(bad());
            }
        } else if seg.is_empty()
            || !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        {
            return Err(bad());
        }
    }
    let first = format!("/{}", segments.first().copied().unwrap_or(""));
    if RESERVED_PREFIXES
        .iter()
        .any(|p| first.eq_ignore_ascii_case(p))
    {
        return Err(RouteError::Reserved(path.into()));
    }
    Ok(())
}

/// Matches a request path against a template; returns the path parameters.
pub fn match_path(template: &str, path: &str) -> Option<Vec<(String, String)>> {
    let t: Vec<&str> = template
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let p: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let mut params = Vec::new();
    for (i, seg) in t.iter().enumerate() {
        match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(inner) if inner.ends_with('+') => {
                if i >= p.len() {
                    return None;
                }
                params.push((inner.trim_end_matches('+').to_string(), p[i..].join("/")));
                return Some(params);
            }
            Some(name) => params.push((name.to_string(), (*p.get(i)?).to_string())),
            None => {
                if p.get(i) != Some(seg) {
                    return None;
                }
            }
        }
    }
    (p.len() == t.len()).then_some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(validate_route("GET", "/hello/{name}").is_ok());
        assert!(validate_route("ANY", "/files/{proxy+}").is_ok());
        assert!(validate_route("GET", "/").is_ok());
        assert!(matches!(
            validate_route("GET", "/nimbus/x"),
            Err(RouteError::Reserved(_))
        ));
        assert!(matches!(
            validate_route("GET", "/2015-03-31/functions"),
            Err(RouteError::Reserved(_))
        ));
        assert!(matches!(
            validate_route("GET", "/metrics"),
            Err(RouteError::Reserved(_))
        ));
        assert!(validate_route("GET", "hello").is_err());
        assert!(validate_route("GET", "/a/{p+}/b").is_err());
        assert!(validate_route("GET", "/a//b").is_err());
        assert!(validate_route("FETCH", "/a").is_err());
    }

    #[test]
    fn matching() {
        assert_eq!(
            match_path("/hello/{name}", "/hello/ada"),
            Some(vec![("name".into(), "ada".into())])
        );
        assert_eq!(match_path("/hello/{name}", "/hello"), None);
        assert_eq!(match_path("/hello/{name}", "/hello/a/b"), None);
        assert_eq!(
            match_path("/files/{proxy+}", "/files/a/b/c"),
            Some(vec![("proxy".into(), "a/b/c".into())])
        );
        assert_eq!(match_path("/", "/"), Some(vec![]));
        assert_eq!(match_path("/a", "/b"), None);
    }
}
