//! `GET /packages/{file}`: package files with HTTP Range, so an interrupted
//! download resumes where it stopped.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::error::{ApiError, ApiPath};
use crate::packages::PackageName;
use crate::state::{AgentAuth, AppState, bearer};

/// A parsed single `Range: bytes=…` request, resolved against the file size.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeReq {
    /// No range (or one we answer in full, such as multiple ranges).
    Full,
    /// Inclusive byte range.
    Part(u64, u64),
    Unsatisfiable,
}

/// Resolves a Range header value against `size`.
pub fn parse_range(v: &str, size: u64) -> RangeReq {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full; // multipart ranges: a full answer is allowed
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Unsatisfiable;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match b.parse::<u64>() {
            Ok(0) | Err(_) => RangeReq::Unsatisfiable,
            Ok(n) if size == 0 => {
                let _ = n;
                RangeReq::Unsatisfiable
            }
            Ok(n) => RangeReq::Part(size.saturating_sub(n), size - 1),
        },
        (false, _) => {
            let Ok(start) = a.parse::<u64>() else {
                return RangeReq::Unsatisfiable;
            };
            if start >= size {
                return RangeReq::Unsatisfiable;
            }
            let end = if b.is_empty() {
                size - 1
            } else {
                match b.parse::<u64>() {
                    Ok(e) if e >= start => e.min(size - 1),
                    _ => return RangeReq::Unsatisfiable,
                }
            };
            RangeReq::Part(start, end)
        }
        (true, true) => RangeReq::Unsatisfiable,
    }
}

pub async fn get_package(
    State(state): State<AppState>,
    ApiPath(file): ApiPath<String>,
    headers: HeaderMap,
    parts: axum::http::request::Parts,
) -> Result<Response, ApiError> {
    // A token, when sent, must be valid; it is required only if configured.
    let mut p = parts;
    if bearer(&p)?.is_some() || state.config.packages_require_token {
        <AgentAuth as axum::extract::FromRequestParts<AppState>>::from_request_parts(
            &mut p, &state,
        )
        .await?;
    }
    if PackageName::parse(&file).is_none() {
        return Err(ApiError::not_found(format!(
            "{file:?} is not a package name (molt-<kind>.<version>.<os>.<arch>.zip)"
        )));
    }
    let path = state.packages.dir().join(&file);
    let mut f = tokio::fs::File::open(&path).await.map_err(|_| {
        ApiError::not_found(format!("package {file} is not in the packages directory"))
    })?;
    let size = f
        .metadata()
        .await
        .map_err(|e| ApiError::internal(format!("cannot stat {file}: {e}")))?
        .len();
    let etag = state
        .packages
        .current()
        .0
        .get(&file)
        .map(|p| format!("\"{}\"", p.sha256));

    let mut range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, size))
        .unwrap_or(RangeReq::Full);
    if let Some(ir) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok())
        && etag.as_deref() != Some(ir)
    {
        range = RangeReq::Full; // the file changed since the client's first part
    }
    let mut resp = match range {
        RangeReq::Unsatisfiable => {
            let mut r = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("range not satisfiable for {file} ({size} bytes)"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
        RangeReq::Full => {
            let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(f, 64 * 1024));
            let mut r = Response::new(body);
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            r
        }
        RangeReq::Part(start, end) => {
            f.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| ApiError::internal(format!("cannot seek {file}: {e}")))?;
            let len = end - start + 1;
            let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
                f.take(len),
                64 * 1024,
            ));
            let mut r = Response::new(body);
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r
        }
    };
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    if let Some(e) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        h.insert(header::ETAG, e);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_against_the_file_size() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeReq::Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeReq::Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeReq::Part(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), RangeReq::Part(0, 99));
        assert_eq!(parse_range("bytes=50-1000", 100), RangeReq::Part(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=9-3", 100), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=x-3", 100), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeReq::Full);
        assert_eq!(parse_range("items=0-1", 100), RangeReq::Full);
    }
}
